"""The sparse model-update wire format: what crosses the downlink each round.

An update carries the *new values* (not deltas) of the selected coordinates as float16 and their
positions, versioned against the model it patches and checksummed::

    header  (40 bytes, little endian)
      magic "EAUP" | format u8 | mask encoding u8 | value type u16
      version u64 | base version u64 | num params u32 | count u32 | mask bytes u32 | crc32 u32
    mask    (mask bytes): how the positions are coded, see below
    values  (count values): float16 (value type 0, every round) or float32 (value type 1, the
            full-precision snapshots that resynchronise a device), in position order

Positions are coded whichever way is smaller, as AMS's gzip-compressed bit vector or as
zlib-compressed LEB128 gaps between sorted positions; a full-model update carries no mask. The
CRC32 covers the header (with the CRC field zeroed) and everything after it. ``decode_update``
refuses anything malformed, truncated, inconsistent or non-finite with :class:`UpdateError`, so a
corrupt update is counted and dropped, never applied.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

MAGIC = b"EAUP"
FORMAT = 1
HEADER = struct.Struct("<4sBBHQQIIII")
MASK_ALL, MASK_BITS, MASK_GAPS = 0, 1, 2
VALUE_F16, VALUE_F32 = 0, 1
_VALUE_DTYPES: dict[int, np.dtype[Any]] = {VALUE_F16: np.dtype("<f2"), VALUE_F32: np.dtype("<f4")}
_CRC_OFFSET = HEADER.size - 4
_MAX_VARINT = 6  # bytes of one LEB128 gap (positions are below 2**32)


class UpdateError(ValueError):
    """An update that cannot be applied: corrupt, truncated, or for another model."""


@dataclass(frozen=True)
class ModelUpdate:
    version: int
    base_version: int
    num_params: int
    indices: npt.NDArray[np.int64]  # sorted positions; all positions for a full update
    values: npt.NDArray[np.float16] | npt.NDArray[np.float32]

    @property
    def full(self) -> bool:
        return len(self.indices) == self.num_params


def _leb128(values: npt.NDArray[np.int64]) -> bytes:
    v = values.astype(np.uint64)
    nbytes = np.ones(len(v), np.int64)
    for shift in (7, 14, 21, 28, 35):
        nbytes += v >= (1 << shift)
    starts = np.concatenate([[0], np.cumsum(nbytes)[:-1]])
    out = np.zeros(int(nbytes.sum()), np.uint8)
    for b in range(int(nbytes.max(initial=1))):
        sel = nbytes > b
        byte = (v[sel] >> np.uint64(7 * b)) & np.uint64(0x7F)
        cont = (nbytes[sel] > b + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + b] = (byte | cont).astype(np.uint8)
    return out.tobytes()


def _unleb128(data: bytes) -> npt.NDArray[np.int64]:
    b = np.frombuffer(data, np.uint8)
    if len(b) == 0:
        return np.zeros(0, np.int64)
    if b[-1] & 0x80:
        raise UpdateError("truncated position list")
    ends = (b & 0x80) == 0
    group = np.concatenate([[0], np.cumsum(ends)[:-1]])
    first = np.concatenate([[0], np.flatnonzero(ends)[:-1] + 1])
    pos_in_group = np.arange(len(b)) - first[group]
    if pos_in_group.max() > 5:
        raise UpdateError("position varint too long")
    parts = (b & 0x7F).astype(np.int64) << (7 * pos_in_group)
    return np.bincount(group, weights=parts.astype(np.float64)).astype(np.int64)


def encode_update(update: ModelUpdate) -> bytes:
    value_type = VALUE_F32 if update.values.dtype == np.float32 else VALUE_F16
    values = np.ascontiguousarray(update.values, dtype=_VALUE_DTYPES[value_type])
    if len(values) != len(update.indices):
        raise ValueError("one value per position")
    if update.full:
        encoding, mask = MASK_ALL, b""
    else:
        bits = np.zeros(update.num_params, np.bool_)
        bits[update.indices] = True
        as_bits = zlib.compress(np.packbits(bits).tobytes(), 9)
        gaps = np.diff(update.indices, prepend=-1) - 1
        as_gaps = zlib.compress(_leb128(gaps), 9)
        encoding, mask = (
            (MASK_BITS, as_bits) if len(as_bits) <= len(as_gaps) else (MASK_GAPS, as_gaps)
        )
    header = HEADER.pack(
        MAGIC,
        FORMAT,
        encoding,
        value_type,
        update.version,
        update.base_version,
        update.num_params,
        len(values),
        len(mask),
        0,
    )
    body = mask + values.tobytes()
    crc = zlib.crc32(body, zlib.crc32(header))
    return header[:_CRC_OFFSET] + struct.pack("<I", crc) + body


def _inflate(data: bytes, limit: int) -> bytes:
    """zlib-decompress at most ``limit`` bytes; more than that (a zlib bomb) is an error."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit)
        if not d.eof:
            if d.decompress(d.unconsumed_tail, 1):
                raise UpdateError(f"mask decompresses to more than {limit} bytes")
            raise UpdateError("mask is a truncated zlib stream")
        if d.unused_data:
            raise UpdateError("trailing bytes after the mask's zlib stream")
    except zlib.error as exc:
        raise UpdateError(f"mask does not decompress: {exc}") from exc
    return out


