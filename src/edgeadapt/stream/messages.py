"""Conversions between the AMS engine's objects and the ``edgeadapt.stream.v1`` messages.

A ``ModelUpdate`` message carries the fields of the :mod:`edgeadapt.adapt.update` wire format
one by one (version, base version, encodings, mask, values, CRC32). The receiver rebuilds the
encoded update from them and runs the same decoder the benchmark uses, so every check (checksum,
sizes, positions, finite values) applies to what came over gRPC.
"""

from __future__ import annotations

import itertools
import struct

from google.protobuf.message import Message

from edgeadapt._proto.stream.v1 import stream_pb2 as pb
from edgeadapt.adapt.update import (
    _CRC_OFFSET,
    FORMAT,
    HEADER,
    MAGIC,
    UpdateError,
    model_checksum,
    parameter_vector,
)
from edgeadapt.models.zoo import SegmentationModel

AGENT_VERSION = "0.1.0"

GRPC_FRAME_BYTES = 5  # gRPC's per-message prefix: compressed flag and length
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # trainer -> agent: a float32 snapshot of a large student
# Agent -> trainer: the largest sample batch the trainer accepts (it tells the agent in Settings,
# and the agent splits longer batches), plus room for the message's other fields. A receive
# limit the size of a snapshot would let one device make the trainer buffer 64 MiB per message.
MAX_BATCH_BYTES = 8 * 1024 * 1024
MAX_UPLOAD_BYTES = MAX_BATCH_BYTES + 64 * 1024
CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", MAX_UPLOAD_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_UPLOAD_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
REJECTED_BATCH_KEY = "edgeadapt-rejected-batch"


def register_message(device_id: str, student: SegmentationModel, adapt: bool = True) -> pb.Register:
    """The Register a device running ``student`` (as built, version 0) opens its stream with."""
    flat = parameter_vector(student)
    return pb.Register(
        device_id=device_id,
        task=pb.TASK_SEMANTIC_SEGMENTATION,
        model=pb.ModelSpec(
            arch=student.arch,
            num_classes=int(student.config["num_classes"]),
            width_mult=float(student.config.get("width_mult", 1.0)),
            num_params=int(flat.numel()),
        ),
        model_version=0,
        model_checksum=model_checksum(flat),
        adapt=adapt,
        agent_version=f"edgeadapt-{AGENT_VERSION}",
    )


def wire_size(message: Message) -> int:
    """Bytes the message occupies on its gRPC stream (payload plus gRPC's 5-byte prefix)."""
    return message.ByteSize() + GRPC_FRAME_BYTES


def update_message(
    data: bytes, model_checksum: int, snapshot: bool = False, expert_id: str = ""
) -> pb.ModelUpdate:
    """Split an encoded update into the message's fields."""
    if len(data) < HEADER.size:
        raise UpdateError("update shorter than its header")
    _, _, encoding, value_type, version, base, n_params, _, mask_len, crc = HEADER.unpack_from(data)
    body = data[HEADER.size :]
    return pb.ModelUpdate(
        version=version,
        base_version=base,
        num_params=n_params,
        mask_encoding=encoding,
        value_type=value_type,
        mask=body[:mask_len],
        values=body[mask_len:],
        checksum=crc,
        model_checksum=model_checksum,
        snapshot=snapshot,
        expert_id=expert_id,
    )


