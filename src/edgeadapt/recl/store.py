"""The model zoo on disk: content-addressed blobs and one versioned manifest per zoo version.

Layout under the zoo's directory (the ModelZoo's PersistentVolumeClaim)::

    blobs/<sha256>          expert checkpoints, the gating network, the gating history
    manifests/<version>.json  one consistent zoo version: its experts with their metadata, in
                            gating-output order, and the blobs of its gating net and history
    CURRENT                 the number of the newest committed version
    write.lock              the lock every writer holds (``ZooStore.lock``)

A version is committed by writing its blobs, then its manifest, then ``CURRENT``, each with
``durable.write_atomically``; so a crash at any point (mid-admission included) leaves the
previous version whole and current. Loading checks every blob of a version against its digest
and falls back to the newest older version that is whole. Blobs are named by their digest, so
versions share what did not change and a blob is deleted only when no kept version names it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import torch

from edgeadapt.durable import write_atomically

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
KEEP_VERSIONS = 3
LOCK_FILE = "write.lock"


class ZooCorruptError(Exception):
    """No whole version of the zoo could be read."""


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int


@dataclass(frozen=True)
class Expert:
    """One expert: a checkpoint of the zoo's student, and where it came from."""

    id: str
    blob: Blob
    source_device: str
    window: int
    created: float


@dataclass(frozen=True)
class ZooVersion:
    version: int
    created: float
    arch: str
    config: Mapping[str, Any] = field(default_factory=dict)  # the experts' builder config
    experts: tuple[Expert, ...] = ()
    gating: Blob | None = None
    history: Blob | None = None
    counters: Mapping[str, int] = field(default_factory=dict)  # admissions, prunes, ...

    def expert_ids(self) -> list[str]:
        return [e.id for e in self.experts]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["config"] = dict(self.config)
        out["counters"] = dict(self.counters)
        out["format"] = MANIFEST_FORMAT
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ZooVersion:
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"unknown manifest format {data.get('format')!r}")

        def blob(b: Mapping[str, Any] | None) -> Blob | None:
            return Blob(str(b["sha256"]), int(b["size"])) if b else None

        return cls(
            version=int(data["version"]),
            created=float(data["created"]),
            arch=str(data["arch"]),
            config=dict(data.get("config") or {}),
            experts=tuple(
                Expert(
                    id=str(e["id"]),
                    blob=Blob(str(e["blob"]["sha256"]), int(e["blob"]["size"])),
                    source_device=str(e["source_device"]),
                    window=int(e["window"]),
                    created=float(e["created"]),
                )
                for e in data.get("experts") or []
            ),
            gating=blob(data.get("gating")),
            history=blob(data.get("history")),
            counters={str(k): int(v) for k, v in (data.get("counters") or {}).items()},
        )


class ZooStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        for d in (self.blobs, self.manifests):
            d.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------- blobs

    def put(self, data: bytes) -> Blob:
        digest = hashlib.sha256(data).hexdigest()
        path = self.blobs / digest
        if not path.exists() or path.stat().st_size != len(data):
            write_atomically(path, lambda f: _write(f, data))
        return Blob(digest, len(data))

    def get(self, blob: Blob) -> bytes:
        """The blob's bytes, checked against its digest."""
        try:
            data = (self.blobs / blob.sha256).read_bytes()
        except FileNotFoundError as e:
            raise ZooCorruptError(f"blob {blob.sha256} is missing") from e
        if len(data) != blob.size or hashlib.sha256(data).hexdigest() != blob.sha256:
            raise ZooCorruptError(f"blob {blob.sha256} does not match its digest")
        return data

    def put_tensors(self, obj: Any) -> Blob:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return self.put(buf.getvalue())

    def get_tensors(self, blob: Blob) -> Any:
        return torch.load(io.BytesIO(self.get(blob)), map_location="cpu", weights_only=True)

    # ----------------------------------------------------------------- writers

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive among every process that writes this zoo (replicas of the gating service
        on one ReadWriteMany volume): an advisory lock on ``write.lock``, held while a new
        version is built and committed and while the selection log is merged."""
        with open(self.root / LOCK_FILE, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # ----------------------------------------------------------------- versions

    def commit(self, version: ZooVersion) -> ZooVersion:
        """Make ``version`` (its blobs already put) the current one; returns it as written."""
        current = self.current_number()
        if version.version <= current:
            version = replace(version, version=current + 1)
        body = json.dumps(version.to_json(), sort_keys=True, indent=1).encode()
        write_atomically(self._manifest(version.version), lambda f: _write(f, body))
        text = f"{version.version}\n".encode()
        write_atomically(self.root / "CURRENT", lambda f: _write(f, text))
        self.collect()
        return version

    def current_number(self) -> int:
        try:
            return int((self.root / "CURRENT").read_text().strip())
        except (FileNotFoundError, ValueError):
            return max(self._numbers(), default=0)

    def load(self) -> ZooVersion | None:
        """The newest whole version (at most CURRENT), or None for a new zoo."""
        current = self.current_number()
        numbers = [n for n in sorted(self._numbers(), reverse=True) if n <= current]
        if not numbers:
            return None
        for n in numbers:
            try:
                version = ZooVersion.from_json(json.loads(self._manifest(n).read_text()))
                for blob in self._blobs_of(version):
                    self.get(blob)
            except (OSError, ValueError, KeyError, ZooCorruptError) as e:
                log.warning("zoo version %d is not whole (%s); trying the one before", n, e)
                continue
            return version
        raise ZooCorruptError(f"none of the zoo versions in {self.manifests} is whole")

    def collect(self, keep: int = KEEP_VERSIONS) -> None:
        """Remove manifests older than the newest ``keep`` and blobs none of those name."""
        numbers = sorted(self._numbers(), reverse=True)
        kept: set[str] = set()
        for n in numbers[:keep]:
            try:
                version = ZooVersion.from_json(json.loads(self._manifest(n).read_text()))
            except (OSError, ValueError, KeyError):
                continue
            kept.update(b.sha256 for b in self._blobs_of(version))
        for n in numbers[keep:]:
            self._manifest(n).unlink(missing_ok=True)
        cutoff = time.time() - 60  # a blob put moments ago may belong to a version being built
        for path in self.blobs.iterdir():
            keep = path.name in kept or path.name.startswith(".")
            if not keep and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)

    def _manifest(self, number: int) -> Path:
        return self.manifests / f"{number:08d}.json"

    def _numbers(self) -> Iterable[int]:
        for p in self.manifests.glob("*.json"):
            if p.stem.isdigit():
                yield int(p.stem)

    @staticmethod
    def _blobs_of(version: ZooVersion) -> list[Blob]:
        blobs = [e.blob for e in version.experts]
        blobs += [b for b in (version.gating, version.history) if b is not None]
        return blobs


def _write(f: BinaryIO, data: bytes) -> None:
    f.write(data)
