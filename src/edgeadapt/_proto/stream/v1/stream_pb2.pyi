from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_SEMANTIC_SEGMENTATION: _ClassVar[Task]

class Codec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODEC_UNSPECIFIED: _ClassVar[Codec]
    CODEC_H264: _ClassVar[Codec]

class MaskEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASK_ALL: _ClassVar[MaskEncoding]
    MASK_BITS: _ClassVar[MaskEncoding]
    MASK_GAPS: _ClassVar[MaskEncoding]

class ValueType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VALUE_FLOAT16: _ClassVar[ValueType]
    VALUE_FLOAT32: _ClassVar[ValueType]
TASK_UNSPECIFIED: Task
TASK_SEMANTIC_SEGMENTATION: Task
CODEC_UNSPECIFIED: Codec
CODEC_H264: Codec
MASK_ALL: MaskEncoding
MASK_BITS: MaskEncoding
MASK_GAPS: MaskEncoding
VALUE_FLOAT16: ValueType
VALUE_FLOAT32: ValueType

class AgentMessage(_message.Message):
    __slots__ = ("register", "samples", "ack", "resync")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    RESYNC_FIELD_NUMBER: _ClassVar[int]
    register: Register
    samples: SampleBatch
    ack: UpdateAck
    resync: ResyncRequest
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., samples: _Optional[_Union[SampleBatch, _Mapping]] = ..., ack: _Optional[_Union[UpdateAck, _Mapping]] = ..., resync: _Optional[_Union[ResyncRequest, _Mapping]] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("arch", "num_classes", "width_mult", "num_params")
    ARCH_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_MULT_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMS_FIELD_NUMBER: _ClassVar[int]
    arch: str
    num_classes: int
    width_mult: float
    num_params: int
    def __init__(self, arch: _Optional[str] = ..., num_classes: _Optional[int] = ..., width_mult: _Optional[float] = ..., num_params: _Optional[int] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("device_id", "task", "model", "model_version", "model_checksum", "adapt", "agent_version", "link", "expert_cache_size", "cached_experts")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    ADAPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    EXPERT_CACHE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CACHED_EXPERTS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    task: Task
    model: ModelSpec
    model_version: int
    model_checksum: int
    adapt: bool
    agent_version: str
    link: LinkBudget
    expert_cache_size: int
    cached_experts: _containers.RepeatedCompositeFieldContainer[CachedExpert]
    def __init__(self, device_id: _Optional[str] = ..., task: _Optional[_Union[Task, str]] = ..., model: _Optional[_Union[ModelSpec, _Mapping]] = ..., model_version: _Optional[int] = ..., model_checksum: _Optional[int] = ..., adapt: _Optional[bool] = ..., agent_version: _Optional[str] = ..., link: _Optional[_Union[LinkBudget, _Mapping]] = ..., expert_cache_size: _Optional[int] = ..., cached_experts: _Optional[_Iterable[_Union[CachedExpert, _Mapping]]] = ...) -> None: ...

class CachedExpert(_message.Message):
    __slots__ = ("id", "model_checksum")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    id: str
    model_checksum: int
    def __init__(self, id: _Optional[str] = ..., model_checksum: _Optional[int] = ...) -> None: ...

class LinkBudget(_message.Message):
    __slots__ = ("uplink_kbps", "downlink_kbps")
    UPLINK_KBPS_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_KBPS_FIELD_NUMBER: _ClassVar[int]
    uplink_kbps: float
    downlink_kbps: float
    def __init__(self, uplink_kbps: _Optional[float] = ..., downlink_kbps: _Optional[float] = ...) -> None: ...

class SampleBatch(_message.Message):
    __slots__ = ("seq", "codec", "data", "timestamps", "width", "height", "model_version")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    seq: int
    codec: Codec
    data: bytes
    timestamps: _containers.RepeatedScalarFieldContainer[float]
    width: int
    height: int
    model_version: int
    def __init__(self, seq: _Optional[int] = ..., codec: _Optional[_Union[Codec, str]] = ..., data: _Optional[bytes] = ..., timestamps: _Optional[_Iterable[float]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., model_version: _Optional[int] = ...) -> None: ...

class UpdateAck(_message.Message):
    __slots__ = ("version", "applied", "reason")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    version: int
    applied: bool
    reason: str
    def __init__(self, version: _Optional[int] = ..., applied: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class ResyncRequest(_message.Message):
    __slots__ = ("have_version", "have_checksum")
    HAVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    HAVE_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    have_version: int
    have_checksum: int
    def __init__(self, have_version: _Optional[int] = ..., have_checksum: _Optional[int] = ...) -> None: ...

class TrainerMessage(_message.Message):
    __slots__ = ("welcome", "update", "settings", "batch_ack", "switch_expert")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ACK_FIELD_NUMBER: _ClassVar[int]
    SWITCH_EXPERT_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    update: ModelUpdate
    settings: Settings
    batch_ack: BatchAck
    switch_expert: SwitchExpert
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., update: _Optional[_Union[ModelUpdate, _Mapping]] = ..., settings: _Optional[_Union[Settings, _Mapping]] = ..., batch_ack: _Optional[_Union[BatchAck, _Mapping]] = ..., switch_expert: _Optional[_Union[SwitchExpert, _Mapping]] = ...) -> None: ...

class SwitchExpert(_message.Message):
    __slots__ = ("expert_id", "version", "base_version", "model_checksum")
    EXPERT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    expert_id: str
    version: int
    base_version: int
    model_checksum: int
    def __init__(self, expert_id: _Optional[str] = ..., version: _Optional[int] = ..., base_version: _Optional[int] = ..., model_checksum: _Optional[int] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("model_version", "settings", "trainer_id")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    TRAINER_ID_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    settings: Settings
    trainer_id: str
    def __init__(self, model_version: _Optional[int] = ..., settings: _Optional[_Union[Settings, _Mapping]] = ..., trainer_id: _Optional[str] = ...) -> None: ...

class Settings(_message.Message):
    __slots__ = ("sampling_rate_fps", "update_interval_s", "max_batch_frames", "max_batch_bytes", "upload_fraction")
    SAMPLING_RATE_FPS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FRACTION_FIELD_NUMBER: _ClassVar[int]
    sampling_rate_fps: float
    update_interval_s: float
    max_batch_frames: int
    max_batch_bytes: int
    upload_fraction: float
    def __init__(self, sampling_rate_fps: _Optional[float] = ..., update_interval_s: _Optional[float] = ..., max_batch_frames: _Optional[int] = ..., max_batch_bytes: _Optional[int] = ..., upload_fraction: _Optional[float] = ...) -> None: ...

class BatchAck(_message.Message):
    __slots__ = ("seq", "frames")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    seq: int
    frames: int
    def __init__(self, seq: _Optional[int] = ..., frames: _Optional[int] = ...) -> None: ...

class ModelUpdate(_message.Message):
    __slots__ = ("version", "base_version", "num_params", "mask_encoding", "value_type", "mask", "values", "checksum", "model_checksum", "snapshot", "part", "parts", "expert_id")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMS_FIELD_NUMBER: _ClassVar[int]
    MASK_ENCODING_FIELD_NUMBER: _ClassVar[int]
    VALUE_TYPE_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    MODEL_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    EXPERT_ID_FIELD_NUMBER: _ClassVar[int]
    version: int
    base_version: int
    num_params: int
    mask_encoding: MaskEncoding
    value_type: ValueType
    mask: bytes
    values: bytes
    checksum: int
    model_checksum: int
    snapshot: bool
    part: int
    parts: int
    expert_id: str
    def __init__(self, version: _Optional[int] = ..., base_version: _Optional[int] = ..., num_params: _Optional[int] = ..., mask_encoding: _Optional[_Union[MaskEncoding, str]] = ..., value_type: _Optional[_Union[ValueType, str]] = ..., mask: _Optional[bytes] = ..., values: _Optional[bytes] = ..., checksum: _Optional[int] = ..., model_checksum: _Optional[int] = ..., snapshot: _Optional[bool] = ..., part: _Optional[int] = ..., parts: _Optional[int] = ..., expert_id: _Optional[str] = ...) -> None: ...

class StartingModelRequest(_message.Message):
    __slots__ = ("device_id", "have_sha256")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    HAVE_SHA256_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    have_sha256: str
    def __init__(self, device_id: _Optional[str] = ..., have_sha256: _Optional[str] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size", "sha256")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    sha256: str
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...
