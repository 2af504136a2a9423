"""A device's record saves and restores itself; catch-up serves chains, snapshots, and waits."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeadapt.adapt.ams import AMSConfig, AMSSession
from edgeadapt.adapt.update import (
    ModelUpdate,
    apply_update,
    decode_update,
    encode_update,
    model_checksum,
    parameter_vector,
)
from edgeadapt.models.zoo import SegmentationModel, build_student
from edgeadapt.trainer.catchup import CatchUp
from edgeadapt.trainer.device import Device, HoldOut, PendingUpdate, Score
from edgeadapt.trainer.jobs import PhaseJob
from edgeadapt.trainer.metrics import TrainerMetrics
from edgeadapt.trainer.store import DeviceStore, UpdateRecord


@pytest.fixture(scope="module")
def student() -> SegmentationModel:
    torch.manual_seed(0)
    return build_student(7, width_mult=0.5).eval()


def session(student: SegmentationModel) -> AMSSession:
    cfg = AMSConfig(iterations=2, batch_size=2, t_update=2.0)
    return AMSSession(student, cfg, 7, torch.device("cpu"))


def trained(student: SegmentationModel) -> Device:
    """A device with one phase trained and committed, and one update in its chain."""
    s = session(student)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (4, 64, 128, 3), dtype=np.uint8)
    s.ingest(images, torch.zeros(4, 64, 128, dtype=torch.long), [0.0, 1.0, 2.0, 3.0])
    base = parameter_vector(s.model).clone()
    dev = Device("cam-1", True, s, model_checksum(base))
    phase = s.begin_phase(3.0)
    assert phase is not None
    s.step(phase, 2)
    update = s.commit(phase)
    assert update is not None
    after = model_checksum(parameter_vector(s.model))
    dev.chain.append(PendingUpdate(1, 0, encode_update(update), dev.checksum, after))
    dev.checksum = after
    dev.scores.append(Score(3.0, 2.5, 2.0, 4, 1))
    dev.frames, dev.batches, dev.updates_sent = 4, 1, 1
    return dev


def test_a_saved_device_loads_back_as_it_was(student: SegmentationModel, tmp_path: Path) -> None:
    store = DeviceStore(tmp_path)
    dev = trained(student)
    size = dev.save(store)
    assert size is not None
    assert size == dev.state_bytes
    assert not dev.dirty
    back = Device.load(store, "cam-1", lambda: session(student), 0, chain_length=8)
    assert back is not None
    assert (back.version, back.checksum, back.adapt) == (dev.version, dev.checksum, True)
    assert back.chain == dev.chain
    assert list(back.scores) == list(dev.scores)
    assert (back.frames, back.batches, back.updates_sent) == (4, 1, 1)
    assert dev.session is not None
    assert back.session is not None
    assert torch.equal(parameter_vector(back.session.model), parameter_vector(dev.session.model))
    assert Device.load(store, "cam-2", lambda: session(student), 0, chain_length=8) is None


def test_older_checkpoints_with_positional_score_rows_still_load() -> None:
    row = (3.0, 2.5, 2.0, 4, 1)
    assert Score.restore(row) == Score.restore(dict(zip(Score._fields, row, strict=True)))
    assert Score.restore(row).frames == 4


def test_logged_updates_after_the_checkpoint_are_replayed_and_a_misfit_stops_it(
    student: SegmentationModel, tmp_path: Path
) -> None:
    store = DeviceStore(tmp_path)
    dev = trained(student)
    dev.save(store)
    assert dev.session is not None
    flat = parameter_vector(dev.session.model)
    step = ModelUpdate(
        2, 1, flat.numel(), np.arange(10, dtype=np.int64), np.full(10, 0.5, dtype=np.float32)
    )
    data = encode_update(step)
    moved = flat.clone()
    apply_update(moved, decode_update(data, flat.numel()))
    good = UpdateRecord(2, 1, dev.checksum, model_checksum(moved), 5.0, data)
    bad = UpdateRecord(3, 2, 12345, 0, 6.0, data)  # does not continue version 2
    store.append("cam-1", good)
    store.append("cam-1", bad)
    back = Device.load(store, "cam-1", lambda: session(student), 0, chain_length=8)
    assert back is not None
    assert back.version == 2
    assert back.checksum == good.checksum
    assert back.last_frame_time == 5.0
    assert back.dirty
    assert [k.version for k in back.chain] == [1, 2]


def test_a_device_mid_phase_is_not_saved(student: SegmentationModel, tmp_path: Path) -> None:
    dev = trained(student)
    assert dev.session is not None
    job = PhaseJob(
        "cam-1", dev.session, threading.RLock(), 3.0, None, None, [], 7, torch.device("cpu")
    )
    dev.job = job
    before = parameter_vector(dev.session.model).clone()
    job.phase = dev.session.begin_phase(3.0)
    assert job.phase is not None
    assert dev.mid_phase
    dev.session.step(job.phase, 1)
    assert dev.save(DeviceStore(tmp_path)) is None
    assert torch.equal(dev.committed(torch.zeros(1)), before)


def test_catch_up_sends_the_missed_chain_or_else_a_snapshot(student: SegmentationModel) -> None:
    dev = trained(student)
    metrics = TrainerMetrics()
    catchup = CatchUp(torch.zeros(1), metrics, interval=1.0)
    base_checksum = dev.chain[0].base_checksum
    chain = catchup.serve(dev, 0, base_checksum)
    assert [m.update.snapshot for m in chain] == [False]
    assert catchup.serve(dev, dev.version, dev.checksum) == []  # in step: nothing
    snapshot = catchup.serve(dev, 0, base_checksum ^ 1)  # runs something else: a snapshot
    assert [m.update.snapshot for m in snapshot] == [True]
    assert catchup.serve(dev, 0, base_checksum ^ 1) == []  # one snapshot in flight at a time
    assert dev.snapshots_sent == 1


def test_resync_requests_inside_the_interval_wait_and_the_latest_is_answered() -> None:
    dev = Device("cam-1", False, None, 0)
    catchup = CatchUp(torch.zeros(1), TrainerMetrics(), interval=1.0)
    catchup.reset(dev, now=100.0)
    assert not catchup.admit(dev, 1, 11, now=100.2)
    assert not catchup.admit(dev, 2, 22, now=100.5)
    assert catchup.due(dev, now=100.9) is None
    assert catchup.due(dev, now=101.0) == (2, 22)
    assert catchup.due(dev, now=103.0) is None  # answered once
    assert catchup.admit(dev, 3, 33, now=102.5)


def test_held_out_frames_follow_the_scene_and_are_trained_on_once_pushed_out() -> None:
    held = HoldOut(every=4, size=2)
    images = np.arange(12, dtype=np.uint8).reshape(12, 1, 1, 1)
    labels = torch.arange(12)
    times = [float(t) for t in range(12)]
    train, released = held.split(images[:6], labels[:6], times[:6])
    assert train == [1, 2, 3, 5]
    assert released == []
    train, released = held.split(images[6:], labels[6:], times[6:])
    assert train == [0, 1, 3, 4, 5]  # frame 8 held (index 2 of this batch)
    assert [(int(img[0, 0, 0]), t) for img, _, t in released] == [(0, 0.0)]
    frames = held.frames()
    assert frames is not None
    assert frames[1].tolist() == [4, 8]
    assert len(held) == 2
    assert HoldOut().frames() is None
    # A trainer that is not over-subscribed scores no slice: every frame and every held frame
    # goes to training.
    train, released = held.split(images[:3], labels[:3], times[:3], hold=False)
    assert train == [0, 1, 2]
    assert [int(img[0, 0, 0]) for img, _, _ in released] == [4, 8]
    assert len(held) == 0
    assert held.frames() is None
    assert held.release() == []