def update_bytes(msg: pb.ModelUpdate) -> bytes:
    """Rebuild the encoded update from a message; the decoder then verifies it.

    Every field is range-checked first, so a malformed message is an :class:`UpdateError`
    (counted and answered with a resync), never another exception on the agent's link thread.
    """
    if msg.value_type not in (pb.VALUE_FLOAT16, pb.VALUE_FLOAT32):
        raise UpdateError(f"unknown value type {msg.value_type}")
    if msg.mask_encoding not in (pb.MASK_ALL, pb.MASK_BITS, pb.MASK_GAPS):
        raise UpdateError(f"unknown mask encoding {msg.mask_encoding}")
    if not (0 < msg.num_params < 2**32 and len(msg.mask) < 2**32):
        raise UpdateError("update fields out of range")
    if msg.version >= 2**64 or msg.base_version >= 2**64:
        raise UpdateError("update version out of range")
    itemsize = 4 if msg.value_type == pb.VALUE_FLOAT32 else 2
    if len(msg.values) % itemsize:
        raise UpdateError(f"{len(msg.values)} value bytes is not a whole number of values")
    count = len(msg.values) // itemsize
    if count > msg.num_params:
        raise UpdateError(f"{count} values for a model of {msg.num_params} parameters")
    header = HEADER.pack(
        MAGIC,
        FORMAT,
        msg.mask_encoding,
        msg.value_type,
        msg.version,
        msg.base_version,
        msg.num_params,
        count,
        len(msg.mask),
        0,
    )
    return header[:_CRC_OFFSET] + struct.pack("<I", msg.checksum) + msg.mask + msg.values


def split_update(msg: pb.ModelUpdate, part_bytes: int) -> list[pb.ModelUpdate]:
    """An update as parts of about ``part_bytes`` each (see ``ModelUpdate.part``); one part, the
    message itself, when it is small enough."""
    if part_bytes <= 0 or msg.ByteSize() <= part_bytes:
        return [msg]
    itemsize = 4 if msg.value_type == pb.VALUE_FLOAT32 else 2
    step = max(itemsize, part_bytes // itemsize * itemsize)
    first = max(0, (part_bytes - len(msg.mask)) // itemsize * itemsize)
    cuts = [0, first, *range(first + step, len(msg.values), step)]
    if cuts[-1] != len(msg.values) or len(cuts) == 2:
        cuts.append(len(msg.values))
    slices = [msg.values[a:b] for a, b in itertools.pairwise(cuts)]
    parts = []
    for i, values in enumerate(slices):
        part = pb.ModelUpdate()
        part.CopyFrom(msg)
        part.mask = msg.mask if i == 0 else b""
        part.values = values
        part.part, part.parts = i, len(slices)
        parts.append(part)
    return parts


class UpdateJoiner:
    """Joins the parts of split updates, in order, on one stream.

    ``add`` returns the whole update once its last part arrived, None while parts are missing,
    and raises :class:`UpdateError` for a part that does not continue the update being joined
    (the agent then rejects it and asks to resynchronise, as for any bad update).
    """

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._parts: list[pb.ModelUpdate] = []
        self._size = 0

    def reset(self) -> None:
        self._parts, self._size = [], 0

    @staticmethod
    def _key(msg: pb.ModelUpdate) -> tuple[object, ...]:
        return (
            msg.version,
            msg.base_version,
            msg.num_params,
            msg.mask_encoding,
            msg.value_type,
            msg.checksum,
            msg.model_checksum,
            msg.snapshot,
            msg.parts,
            msg.expert_id,
        )

    def add(self, msg: pb.ModelUpdate) -> pb.ModelUpdate | None:
        if msg.parts <= 1:
            if self._parts:
                self.reset()
                raise UpdateError("a whole update arrived before the last part of a split one")
            return msg
        if msg.part >= msg.parts:
            self.reset()
            raise UpdateError(f"part {msg.part} of an update in {msg.parts} parts")
        if msg.part == 0:
            self.reset()  # an unfinished one (the stream is ordered, so never in practice) is gone
        elif not self._parts or (
            self._key(self._parts[0]) != self._key(msg) or msg.part != len(self._parts) or msg.mask
        ):
            self.reset()
            raise UpdateError(f"part {msg.part} of {msg.parts} does not continue the update")
        self._size += msg.ByteSize()
        if self._size > self.max_bytes:
            self.reset()
            raise UpdateError(f"a split update beyond {self.max_bytes} bytes")
        self._parts.append(msg)
        if len(self._parts) < msg.parts:
            return None
        whole = pb.ModelUpdate()
        whole.CopyFrom(self._parts[0])
        whole.values = b"".join(p.values for p in self._parts)
        whole.part = whole.parts = 0
        self.reset()
        return whole