def decode_update(data: bytes, num_params: int | None = None) -> ModelUpdate:
    """Parse and verify an encoded update; raise :class:`UpdateError` on anything wrong."""
    if len(data) < HEADER.size:
        raise UpdateError(f"update of {len(data)} bytes is shorter than its header")
    magic, fmt, encoding, value_type, version, base, n_params, count, mask_len, crc = (
        HEADER.unpack_from(data)
    )
    if magic != MAGIC or fmt != FORMAT:
        raise UpdateError("not an edgeadapt model update (bad magic or format)")
    if value_type not in _VALUE_DTYPES:
        raise UpdateError(f"unknown value type {value_type}")
    dtype = _VALUE_DTYPES[value_type]
    if num_params is not None and n_params != num_params:
        raise UpdateError(f"update is for a model of {n_params} parameters, not {num_params}")
    expected = HEADER.size + mask_len + dtype.itemsize * count
    if len(data) != expected:
        raise UpdateError(f"update is {len(data)} bytes, header says {expected}")
    zeroed = data[:_CRC_OFFSET] + b"\0\0\0\0"
    if zlib.crc32(data[HEADER.size :], zlib.crc32(zeroed)) != crc:
        raise UpdateError("checksum mismatch")
    mask = data[HEADER.size : HEADER.size + mask_len]
    values = np.frombuffer(data, dtype, count=count, offset=HEADER.size + mask_len)
    if encoding == MASK_ALL:
        if mask_len:
            raise UpdateError("a full-model update carries no mask")
        indices = np.arange(n_params, dtype=np.int64)
    elif encoding == MASK_BITS:
        nbytes = (n_params + 7) // 8
        raw = _inflate(mask, nbytes)
        if len(raw) != nbytes:
            raise UpdateError(
                f"bit mask is {len(raw)} bytes, a {n_params}-parameter model needs {nbytes}"
            )
        bits = np.unpackbits(np.frombuffer(raw, np.uint8))
        if bits[n_params:].any():
            raise UpdateError("bit mask has bits set past the model size")
        indices = np.flatnonzero(bits[:n_params]).astype(np.int64)
    elif encoding == MASK_GAPS:
        gaps = _unleb128(_inflate(mask, count * _MAX_VARINT))
        if len(gaps) != count:
            raise UpdateError(f"{len(gaps)} positions for {count} values")
        indices = np.cumsum(gaps + 1) - 1
    else:
        raise UpdateError(f"unknown mask encoding {encoding}")
    if len(indices) != count or (count and (indices[0] < 0 or indices[-1] >= n_params)):
        raise UpdateError("positions do not match the value count or the model size")
    if not np.isfinite(values).all():
        raise UpdateError("non-finite parameter values")
    if value_type == VALUE_F32:
        return ModelUpdate(version, base, n_params, indices, values.astype(np.float32))
    return ModelUpdate(version, base, n_params, indices, values.astype(np.float16))


def apply_update(flat: torch.Tensor, update: ModelUpdate) -> None:
    """Write the update's values into a flat parameter vector, in place."""
    if flat.numel() != update.num_params:
        raise UpdateError(f"model has {flat.numel()} parameters, update is for {update.num_params}")
    idx = torch.from_numpy(update.indices).to(flat.device)
    flat[idx] = torch.from_numpy(update.values.astype(np.float32)).to(flat.device)


def parameter_vector(model: torch.nn.Module) -> torch.Tensor:
    """The model's trainable parameters as one float32 vector, in the order updates index them."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.nn.utils.parameters_to_vector(params).detach().float()


def model_checksum(flat: torch.Tensor) -> int:
    """CRC32 of a parameter vector's float32 bytes: equal on trainer and edge when in sync."""
    data = flat.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False)
    return zlib.crc32(data.tobytes())


def snapshot_update(flat: torch.Tensor, version: int) -> ModelUpdate:
    """Every parameter at full precision: brings an edge at any version to ``version``."""
    values = flat.detach().to("cpu", torch.float32).numpy().copy()
    return ModelUpdate(
        version=version,
        base_version=version,
        num_params=len(values),
        indices=np.arange(len(values), dtype=np.int64),
        values=values,
    )
