"""Per-device trainer state on disk (a PVC in a cluster): one file per device, replaced atomically.

A state file is written to a temporary name, flushed to disk and renamed over the old one, so a
trainer killed at any moment leaves either the previous or the new state, never a torn one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from edgeadapt.stream.auth import valid_device_id

log = logging.getLogger(__name__)

STATE_FORMAT = 1


class DeviceStore:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, device_id: str) -> Path:
        if not valid_device_id(device_id):
            raise ValueError(f"invalid device id {device_id!r}")
        return self.directory / device_id / "state.pt"

    def save(self, device_id: str, state: dict[str, Any]) -> None:
        path = self.path(device_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save({"format": STATE_FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def load(self, device_id: str) -> dict[str, Any] | None:
        path = self.path(device_id)
        if not path.exists():
            return None
        try:
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:
            # Unreadable state is kept aside for inspection; the device starts over.
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            log.exception("state of %s is unreadable; moved to %s", device_id, aside)
            return None
        if state.get("format") != STATE_FORMAT:
            log.warning("state of %s has format %s; starting over", device_id, state.get("format"))
            return None
        return state

    def device_ids(self) -> list[str]:
        return sorted(p.name for p in self.directory.iterdir() if (p / "state.pt").exists())
