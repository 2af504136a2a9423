"""The trainer's on-disk device state: checkpoints, the update log, and what they refuse."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from edgeadapt.trainer.store import DeviceStore, UpdateRecord, pack_tensor, unpack_tensor


def record(version: int) -> UpdateRecord:
    return UpdateRecord(
        version, version - 1, 100 + version, 200 + version, 10.0 * version, b"u" * 50
    )


def test_update_log_round_trip_and_a_torn_tail_is_ignored(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path)
    for v in (1, 2, 3):
        store.append("cam-1", record(v))
    assert store.records("cam-1") == [record(1), record(2), record(3)]
    log = store.log_path("cam-1")
    data = log.read_bytes()
    log.write_bytes(data[:-7])  # killed in the middle of the third append
    assert store.records("cam-1") == [record(1), record(2)]
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1  # a flipped bit in the second record
    log.write_bytes(bytes(flipped))
    assert store.records("cam-1") == [record(1)]


def test_a_checkpoint_empties_the_log_and_reports_its_size(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path)
    store.append("cam-1", record(1))
    size = store.save("cam-1", {"x": torch.zeros(10)})
    assert size == store.path("cam-1").stat().st_size
    assert store.records("cam-1") == []
    loaded = store.load("cam-1")
    assert loaded is not None
    assert torch.equal(loaded[0]["x"], torch.zeros(10))


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/x/edgeadapt-pwned",))


def test_state_is_loaded_as_data_never_as_code(tmp_path: Path) -> None:
    marker = Path("/tmp/x/edgeadapt-pwned")
    marker.unlink(missing_ok=True)
    store = DeviceStore(tmp_path)
    path = store.path("cam-1")
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        torch.save({"format": 2, "payload": _Exploit()}, f, pickle_module=pickle)
    assert store.load("cam-1") is None
    assert not marker.exists(), "loading trainer state ran code"
    assert path.with_name("state.pt.corrupt").exists(), "kept aside for inspection"


def test_a_failed_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DeviceStore(tmp_path)
    store.save("cam-1", {"v": 1})

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="No space"):
        store.save("cam-1", {"v": 2})
    assert sorted(p.name for p in store.folder("cam-1").iterdir()) == ["state.pt"]
    loaded = store.load("cam-1")
    assert loaded is not None
    assert loaded[0]["v"] == 1, "the previous state is intact"


def test_new_device_folders_are_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    DeviceStore(tmp_path).save("cam-1", {"v": 1})
    assert str(tmp_path) in synced, "the parent folder holds the new device's entry"
    assert str(tmp_path / "cam-1") in synced


def test_packed_tensors_round_trip_smaller() -> None:
    t = torch.zeros((20, 3, 64, 128), dtype=torch.uint8)
    t[:, :, 10:20] = 7
    packed = pack_tensor(t)
    assert packed is not None
    assert len(packed["zlib"]) < t.numel() / 50
    out = unpack_tensor(packed)
    assert out is not None
    assert torch.equal(out, t)
