"""The trainer's device hub without gRPC: catch-up, persistence, acknowledgements, refusals."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeadapt._proto.stream.v1 import stream_pb2 as pb
from edgeadapt.adapt.ams import AMSConfig, EdgeModel
from edgeadapt.adapt.update import model_checksum, parameter_vector
from edgeadapt.models.zoo import SegmentationModel, build_student, build_teacher
from edgeadapt.stream.messages import update_bytes
from edgeadapt.trainer.hub import Batch, Hub, HubConfig, PreconditionError
from edgeadapt.trainer.store import DeviceStore

Models = tuple[SegmentationModel, SegmentationModel]


@pytest.fixture(scope="module")
def models() -> Models:
    torch.manual_seed(0)
    return build_teacher(7).eval(), build_student(7, width_mult=0.5).eval()


def make_hub(models: Models, store: Path) -> Hub:
    teacher, student = models
    cfg = HubConfig(ams=AMSConfig(iterations=2, batch_size=2, t_update=2.0))
    hub = Hub(teacher, student, cfg, DeviceStore(store), torch.device("cpu"))
    hub.start()
    return hub


def register(
    hub: Hub, version: int = 0, checksum: int | None = None, **kw: str | float
) -> pb.Register:
    spec = pb.ModelSpec()
    spec.CopyFrom(hub.spec)
    for k, v in kw.items():
        setattr(spec, k, v)
    return pb.Register(
        device_id="cam-1",
        task=pb.TASK_SEMANTIC_SEGMENTATION,
        model=spec,
        model_version=version,
        model_checksum=hub.base_checksum if checksum is None else checksum,
        adapt=True,
    )


def batch(seq: int, t0: float) -> Batch:
    rng = np.random.default_rng(seq)
    return Batch(seq, rng.integers(0, 255, (3, 64, 128, 3), dtype=np.uint8), [t0, t0 + 1, t0 + 2])


def wait(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _drop(message: pb.TrainerMessage) -> None:
    pass


def kinds(messages: list[pb.TrainerMessage]) -> list[str]:
    return [str(m.WhichOneof("body")) for m in messages]


def test_rounds_catch_up_and_persistence(models: Models, tmp_path: Path) -> None:
    hub = make_hub(models, tmp_path)
    sent: list[pb.TrainerMessage] = []
    first = hub.attach(register(hub), sent.append, lambda reason: None)
    assert kinds(first) == ["welcome"], "an agent on the pretrained student needs no model bytes"

    for seq in (1, 2):
        hub.submit("cam-1", batch(seq, 100.0 + 10 * seq))
    wait(lambda: kinds(sent).count("update") == 2)
    assert kinds(sent).count("batch_ack") == 2
    updates = [m.update for m in sent if m.WhichOneof("body") == "update"]
    assert [(u.version, u.base_version) for u in updates] == [(1, 0), (2, 1)]
    server_sum = hub.devices["cam-1"].checksum

    # An agent that missed both (not acknowledged) gets exactly those two sparse updates back,
    # and applying them gives the trainer's model bit for bit.
    edge = EdgeModel(models[1])
    replay = hub.resync("cam-1", pb.ResyncRequest(have_version=0, have_checksum=hub.base_checksum))
    assert [m.update.version for m in replay] == [1, 2]
    assert not any(m.update.snapshot for m in replay)
    for m in replay:
        assert edge.apply(update_bytes(m.update), expected_checksum=m.update.model_checksum)
    assert edge.checksum() == server_sum

    # An agent whose model does not match any version we know gets a float32 snapshot.
    snap = hub.resync("cam-1", pb.ResyncRequest(have_version=1, have_checksum=12345))
    assert len(snap) == 1
    assert snap[0].update.snapshot
    assert snap[0].update.value_type == pb.VALUE_FLOAT32

    # Acknowledged updates leave the chain: a device behind that point needs a snapshot.
    hub.ack("cam-1", pb.UpdateAck(version=2, applied=True))
    assert hub.devices["cam-1"].chain == []

    # A resent batch (same capture times) is acknowledged but not learned twice.
    frames = hub.devices["cam-1"].frames
    hub.submit("cam-1", batch(2, 120.0))
    wait(lambda: kinds(sent).count("batch_ack") == 3)
    assert hub.devices["cam-1"].frames == frames
    assert hub.devices["cam-1"].version == 2
    hub.stop()

    # A new hub on the same store resumes the device at its version, buffer included.
    hub2 = make_hub(models, tmp_path)
    welcome = hub2.attach(register(hub2, 2, server_sum), _drop, lambda reason: None)
    assert kinds(welcome) == ["welcome"]
    assert welcome[0].welcome.model_version == 2
    dev = hub2.devices["cam-1"]
    assert dev.checksum == server_sum
    assert dev.session is not None
    assert model_checksum(parameter_vector(dev.session.model)) == server_sum
    assert len(dev.session.buffer) == 6
    assert dev.session.optimizer.u_last is not None, "the next mask comes from the last phase"
    hub2.stop()


def test_second_stream_replaces_the_first(models: Models, tmp_path: Path) -> None:
    hub = make_hub(models, tmp_path)
    closed: list[str] = []
    hub.attach(register(hub), _drop, closed.append)
    hub.attach(register(hub), _drop, closed.append)
    assert closed == ["replaced by a newer stream for the same device"]
    hub.stop()


@pytest.mark.parametrize(
    ("field", "value"),
    [("arch", "resnet"), ("num_classes", 3), ("num_params", 1), ("width_mult", 1.0)],
)
def test_a_student_this_trainer_does_not_adapt_is_refused(
    models: Models, tmp_path: Path, field: str, value: str | float
) -> None:
    hub = make_hub(models, tmp_path)
    with pytest.raises(PreconditionError, match="this trainer adapts"):
        hub.attach(register(hub, **{field: value}), _drop, lambda reason: None)  # type: ignore[arg-type]
    hub.stop()
