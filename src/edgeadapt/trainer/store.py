"""Per-device trainer state on disk (a PVC in a cluster): a checkpoint and an update log.

Two files per device, in ``<dir>/<device>/``:

- ``state.pt``: everything a restarted trainer needs (model, optimizer, horizon buffer, controllers,
  counters). Written on a schedule, at shutdown and when an idle device leaves memory, to a
  temporary file that is flushed and renamed over the old one, so a trainer killed at any moment
  leaves the previous or the new checkpoint, never a torn one. Large tensors (the horizon's frames
  and labels) are stored zlib-compressed.
- ``updates.log``: one record per model update, appended and flushed *before* the update leaves
  the trainer. A restarted trainer replays the records newer than the checkpoint, so it never
  has sent a version it cannot resume from, while a checkpoint costs one write per minute rather
  than one per batch. Each record carries its own length and CRC32; a torn last record (a kill
  mid-append) is ignored. The log is emptied after each checkpoint.

State files are loaded with ``torch.load(weights_only=True)``: a state directory is data, never
code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeadapt.durable import fsync_dir, write_atomically
from edgeadapt.stream.auth import valid_device_id

log = logging.getLogger(__name__)

STATE_FORMAT = 2
_RECORD = struct.Struct("<II")  # payload length, CRC32 of the payload
_UPDATE = struct.Struct("<QQIId")  # version, base version, base checksum, checksum, last frame


@dataclass(frozen=True)
class UpdateRecord:
    """One update as sent: enough to replay it onto the checkpoint's model."""

    version: int
    base_version: int
    base_checksum: int
    checksum: int
    last_frame_time: float
    data: bytes  # the encoded update (edgeadapt.adapt.update wire format)

    def encode(self) -> bytes:
        payload = (
            _UPDATE.pack(
                self.version,
                self.base_version,
                self.base_checksum,
                self.checksum,
                self.last_frame_time,
            )
            + self.data
        )
        return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload

    @classmethod
    def decode(cls, payload: bytes) -> UpdateRecord:
        version, base, base_crc, crc, last = _UPDATE.unpack_from(payload)
        return cls(version, base, base_crc, crc, last, payload[_UPDATE.size :])


def pack_tensor(t: torch.Tensor | None) -> dict[str, Any] | None:
    """A tensor as zlib-compressed bytes (frames and labels compress several-fold)."""
    if t is None:
        return None
    a = t.detach().cpu().contiguous().numpy()
    return {"zlib": zlib.compress(a.tobytes(), 1), "dtype": str(a.dtype), "shape": list(a.shape)}


def unpack_tensor(packed: dict[str, Any] | None) -> torch.Tensor | None:
    if packed is None:
        return None
    a = np.frombuffer(zlib.decompress(packed["zlib"]), dtype=np.dtype(packed["dtype"]))
    return torch.from_numpy(a.reshape(packed["shape"]).copy())


class DeviceStore:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def folder(self, device_id: str) -> Path:
        if not valid_device_id(device_id):
            raise ValueError(f"invalid device id {device_id!r}")
        return self.directory / device_id

    def path(self, device_id: str) -> Path:
        return self.folder(device_id) / "state.pt"

    def log_path(self, device_id: str) -> Path:
        return self.folder(device_id) / "updates.log"

    def _ensure_folder(self, device_id: str) -> Path:
        folder = self.folder(device_id)
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.directory)  # the new folder's entry survives a crash
        return folder

    def save(self, device_id: str, state: dict[str, Any]) -> int:
        """Write a checkpoint atomically and empty the update log; returns its size in bytes."""
        folder = self._ensure_folder(device_id)
        # A full disk (ENOSPC) leaves no temporary file behind to fill it further.
        size = write_atomically(
            folder / "state.pt", lambda f: torch.save({"format": STATE_FORMAT, **state}, f)
        )
        # Records up to this checkpoint's version are in it; a kill between the rename and the
        # truncation only leaves records the replay skips.
        with contextlib.suppress(FileNotFoundError):
            os.truncate(folder / "updates.log", 0)
        return size

    def append(self, device_id: str, record: UpdateRecord) -> None:
        """Append an update to the device's log and flush it to disk before it is sent."""
        folder = self._ensure_folder(device_id)
        with open(folder / "updates.log", "ab") as f:
            f.write(record.encode())
            f.flush()
            os.fsync(f.fileno())

    def load(self, device_id: str) -> tuple[dict[str, Any], list[UpdateRecord]] | None:
        """The checkpoint and the update records after it, or None for a device never saved."""
        path = self.path(device_id)
        if not path.exists():
            return None
        try:
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            # Unreadable state is kept aside for inspection; the device starts over.
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            log.exception("state of %s is unreadable; moved to %s", device_id, aside)
            return None
        if state.get("format") != STATE_FORMAT:
            log.warning("state of %s has format %s; starting over", device_id, state.get("format"))
            return None
        return state, self.records(device_id)

    def records(self, device_id: str) -> list[UpdateRecord]:
        """The update log's intact records, in order; a torn or corrupt tail is ignored."""
        try:
            data = self.log_path(device_id).read_bytes()
        except FileNotFoundError:
            return []
        out, pos = [], 0
        while pos + _RECORD.size <= len(data):
            length, crc = _RECORD.unpack_from(data, pos)
            payload = data[pos + _RECORD.size : pos + _RECORD.size + length]
            if len(payload) != length or zlib.crc32(payload) != crc or length < _UPDATE.size:
                log.warning("update log of %s ends in a torn record at byte %d", device_id, pos)
                break
            out.append(UpdateRecord.decode(payload))
            pos += _RECORD.size + length
        return out

    def bytes_used(self, device_id: str) -> int:
        folder = self.folder(device_id)
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())

    def device_ids(self) -> list[str]:
        return sorted(p.name for p in self.directory.iterdir() if (p / "state.pt").exists())
