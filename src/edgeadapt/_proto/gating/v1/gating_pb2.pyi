from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Frames(_message.Message):
    __slots__ = ("h264", "count")
    H264_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    h264: bytes
    count: int
    def __init__(self, h264: _Optional[bytes] = ..., count: _Optional[int] = ...) -> None: ...

class SelectRequest(_message.Message):
    __slots__ = ("frames", "k")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    frames: Frames
    k: int
    def __init__(self, frames: _Optional[_Union[Frames, _Mapping]] = ..., k: _Optional[int] = ...) -> None: ...

class ScoredExpert(_message.Message):
    __slots__ = ("id", "score", "sha256", "size", "source_device")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_DEVICE_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    sha256: str
    size: int
    source_device: str
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., source_device: _Optional[str] = ...) -> None: ...

class SelectResponse(_message.Message):
    __slots__ = ("zoo_version", "experts")
    ZOO_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPERTS_FIELD_NUMBER: _ClassVar[int]
    zoo_version: int
    experts: _containers.RepeatedCompositeFieldContainer[ScoredExpert]
    def __init__(self, zoo_version: _Optional[int] = ..., experts: _Optional[_Iterable[_Union[ScoredExpert, _Mapping]]] = ...) -> None: ...

class ExpertRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ExpertChunk(_message.Message):
    __slots__ = ("data", "total_size", "sha256")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    total_size: int
    sha256: str
    def __init__(self, data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class RecordRequest(_message.Message):
    __slots__ = ("picks",)
    PICKS_FIELD_NUMBER: _ClassVar[int]
    picks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, picks: _Optional[_Iterable[str]] = ...) -> None: ...

class RecordResponse(_message.Message):
    __slots__ = ("zoo_version",)
    ZOO_VERSION_FIELD_NUMBER: _ClassVar[int]
    zoo_version: int
    def __init__(self, zoo_version: _Optional[int] = ...) -> None: ...

class AdmitRequest(_message.Message):
    __slots__ = ("candidate_id", "checkpoint", "source_device", "window", "frames", "labels")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_DEVICE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    checkpoint: bytes
    source_device: str
    window: int
    frames: Frames
    labels: bytes
    def __init__(self, candidate_id: _Optional[str] = ..., checkpoint: _Optional[bytes] = ..., source_device: _Optional[str] = ..., window: _Optional[int] = ..., frames: _Optional[_Union[Frames, _Mapping]] = ..., labels: _Optional[bytes] = ...) -> None: ...

class AdmitResponse(_message.Message):
    __slots__ = ("queued", "queue_length", "zoo_version", "admitting")
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    ZOO_VERSION_FIELD_NUMBER: _ClassVar[int]
    ADMITTING_FIELD_NUMBER: _ClassVar[int]
    queued: bool
    queue_length: int
    zoo_version: int
    admitting: bool
    def __init__(self, queued: _Optional[bool] = ..., queue_length: _Optional[int] = ..., zoo_version: _Optional[int] = ..., admitting: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ZooStatus(_message.Message):
    __slots__ = ("zoo_version", "experts", "queue_length", "admitted", "pruned", "last_admission_unix", "selections", "arch", "admitting", "top_k", "alpha")
    ZOO_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPERTS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    ADMITTED_FIELD_NUMBER: _ClassVar[int]
    PRUNED_FIELD_NUMBER: _ClassVar[int]
    LAST_ADMISSION_UNIX_FIELD_NUMBER: _ClassVar[int]
    SELECTIONS_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    ADMITTING_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    zoo_version: int
    experts: int
    queue_length: int
    admitted: int
    pruned: int
    last_admission_unix: float
    selections: int
    arch: str
    admitting: bool
    top_k: int
    alpha: float
    def __init__(self, zoo_version: _Optional[int] = ..., experts: _Optional[int] = ..., queue_length: _Optional[int] = ..., admitted: _Optional[int] = ..., pruned: _Optional[int] = ..., last_admission_unix: _Optional[float] = ..., selections: _Optional[int] = ..., arch: _Optional[str] = ..., admitting: _Optional[bool] = ..., top_k: _Optional[int] = ..., alpha: _Optional[float] = ...) -> None: ...
