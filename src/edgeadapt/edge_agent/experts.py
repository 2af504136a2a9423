"""The agent's expert cache: recently run zoo experts on disk, least recently used evicted first.

RECL switches a device between zoo experts as its scenes change, and scenes recur, so the
device keeps the last few experts it ran. A switch to a cached expert then costs the trainer
one ``SwitchExpert`` message instead of a model over the downlink.

One file per expert, ``<dir>/<sha256(id)[:32]>.pt``, written atomically, holding the expert's id,
its float32 parameter vector and that vector's CRC32 (the checksum the trainer names it by);
``index.json`` holds the use order. A file that does not load or whose parameters do not match
its checksum is deleted and counted, never run: the trainer then sends the expert's weights.
Without a directory the cache lives in memory (it is then gone with the process).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

from edgeadapt.adapt.update import model_checksum
from edgeadapt.durable import write_atomically

log = logging.getLogger(__name__)

INDEX = "index.json"
MAX_ID_LENGTH = 253


def _writer(data: bytes) -> Callable[[BinaryIO], None]:
    def write(f: BinaryIO) -> None:
        f.write(data)

    return write


class ExpertCache:
    def __init__(self, capacity: int, num_params: int, root: Path | None = None) -> None:
        if capacity < 0:
            raise ValueError(f"expert cache size {capacity} is negative")
        self.capacity = capacity
        self.num_params = num_params
        self.root = root
        self.corrupt = 0
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        # id -> checksum, least recently used first
        self._order: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._memory: dict[str, torch.Tensor] = {}
        if root is not None and capacity:
            root.mkdir(parents=True, exist_ok=True)
            self._load_index()

    # -- queries ------------------------------------------------------------------------
    def entries(self) -> list[tuple[str, int]]:
        """(expert id, checksum) of every cached expert, least recently used first."""
        with self._lock:
            return list(self._order.items())

    def __len__(self) -> int:
        return len(self._order)

    def get(self, expert_id: str, checksum: int) -> torch.Tensor | None:
        """The expert's parameters if cached with that checksum (and now most recently used)."""
        with self._lock:
            if self._order.get(expert_id) != checksum:
                self.misses += 1
                return None
            params = self._read(expert_id)
            if params is None or model_checksum(params) != checksum:
                self.corrupt += 1
                self.misses += 1
                log.warning("cached expert is corrupt; dropped", extra={"expert": expert_id})
                self._drop(expert_id)
                self._write_index()
                return None
            self._order.move_to_end(expert_id)
            self._write_index()
            self.hits += 1
            return params

    # -- changes ------------------------------------------------------------------------
    def put(self, expert_id: str, params: torch.Tensor) -> int | None:
        """Keep ``params`` as the expert ``expert_id``; its checksum, or None when not kept."""
        if not self.capacity or not expert_id or len(expert_id) > MAX_ID_LENGTH:
            return None
        if params.numel() != self.num_params:
            raise ValueError(f"expert of {params.numel()} parameters, model has {self.num_params}")
        flat = params.detach().to("cpu", torch.float32).contiguous().clone()
        checksum = model_checksum(flat)
        with self._lock:
            if self.root is None:
                self._memory[expert_id] = flat
            else:
                buf = io.BytesIO()
                torch.save({"id": expert_id, "checksum": checksum, "params": flat}, buf)
                try:
                    write_atomically(self._path(expert_id), _writer(buf.getvalue()))
                except OSError:
                    log.exception("cannot cache an expert", extra={"expert": expert_id})
                    return None
            self._order[expert_id] = checksum
            self._order.move_to_end(expert_id)
            while len(self._order) > self.capacity:
                self._drop(next(iter(self._order)))
            self._write_index()
        return checksum

    # -- storage ------------------------------------------------------------------------
    def _path(self, expert_id: str) -> Path:
        assert self.root is not None
        return self.root / f"{hashlib.sha256(expert_id.encode()).hexdigest()[:32]}.pt"

    def _read(self, expert_id: str) -> torch.Tensor | None:
        if self.root is None:
            return self._memory.get(expert_id)
        try:
            data = torch.load(self._path(expert_id), map_location="cpu", weights_only=True)
            params = data["params"]
            if data["id"] != expert_id or not isinstance(params, torch.Tensor):
                return None
            if params.dtype != torch.float32 or params.numel() != self.num_params:
                return None
            return params.reshape(-1)
        except Exception:  # a truncated or foreign file: corrupt, like any other mismatch
            return None

    def _drop(self, expert_id: str) -> None:
        self._order.pop(expert_id, None)
        self._memory.pop(expert_id, None)
        if self.root is not None:
            with contextlib.suppress(OSError):
                self._path(expert_id).unlink()

    def _write_index(self) -> None:
        if self.root is None:
            return
        data = json.dumps([[k, v] for k, v in self._order.items()]).encode()
        try:
            write_atomically(self.root / INDEX, _writer(data))
        except OSError:
            log.exception("cannot write the expert cache's index")

    def _load_index(self) -> None:
        assert self.root is not None
        try:
            entries = json.loads((self.root / INDEX).read_text())
            for expert_id, checksum in entries:
                if self._path(str(expert_id)).exists():
                    self._order[str(expert_id)] = int(checksum)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError):
            log.warning("expert cache index unreadable; starting the cache empty")
            self._order.clear()
        while len(self._order) > self.capacity:
            self._drop(next(iter(self._order)))
