"""The trainer's device hub without gRPC: catch-up, persistence, acknowledgements, refusals."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeadapt._proto.stream.v1 import stream_pb2 as pb
from edgeadapt.adapt.ams import AMSConfig, EdgeModel
from edgeadapt.adapt.update import model_checksum, parameter_vector
from edgeadapt.models.zoo import SegmentationModel, build_student, build_teacher
from edgeadapt.stream.messages import update_bytes
from edgeadapt.trainer.device import Batch
from edgeadapt.trainer.hub import CloseReason, Hub, HubConfig, PreconditionError
from edgeadapt.trainer.store import DeviceStore

Models = tuple[SegmentationModel, SegmentationModel]


@pytest.fixture(scope="module")
def models() -> Models:
    torch.manual_seed(0)
    return build_teacher(7).eval(), build_student(7, width_mult=0.5).eval()


def make_hub(
    models: Models, store: Path, start: bool = True, device: str = "cpu", **overrides: Any
) -> Hub:
    teacher, student = (copy.deepcopy(m) for m in models)
    options: dict[str, Any] = {"resync_interval": 0.0, **overrides}
    cfg = HubConfig(ams=AMSConfig(iterations=2, batch_size=2, t_update=2.0), **options)
    hub = Hub(teacher, student, cfg, DeviceStore(store), torch.device(device), trainer_id="tr-0")
    if start:
        hub.start()
    return hub


def submit(hub: Hub, device_id: str, b: Batch) -> None:
    assert hub.try_submit(device_id, b)


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


def updates_sent(sent: list[pb.TrainerMessage], n: int) -> Callable[[], bool]:
    return lambda: kinds(sent).count("update") == n


def _drop(message: pb.TrainerMessage) -> None:
    pass


def kinds(messages: list[pb.TrainerMessage]) -> list[str]:
    return [str(m.WhichOneof("body")) for m in messages]


def test_rounds_catch_up_and_persistence(models: Models, tmp_path: Path) -> None:
    hub = make_hub(models, tmp_path)
    sent: list[pb.TrainerMessage] = []
    first = hub.attach(register(hub), sent.append, lambda reason: None)
    assert kinds(first) == ["welcome"], "an agent on the pretrained student needs no model bytes"

    for seq in (1, 2):  # one at a time: batches waiting together are learned in one phase
        submit(hub, "cam-1", batch(seq, 100.0 + 10 * seq))
        wait(updates_sent(sent, seq))
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
    submit(hub, "cam-1", batch(2, 120.0))
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
    closed: list[CloseReason] = []
    hub.attach(register(hub), _drop, closed.append)
    hub.attach(register(hub), _drop, closed.append)
    assert closed == [CloseReason.REPLACED]
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


def device_register(hub: Hub, device_id: str, adapt: bool = True) -> pb.Register:
    r = register(hub)
    r.device_id = device_id
    r.adapt = adapt
    return r


def attach_all(hub: Hub, *names: str) -> dict[str, list[pb.TrainerMessage]]:
    """Attach devices; what the hub sends each is collected under its name."""
    sent: dict[str, list[pb.TrainerMessage]] = {name: [] for name in names}
    for name, out in sent.items():
        hub.attach(device_register(hub, name), out.append, lambda reason: None)
    return sent


def test_adapt_false_on_reconnect_is_honoured(models: Models, tmp_path: Path) -> None:
    hub = make_hub(models, tmp_path)
    sent: list[pb.TrainerMessage] = []
    hub.attach(register(hub), sent.append, lambda reason: None)
    submit(hub, "cam-1", batch(1, 100.0))
    wait(lambda: kinds(sent).count("update") == 1)
    # The same device comes back as a scoring-only device: scored, never trained again.
    sent.clear()
    hub.attach(device_register(hub, "cam-1", adapt=False), sent.append, lambda reason: None)
    submit(hub, "cam-1", batch(2, 200.0))
    wait(lambda: kinds(sent).count("batch_ack") == 1)
    dev = hub.devices["cam-1"]
    assert dev.version == 1
    assert "update" not in kinds(sent)
    assert dev.frames == 6, "the frames are still scored"
    hub.stop()


def test_mixed_resolutions_share_a_cycle_and_a_device_may_change_its_own(
    models: Models, tmp_path: Path
) -> None:
    hub = make_hub(models, tmp_path, start=False)
    sent = attach_all(hub, "cam-a", "cam-b")
    rng = np.random.default_rng(0)
    small = Batch(1, rng.integers(0, 255, (2, 48, 64, 3), dtype=np.uint8), [10.0, 11.0])
    submit(hub, "cam-a", batch(1, 10.0))  # 64x128
    submit(hub, "cam-b", small)
    submit(hub, "cam-b", batch(2, 20.0))  # cam-b's camera changed resolution
    hub.start()  # all three batches are taken in one worker cycle
    wait(lambda: kinds(sent["cam-a"]).count("batch_ack") == 1)
    wait(lambda: kinds(sent["cam-b"]).count("batch_ack") == 2)
    assert [m.batch_ack.frames for m in sent["cam-b"] if m.HasField("batch_ack")] == [2, 3]
    # cam-b's two waiting batches are learned in one phase; its horizon restarted at the new
    # resolution, so it holds the later batch's frames only.
    wait(lambda: kinds(sent["cam-a"]).count("update") == 1)
    wait(lambda: kinds(sent["cam-b"]).count("update") == 1)
    time.sleep(0.2)
    assert kinds(sent["cam-b"]).count("update") == 1
    session = hub.devices["cam-b"].session
    assert session is not None
    assert len(session.buffer) == 3
    assert hub.metrics.batches.labels("failed")._value.get() == 0
    hub.stop()


def test_one_devices_failure_never_drops_another_devices_batch(
    models: Models, tmp_path: Path
) -> None:
    hub = make_hub(models, tmp_path, start=False)
    sent = attach_all(hub, "cam-a", "cam-b")
    bad = hub.devices["cam-a"].session
    assert bad is not None
    committed = parameter_vector(bad.model).clone()
    real_step = bad.step

    def broken(phase: Any, iterations: int) -> None:
        real_step(phase, 1)  # the model moves, then the step fails
        raise RuntimeError("CUDA out of memory (simulated)")

    bad.step = broken  # type: ignore[method-assign]
    submit(hub, "cam-a", batch(1, 10.0))
    submit(hub, "cam-b", batch(2, 10.0))
    hub.start()
    wait(lambda: "update" in kinds(sent["cam-b"]))
    wait(lambda: hub.metrics.thread_failures.labels("process")._value.get() == 1)
    assert "batch_ack" in kinds(sent["cam-a"])
    assert "update" not in kinds(sent["cam-a"])
    # The failed phase is rolled back: the model is the version it says it is.
    assert torch.equal(parameter_vector(bad.model), committed)
    assert bad.version == 0
    assert hub.healthy()
    hub.stop()


def test_a_resync_flood_costs_one_snapshot(models: Models, tmp_path: Path) -> None:
    hub = make_hub(models, tmp_path, resync_interval=0.5)
    sent: list[pb.TrainerMessage] = []
    hub.attach(register(hub), sent.append, lambda reason: None)
    submit(hub, "cam-1", batch(1, 100.0))
    wait(lambda: kinds(sent).count("update") == 1)
    time.sleep(0.6)  # the stream's start counts as a resync: let its interval pass
    request = pb.ResyncRequest(have_version=0, have_checksum=12345)  # matches nothing we sent
    answers = [m for _ in range(200) for m in hub.resync("cam-1", request)]
    assert len(answers) == 1
    assert answers[0].update.snapshot
    assert hub.metrics.resyncs.labels("deferred")._value.get() == 199
    # The deferred request is answered once the interval has passed, but not with a second
    # snapshot while the first is still on its way.
    wait(lambda: hub.metrics.resyncs.labels("coalesced")._value.get() >= 1, timeout=10)
    assert sum(m.update.snapshot for m in sent if m.HasField("update")) == 0
    # Once the device acknowledges the snapshot, a new request may get another one.
    hub.ack("cam-1", pb.UpdateAck(version=1, applied=True))
    again: list[pb.TrainerMessage] = []

    def served() -> bool:
        again.extend(hub.resync("cam-1", request))
        return bool(again)

    wait(served, timeout=10)
    assert len(again) == 1
    assert again[0].update.snapshot
    assert hub.devices["cam-1"].snapshots_sent == 2
    hub.stop()


def test_updates_are_logged_not_checkpointed_per_batch_and_survive_a_kill(
    models: Models, tmp_path: Path
) -> None:
    hub = make_hub(models, tmp_path, checkpoint_interval=3600.0)
    store = hub.store
    assert store is not None
    saves: list[str] = []
    save = store.save

    def counted(device_id: str, state: dict[str, Any]) -> int:
        saves.append(device_id)
        return save(device_id, state)

    store.save = counted  # type: ignore[method-assign]
    sent: list[pb.TrainerMessage] = []
    hub.attach(register(hub), sent.append, lambda reason: None)
    for seq in (1, 2, 3):  # one at a time: batches waiting together are learned in one phase
        submit(hub, "cam-1", batch(seq, 100.0 + 10 * seq))
        wait(updates_sent(sent, seq))
    assert saves == [], "no whole-state write per batch"
    assert len(store.records("cam-1")) == 3
    checksum = hub.devices["cam-1"].checksum
    # A trainer killed now (no stop, no checkpoint) resumes at version 3 from the log alone.
    hub2 = make_hub(models, tmp_path)
    welcome = hub2.attach(register(hub2, 3, checksum), _drop, lambda reason: None)
    assert kinds(welcome) == ["welcome"]
    assert welcome[0].welcome.model_version == 3
    dev = hub2.devices["cam-1"]
    assert dev.session is not None
    assert model_checksum(parameter_vector(dev.session.model)) == checksum
    # The agent at version 1 gets the two logged updates it lacks, not a snapshot.
    behind = hub2.resync(
        "cam-1", pb.ResyncRequest(have_version=1, have_checksum=dev.chain[0].checksum)
    )
    assert [m.update.version for m in behind] == [2, 3]
    hub2.stop()
    assert store.records("cam-1") == [], "a checkpoint empties the log"
    hub.stop()


def test_idle_devices_leave_memory_and_come_back(models: Models, tmp_path: Path) -> None:
    hub = make_hub(models, tmp_path, idle_evict_after=0.5)
    sent: list[pb.TrainerMessage] = []
    send = sent.append
    hub.attach(register(hub), send, lambda reason: None)
    submit(hub, "cam-1", batch(1, 100.0))
    wait(lambda: kinds(sent).count("update") == 1)
    checksum = hub.devices["cam-1"].checksum
    hub.detach("cam-1", send)
    assert (hub.scheduler.job_view("cam-1")["slices"] or 0) >= 1
    wait(lambda: "cam-1" not in hub.devices, timeout=10)
    assert hub.metrics.evictions._value.get() == 1
    assert hub.scheduler.job_view("cam-1")["slices"] == 0, "its measurements left with it"
    welcome = hub.attach(register(hub, 1, checksum), _drop, lambda reason: None)
    assert kinds(welcome) == ["welcome"]
    assert welcome[0].welcome.model_version == 1
    assert hub.devices["cam-1"].checksum == checksum
    hub.stop()


def test_one_failing_save_does_not_skip_the_others_at_shutdown(
    models: Models, tmp_path: Path
) -> None:
    hub = make_hub(models, tmp_path)
    for name in ("cam-a", "cam-b", "cam-c"):
        hub.attach(device_register(hub, name), _drop, lambda reason: None)
    store = hub.store
    assert store is not None
    save = store.save

    def failing(device_id: str, state: dict[str, Any]) -> int:
        if device_id == "cam-a":
            raise OSError(28, "No space left on device")
        return save(device_id, state)

    store.save = failing  # type: ignore[method-assign]
    hub.stop()
    assert store.device_ids() == ["cam-b", "cam-c"]


def test_acks_and_uploads_never_wait_for_a_training_phase(models: Models, tmp_path: Path) -> None:
    hub = make_hub(models, tmp_path, start=False, max_queued_batches=1)
    welcome = hub.attach(register(hub), _drop, lambda reason: None)
    assert welcome[0].welcome.trainer_id == "tr-0"
    dev = hub.devices["cam-1"]
    training = threading.Event()
    release = threading.Event()

    def train() -> None:  # holds the device lock as a long training phase does
        with dev.lock:
            training.set()
            release.wait(10)

    holder = threading.Thread(target=train)
    holder.start()
    training.wait(5)
    try:
        t0 = time.monotonic()
        hub.ack("cam-1", pb.UpdateAck(version=0, applied=True))
        assert hub.try_submit("cam-1", batch(1, 10.0))
        assert not hub.try_submit("cam-1", batch(2, 20.0)), "a full queue says so at once"
        assert hub.in_flight("cam-1") == 1
        assert time.monotonic() - t0 < 0.5
    finally:
        release.set()
        holder.join()
    hub.stop()


def test_a_scoring_failure_does_not_stop_learning(models: Models, tmp_path: Path) -> None:
    hub = make_hub(models, tmp_path)
    sent: list[pb.TrainerMessage] = []
    hub.attach(register(hub), sent.append, lambda reason: None)

    def oom(*args: object) -> tuple[float, float]:
        raise RuntimeError("CUDA out of memory (simulated)")

    hub._score = oom  # type: ignore[method-assign,assignment]
    submit(hub, "cam-1", batch(1, 100.0))
    wait(lambda: "update" in kinds(sent))
    assert hub.devices["cam-1"].frames == 3
    assert hub.metrics.thread_failures.labels("process")._value.get() == 1
    hub.stop()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_an_edge_on_cpu_follows_and_a_restart_replays_the_log(
    models: Models, tmp_path: Path
) -> None:
    """The trainer's CUDA path: updates made on the GPU patch a CPU edge model bit for bit,
    the update log replays onto a checkpoint on the GPU, and a checkpoint written from GPU
    tensors loads back."""
    hub = make_hub(models, tmp_path, device="cuda", checkpoint_interval=3600.0)
    sent: list[pb.TrainerMessage] = []
    hub.attach(register(hub), sent.append, lambda reason: None)
    for seq in (1, 2, 3):  # one at a time: batches waiting together are learned in one phase
        submit(hub, "cam-1", batch(seq, 100.0 + 10 * seq))
        wait(updates_sent(sent, seq))
    edge = EdgeModel(models[1])
    for m in sent:
        if m.HasField("update"):
            assert edge.apply(update_bytes(m.update), expected_checksum=m.update.model_checksum)
    checksum = hub.devices["cam-1"].checksum
    assert edge.checksum() == checksum
    hub2 = make_hub(models, tmp_path, device="cuda")  # the first one "killed": no checkpoint
    welcome = hub2.attach(register(hub2, 3, checksum), _drop, lambda reason: None)
    assert kinds(welcome) == ["welcome"]
    dev = hub2.devices["cam-1"]
    assert dev.session is not None
    assert next(dev.session.model.parameters()).is_cuda
    assert model_checksum(parameter_vector(dev.session.model)) == checksum
    hub2.stop()
    hub.stop()
    hub3 = make_hub(models, tmp_path, device="cuda")
    assert kinds(hub3.attach(register(hub3, 3, checksum), _drop, lambda r: None)) == ["welcome"]
    assert hub3.devices["cam-1"].session is not None
    hub3.stop()


def test_a_downlink_budget_sets_the_update_fraction_and_holds_phases(
    models: Models, tmp_path: Path
) -> None:
    from edgeadapt.adapt.update import decode_update

    hub = make_hub(models, tmp_path, start=False)
    r = register(hub)
    r.link.downlink_kbps = 0.1  # about 10 bytes a second: nothing refills during the test
    sent: list[pb.TrainerMessage] = []
    hub.attach(r, sent.append, lambda reason: None)
    dev = hub.devices["cam-1"]
    planner = dev.planner
    assert planner is not None
    assert planner.down is not None
    n, gamma = hub.spec.num_params, hub.config.ams.gamma
    planner.down.capacity = planner.down.tokens = 0.5 * gamma * n * planner.bytes_per_coord
    hub.start()
    submit(hub, "cam-1", batch(1, 100.0))
    wait(updates_sent(sent, 1))
    update = next(m.update for m in sent if m.WhichOneof("body") == "update")
    coords = len(decode_update(update_bytes(update), n).indices)
    assert coords == pytest.approx(0.5 * gamma * n, rel=0.01)
    link = hub.status()["devices"][0]["link"]
    assert link["downlink_budget_kbps"] == 0.1
    assert "update-fraction" in link["limited"]
    assert link["last_update_fraction"] == pytest.approx(0.5 * gamma, rel=0.01)
    assert any("update fraction" in m for m in link["limits"])
    # The writer charges what it sends; with the bucket spent the next phase waits.
    hub.count_bytes("cam-1", down=int(planner.down.tokens) + 1)
    submit(hub, "cam-1", batch(2, 110.0))
    wait(lambda: sum(1 for m in sent if m.WhichOneof("body") == "batch_ack") == 2)
    assert kinds(sent).count("update") == 1
    assert hub.metrics.phases_held._value.get() == 1
    assert hub.status()["devices"][0]["link"]["held_phases"] == 1
    hub.stop()


def test_an_uplink_budget_lowers_the_sampling_rate_it_asks_for(
    models: Models, tmp_path: Path
) -> None:
    hub = make_hub(models, tmp_path)
    r = register(hub)
    r.link.uplink_kbps = 8.0  # 1000 bytes a second
    sent: list[pb.TrainerMessage] = []
    hub.attach(r, sent.append, lambda reason: None)
    hub.count_bytes("cam-1", up=60_000, frames=3)  # 20 kB a frame: far beyond the budget
    submit(hub, "cam-1", batch(1, 100.0))
    wait(lambda: "settings" in kinds(sent))
    settings = [m.settings for m in sent if m.WhichOneof("body") == "settings"][-1]
    assert settings.sampling_rate_fps < hub.config.ams.r_init
    assert settings.sampling_rate_fps * 20_000 <= 1000
    link = hub.status()["devices"][0]["link"]
    assert link["limited"] == ["sampling-rate"]
    assert any("sampling rate" in m for m in link["limits"])
    hub.stop()


def test_a_device_without_a_budget_has_no_link_view(models: Models, tmp_path: Path) -> None:
    hub = make_hub(models, tmp_path, start=False)
    hub.attach(register(hub), lambda m: None, lambda reason: None)
    assert hub.devices["cam-1"].planner is None
    assert hub.status()["devices"][0]["link"] is None


def test_housekeeping_tells_a_budgeted_device_when_it_may_speed_up(
    models: Models, tmp_path: Path
) -> None:
    hub = make_hub(models, tmp_path, start=False)
    r = register(hub)
    r.link.uplink_kbps = 8.0
    sent: list[pb.TrainerMessage] = []
    hub.attach(r, sent.append, lambda reason: None)
    dev = hub.devices["cam-1"]
    assert dev.planner is not None
    assert dev.planner.up is not None
    hub.count_bytes("cam-1", up=200_000, frames=50)  # 4 kB a frame, far beyond the budget
    slow = hub._settings(dev)
    dev.settings = slow
    # Time passes and the debt is paid: the next housekeeping sends the faster rate unasked.
    dev.planner.up.tokens = dev.planner.up.capacity
    hub._last_housekeeping = 0.0
    hub._housekeeping()
    settings = [m.settings for m in sent if m.WhichOneof("body") == "settings"]
    assert settings
    assert settings[-1].sampling_rate_fps > 1.5 * slow[0]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(
    ("policy", "device"),
    [
        ("micro-window", "cpu"),
        ("urgency", "cpu"),
        pytest.param("micro-window", "cuda", marks=[pytest.mark.gpu, CUDA]),
    ],
)
def test_a_scheduled_round_trains_every_waiting_device_within_its_budget(
    models: Models, tmp_path: Path, policy: str, device: str
) -> None:
    """On CUDA the slices are timed by CUDA events and the models stay on the GPU."""
    from edgeadapt.trainer.scheduler import SchedulerConfig

    scheduler = SchedulerConfig(policy, iterations=4, micro_window=0.05, round_cap=10.0)  # type: ignore[arg-type]
    hub = make_hub(models, tmp_path, start=False, device=device, scheduler=scheduler)
    sent = attach_all(hub, "cam-a", "cam-b")
    for seq in range(1, 4):  # 9 frames each: every 4th is held out for scoring slices
        submit(hub, "cam-a", batch(seq, 10.0 * seq))
        submit(hub, "cam-b", batch(10 + seq, 10.0 * seq))
    hub.start()
    wait(lambda: all("update" in kinds(m) for m in sent.values()))
    wait(lambda: hub.last_round is not None)
    last = hub.last_round
    assert last is not None
    assert last.policy == policy
    assert last.spent <= last.budget * 1.05 + 0.5  # one slice may overrun by its last step
    for name in ("cam-a", "cam-b"):
        dev = hub.devices[name]
        session = dev.session
        assert session is not None
        # What was sent is what the trainer holds (the phase was committed, not left open).
        assert dev.job is None
        assert dev.checksum == model_checksum(parameter_vector(session.model))
        assert len(dev.holdout) == 3  # 9 frames: the 1st, 5th and 9th are held out
        assert next(session.model.parameters()).device.type == device
        view = hub.status()["devices"][["cam-a", "cam-b"].index(name)]["scheduler"]
        assert view["slices"] >= 1
        assert view["compute_seconds"] > 0
    assert hub.status()["scheduler"]["policy"] == policy
    assert hub.metrics.rounds.labels(policy, last.ended)._value.get() >= 1
    # Two devices' 4 steps fit the 10 s round: nothing to choose, so the next frames are not
    # held out and the held ones go to training.
    assert hub.status()["scheduler"]["over_subscribed"] is False
    dev = hub.devices["cam-a"]
    session = dev.session
    assert session is not None
    horizon = len(session.buffer)
    submit(hub, "cam-a", batch(4, 40.0))
    wait(lambda: len(dev.holdout) == 0 and len(session.buffer) == horizon + 3 + 3)
    hub.stop()


def test_a_snapshot_served_while_a_phase_is_open_carries_the_committed_parameters(
    models: Models, tmp_path: Path
) -> None:
    from edgeadapt.trainer.jobs import PhaseJob

    hub = make_hub(models, tmp_path, start=False)
    attach_all(hub, "cam-a")
    dev = hub.devices["cam-a"]
    session = dev.session
    assert session is not None
    committed = parameter_vector(session.model).clone()
    session.ingest(batch(1, 10.0).images, torch.zeros(3, 64, 128, dtype=torch.uint8), [10, 11, 12])
    job = PhaseJob("cam-a", session, dev.lock, 12.0, 1.0, None, [], hub.num_classes, hub.device)
    dev.job = job
    job.train(iterations=2)  # the model moves; version 0 still means the committed parameters
    assert not torch.equal(parameter_vector(session.model), committed)
    (message,) = hub.resync("cam-a", pb.ResyncRequest(have_version=0, have_checksum=1))
    edge = EdgeModel(copy.deepcopy(models[1]))
    assert edge.apply(update_bytes(message.update), message.update.model_checksum)
    assert torch.equal(parameter_vector(edge.active), committed)


def test_other_processes_on_the_gpu_shrink_the_rounds(models: Models, tmp_path: Path) -> None:
    from edgeadapt.trainer.gpu import FakeBackend, GpuSample, GpuTelemetry, ProcessSample
    from edgeadapt.trainer.scheduler import SchedulerConfig

    busy = GpuSample("gpu", 90.0, 1 << 30, 8 << 30, processes=(ProcessSample(7, 75.0),))
    # A round may take 0.02 s of compute, a quarter of it while the other process runs.
    scheduler = SchedulerConfig("round-robin", iterations=2, round_cap=0.02)
    hub = make_hub(models, tmp_path, start=False, scheduler=scheduler)
    hub.telemetry = GpuTelemetry(FakeBackend([busy]), pid=1)
    sent = attach_all(hub, "cam-a")
    hub.start()
    wait(lambda: hub.share == pytest.approx(0.25))
    assert hub.status()["gpu"]["others_utilization"] == pytest.approx(0.75)
    for seq in (1, 2):  # the first round times the job; the second is held to the share
        submit(hub, "cam-a", batch(seq, 10.0 * seq))
        wait(lambda n=seq: kinds(sent["cam-a"]).count("update") == n)  # type: ignore[misc]
    last = hub.last_round
    assert last is not None
    assert last.budget == pytest.approx(0.005)
    assert [s.iterations for s in last.slices] == [1], "one step instead of K=2"
    hub.stop()
