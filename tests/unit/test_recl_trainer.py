"""The trainer's RECL side without gRPC: windows, the safety check, switches, the expert cache."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeadapt._proto.stream.v1 import stream_pb2 as pb
from edgeadapt.adapt.ams import AMSConfig, EdgeModel
from edgeadapt.adapt.update import model_checksum, parameter_vector
from edgeadapt.edge_agent.experts import ExpertCache
from edgeadapt.models.zoo import SegmentationModel, build_student, build_teacher
from edgeadapt.recl.rules import Verdict
from edgeadapt.stream.messages import update_bytes
from edgeadapt.trainer import hub as hub_module
from edgeadapt.trainer.device import Batch
from edgeadapt.trainer.hub import Hub, HubConfig
from edgeadapt.trainer.recl import (
    SCENE_DROP,
    SCENE_HISTORY,
    Choice,
    DeviceRecl,
    GatingError,
    ReclConfig,
    Window,
    continued,
    scene_change,
    top_change,
)
from edgeadapt.trainer.scheduler import SchedulerConfig
from edgeadapt.trainer.store import DeviceStore

Models = tuple[SegmentationModel, SegmentationModel]


@pytest.fixture(scope="module")
def models() -> Models:
    torch.manual_seed(0)
    return build_teacher(7).eval(), build_student(7, width_mult=0.5).eval()


class FakeGating:
    """The gating client's interface, answering from memory (the real one: test_recl_fleet.py)."""

    def __init__(self, experts: dict[str, torch.Tensor], fail: bool = False) -> None:
        self.experts = experts
        self.fail = fail
        self.selects: list[int] = []
        self.records: list[list[str]] = []
        self.admits: list[str] = []

    def zoo_params(self) -> tuple[int, float]:
        if self.fail:
            raise GatingError("UNAVAILABLE: connection refused")
        return 3, 0.02

    def select(self, images: np.ndarray, k: int) -> tuple[int, list[Choice]]:
        self.selects.append(len(images))
        return 1, [Choice(e, 0.5, f"sha-{e}", "cam-x") for e in list(self.experts)[:k]]

    def expert(self, choice: Choice, arch: str, template: Any) -> torch.Tensor:
        return self.experts[choice.id]

    def record(self, picks: list[str]) -> None:
        self.records.append(list(picks))

    def admit(self, candidate_id: str, *args: Any) -> pb.AgentMessage:
        self.admits.append(candidate_id)
        return pb.AgentMessage()


def make_hub(
    models: Models,
    store: Path,
    gating: FakeGating,
    strategy: str = "recl",
    scheduler: SchedulerConfig | None = None,
    window_s: float = 4.0,
    scene_drop: float = 0.0,  # random frames: off, unless a test scores them itself
    switch_margin: float = ReclConfig.switch_margin,
) -> Hub:
    teacher, student = (copy.deepcopy(m) for m in models)
    cfg = HubConfig(
        ams=AMSConfig(iterations=2, batch_size=2, t_update=2.0),
        resync_interval=0.0,
        recl=ReclConfig(
            strategy,
            window_s=window_s,
            iterations=2,
            batch_size=2,
            scene_drop=scene_drop,
            switch_margin=switch_margin,
        ),
        scheduler=scheduler,
    )
    return Hub(
        teacher,
        student,
        cfg,
        DeviceStore(store),
        torch.device("cpu"),
        trainer_id="tr-0",
        gating=gating,  # type: ignore[arg-type]
    )


def register(hub: Hub, cached: dict[str, int] | None = None, size: int = 2) -> pb.Register:
    message = pb.Register(
        device_id="cam-1",
        task=pb.TASK_SEMANTIC_SEGMENTATION,
        model=hub.spec,
        model_version=0,
        model_checksum=hub.base_checksum,
        adapt=True,
        expert_cache_size=size,
    )
    for expert_id, checksum in (cached or {}).items():
        message.cached_experts.add(id=expert_id, model_checksum=checksum)
    return message


def perturbed(model: SegmentationModel, seed: int) -> torch.Tensor:
    flat = parameter_vector(model).detach().clone()
    g = torch.Generator().manual_seed(seed)
    return flat + 0.05 * torch.randn(flat.shape, generator=g)


@contextlib.contextmanager
def serving(hub: Hub) -> Iterator[list[pb.TrainerMessage]]:
    """The hub running with cam-1 attached; yields what it sent the device."""
    hub.start()
    try:
        sent: list[pb.TrainerMessage] = []
        hub.attach(register(hub), sent.append, lambda reason: None)
        yield sent
    finally:
        hub.stop()


def wait(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_switch_is_an_update_once_and_a_message_when_the_agent_caches_the_expert(
    models: Models, tmp_path: Path
) -> None:
    expert = perturbed(models[1], 1)
    hub = make_hub(models, tmp_path, FakeGating({"zoo-x": expert}))
    sent: list[pb.TrainerMessage] = []
    hub.attach(register(hub), sent.append, lambda reason: None)
    dev = hub.devices["cam-1"]
    edge = EdgeModel(models[1])
    cache = ExpertCache(2, edge.num_params, tmp_path / "agent-experts")

    def deliver(message: pb.TrainerMessage | None) -> bool:
        assert message is not None
        if message.WhichOneof("body") == "switch_expert":
            s = message.switch_expert
            params = cache.get(s.expert_id, s.model_checksum)
            assert params is not None, "the trainer switched to an expert the agent lacks"
            return edge.switch(params, s.version, s.base_version, s.model_checksum)
        u = message.update
        ok = edge.apply(update_bytes(u), expected_checksum=u.model_checksum)
        if ok and u.expert_id:
            cache.put(u.expert_id, parameter_vector(edge.active))
        return ok

    with dev.lock:
        first = hub._deploy(dev, expert, "zoo-x")
    assert first is not None
    assert first.WhichOneof("body") == "update"
    assert first.update.expert_id == "zoo-x"
    assert first.update.value_type == pb.VALUE_FLOAT16, "experts travel as float16"
    assert deliver(first)
    assert edge.checksum() == dev.checksum, "the agent runs exactly the trainer's copy"
    assert edge.version == dev.version == 1

    other = perturbed(models[1], 2)
    with dev.lock:
        away = hub._deploy(dev, other, "")
    assert away is not None
    assert away.update.expert_id == ""
    assert deliver(away)

    with dev.lock:
        back = hub._deploy(dev, expert, "zoo-x")
    assert back is not None
    assert back.WhichOneof("body") == "switch_expert", back
    assert back.ByteSize() < 100, "a switch to a cached expert costs a message, not a model"
    assert deliver(back)
    assert edge.checksum() == dev.checksum
    assert edge.version == dev.version == 3
    assert dev.recl is not None
    assert dev.recl.switches_cached == 1

    # An agent that lost the expert rejects the switch: the trainer forgets that it had it, and
    # the resync that follows serves the same model from the update log.
    stale = EdgeModel(models[1])
    for m in (first, away):
        assert stale.apply(update_bytes(m.update), expected_checksum=m.update.model_checksum)
    hub.ack("cam-1", pb.UpdateAck(version=2, applied=False, reason="not cached"))
    assert "zoo-x" not in dev.recl.cached
    replay = hub.resync("cam-1", pb.ResyncRequest(have_version=2, have_checksum=stale.checksum()))
    assert [m.update.version for m in replay] == [3]
    assert stale.apply(update_bytes(replay[0].update), replay[0].update.model_checksum)
    assert stale.checksum() == dev.checksum


def test_a_switch_names_the_checksum_the_agent_reported_for_its_cache(
    models: Models, tmp_path: Path
) -> None:
    expert = perturbed(models[1], 3)
    canonical = expert.half().float()
    hub = make_hub(models, tmp_path, FakeGating({"zoo-y": expert}))
    sent: list[pb.TrainerMessage] = []
    # The agent restarted with the expert already in its cache (Register.cached_experts).
    hub.attach(register(hub, {"zoo-y": model_checksum(canonical)}), sent.append, print)
    dev = hub.devices["cam-1"]
    with dev.lock:
        message = hub._deploy(dev, expert, "zoo-y")
    assert message is not None
    assert message.WhichOneof("body") == "switch_expert"
    # A cache entry with another checksum is a different model: the weights are sent.
    hub2 = make_hub(models, tmp_path / "2", FakeGating({"zoo-y": expert}))
    hub2.attach(register(hub2, {"zoo-y": 1234}), sent.append, print)
    dev2 = hub2.devices["cam-1"]
    with dev2.lock:
        message2 = hub2._deploy(dev2, expert, "zoo-y")
    assert message2 is not None
    assert message2.WhichOneof("body") == "update"


def frames(seq: int, t0: float, n: int = 5) -> Batch:
    rng = np.random.default_rng(seq)
    images = rng.integers(0, 255, (n, 64, 128, 3), dtype=np.uint8)
    return Batch(seq, images, [t0 + 0.5 * i for i in range(n)])


@pytest.mark.parametrize("strategy", ["recl", "ams+recl"])
def test_a_window_ends_with_the_safety_checkers_pick(
    models: Models, tmp_path: Path, strategy: str
) -> None:
    experts = {"zoo-a": perturbed(models[1], 4), "zoo-b": parameter_vector(models[1]).clone()}
    gating = FakeGating(experts)
    hub = make_hub(models, tmp_path, gating, strategy)
    hub.start()
    try:
        sent: list[pb.TrainerMessage] = []
        hub.attach(register(hub), sent.append, lambda reason: None)
        t0 = 1000.0
        for seq in range(4):  # 2.5 s of frames each: a window of 4 s ends with the second
            assert hub.try_submit("cam-1", frames(seq, t0 + 2.5 * seq))
            wait(lambda s=seq: sum(m.WhichOneof("body") == "batch_ack" for m in sent) > s)  # type: ignore[misc]
        dev = hub.devices["cam-1"]
        state = dev.recl
        assert state is not None
        wait(lambda: state.windows >= 1)
        assert gating.selects, "the window's frames went to the gating service"
        assert len(gating.records) == state.windows, "one pick recorded per window"
        scores = state.history[0]
        last = dict(state.last_scores)
        assert {"current", "expert:zoo-a", "expert:zoo-b"} <= set(last)
        # The winner scored best on the held-out frames, an expert only by the margin over the
        # device's own models.
        own = max(v for k, v in last.items() if not k.startswith("expert:"))
        expert = max(v for k, v in last.items() if k.startswith("expert:"))
        if state.last_pick.startswith("expert:"):
            assert last[state.last_pick] == expert >= own + ReclConfig.switch_margin
        else:
            assert last[state.last_pick] == own
            assert expert < own + ReclConfig.switch_margin
        if state.history[-1]["winner"].startswith("expert:"):
            switched = [m for m in sent if m.WhichOneof("body") == "update" and m.update.expert_id]
            assert switched, "a switch to an expert is sent to the agent"
        assert scores["window"] == 0
    finally:
        hub.stop()


@pytest.mark.parametrize(
    ("margin", "lead", "switched"), [(0.0, 0.01, True), (0.02, 0.01, False), (0.02, 0.03, True)]
)
def test_an_expert_replaces_the_devices_own_models_only_by_the_switching_margin(
    models: Models, tmp_path: Path, margin: float, lead: float, switched: bool
) -> None:
    expert = perturbed(models[1], 4)
    hub = make_hub(models, tmp_path, FakeGating({"zoo-a": expert}), switch_margin=margin)

    def score(flat: torch.Tensor, images: np.ndarray, labels: torch.Tensor) -> float:
        return 0.5 + lead if torch.equal(flat, expert) else 0.5

    hub._miou_of = score  # type: ignore[method-assign]
    hub.start()
    try:
        sent: list[pb.TrainerMessage] = []
        hub.attach(register(hub), sent.append, lambda reason: None)
        for seq in range(2):  # the first window ends with the second batch
            assert hub.try_submit("cam-1", frames(seq, 6000.0 + 2.5 * seq))
        state = hub.devices["cam-1"].recl
        assert state is not None
        wait(lambda: state.windows >= 1)
        assert state.last_scores["expert:zoo-a"] == pytest.approx(0.5 + lead)
        assert (state.last_pick == "expert:zoo-a") is switched
        assert state.switches == int(switched)
        # /status says what the margin is and that it held the expert back.
        view = state.view()
        assert view["switch_margin_points"] == pytest.approx(100 * margin)
        held = None if switched else "expert:zoo-a"
        assert view["recent_windows"][-1]["held_by_margin"] == held
        assert view["margin_holds"] == int(not switched)
        if switched:  # the expert goes out after the window's bookkeeping
            wait(lambda: any(m.WhichOneof("body") == "update" and m.update.expert_id for m in sent))
    finally:
        hub.stop()


@pytest.mark.parametrize(("strategy", "horizon"), [("recl", 4.0), ("ams+recl", 2.0)])
def test_a_switch_may_take_the_link_until_the_next_window_or_under_ams_recl_the_next_update(
    models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str, horizon: float
) -> None:
    # One that filled a window's link would hold AMS's updates (every 2 s here) for a window (4 s).
    hub = make_hub(models, tmp_path, FakeGating({"zoo-a": perturbed(models[1], 4)}), strategy)
    monkeypatch.setattr(
        hub_module,
        "safety_check",
        lambda scores, **kw: Verdict("expert:zoo-a", dict(scores), promising=False),
    )
    horizons: list[float] = []
    deploy = hub._deploy

    def spy(dev: Any, flat: torch.Tensor, expert: str, horizon_s: float, *more: Any) -> Any:
        horizons.append(horizon_s)
        return deploy(dev, flat, expert, horizon_s, *more)

    hub._deploy = spy  # type: ignore[method-assign,assignment]
    with serving(hub):
        for seq in range(2):  # the first window ends with the second batch
            assert hub.try_submit("cam-1", frames(seq, 5000.0 + 2.5 * seq))
        state = hub.devices["cam-1"].recl
        assert state is not None
        wait(lambda: state.windows >= 1)
        assert horizons[0] == horizon


@pytest.mark.parametrize("strategy", ["recl", "ams+recl"])
def test_candidates_are_scored_on_the_frames_none_of_them_trained_on(
    models: Models, tmp_path: Path, strategy: str
) -> None:
    hub = make_hub(models, tmp_path, FakeGating({"zoo-a": perturbed(models[1], 4)}), strategy)
    sizes: list[int] = []
    score = hub._miou_of

    def spy(flat: torch.Tensor, images: np.ndarray, labels: torch.Tensor) -> float:
        sizes.append(len(images))
        return score(flat, images, labels)

    hub._miou_of = spy  # type: ignore[method-assign]
    with serving(hub):
        for seq in range(2):  # 10 frames: the first window ends with the second batch
            assert hub.try_submit("cam-1", frames(seq, 4000.0 + 2.5 * seq))
        dev = hub.devices["cam-1"]
        state, session = dev.recl, dev.session
        assert state is not None
        assert session is not None
        wait(lambda: state.windows >= 1)
        # No candidate trained on the window (the job's frames end where it begins), so all 10.
        assert sizes, "the candidates were scored"
        assert set(sizes) == {10}
        with dev.lock:
            # The job that started at the window's end never sees the held-out frames; its
            # slices are scored on them.
            assert len(session.buffer) == 8
            assert state.job is not None
            assert state.job_holdout is not None
            assert len(state.job[0]) == 8
            assert len(state.job_holdout[0]) == 2


@pytest.mark.parametrize("strategy", ["recl", "ams+recl"])
def test_under_ams_recl_the_jobs_progress_streams_within_the_window(
    models: Models, tmp_path: Path, strategy: str
) -> None:
    # Windows of 4 s, AMS's updates every 2 s: window 1's job has run by 3 s into it, when
    # ams+recl sends what it learned so far as a sparse update; recl sends nothing.
    hub = make_hub(models, tmp_path, FakeGating({}), strategy)
    streamed: list[torch.Tensor] = []  # what the job had learned when its progress went out
    job_model = hub._job_model

    def record(state: DeviceRecl) -> torch.Tensor:
        streamed.append(model := job_model(state))
        return model

    hub._job_model = record  # type: ignore[method-assign]
    with serving(hub) as sent:
        dev = hub.devices["cam-1"]
        state, session = dev.recl, dev.session
        assert state is not None
        assert session is not None

        def acks() -> int:
            return sum(m.WhichOneof("body") == "batch_ack" for m in sent)

        t0 = 7000.0
        for seq in range(2):  # window 0 ends with the second batch; no job ran in it
            assert hub.try_submit("cam-1", frames(seq, t0 + 2.5 * seq))
            wait(lambda s=seq: acks() > s)  # type: ignore[misc]
        wait(lambda: state.windows == 1)
        assert state.streamed == 0, "window 0 had no job to stream"
        assert hub.try_submit("cam-1", frames(2, t0 + 5.0, n=2))  # window 1 begins; its job runs
        wait(lambda: state.job_steps > 0)
        before = len(sent)
        version = session.version
        streamed.clear()
        assert hub.try_submit("cam-1", frames(3, t0 + 6.0))  # 3 s into window 1
        wait(lambda: acks() == 4)
        with dev.lock:
            assert state.windows == 1, "window 1 has not ended"
            updates = [m for m in sent[before:] if m.WhichOneof("body") == "update"]
            if strategy == "recl":
                assert not updates, "recl sends nothing between window ends"
                assert state.streamed == 0
                assert session.version == version
                return
            assert len(updates) == 1
            assert updates[0].update.expert_id == "", "the job's progress, not an expert"
            assert state.streamed == 1
            assert state.switches == 0, "a streamed update is not a switch"
            assert session.version == version + 1
            # The device now runs the job's model as it travelled (float16).
            assert len(streamed) == 1
            expected = streamed[0].half().float()
            assert torch.equal(session.optimizer.flat_params().detach().cpu(), expected)
            assert state.view()["streamed_updates"] == 1


def test_strategy_recl_retraining_jobs_run_in_the_schedulers_rounds(
    models: Models, tmp_path: Path
) -> None:
    scheduler = SchedulerConfig("micro-window", iterations=4, micro_window=0.05, round_cap=5.0)
    hub = make_hub(models, tmp_path, FakeGating({}), "recl", scheduler)
    assert hub.scheduler.config.iterations == 2  # RECL's steps per batch, not AMS's K
    job_models: list[tuple[torch.Tensor, torch.Tensor]] = []  # (where the job began, candidate)
    job_model = hub._job_model

    def record(state: DeviceRecl) -> torch.Tensor:
        assert state.job_start is not None
        job_models.append((state.job_start.clone(), model := job_model(state)))
        return model

    hub._job_model = record  # type: ignore[method-assign]
    hub.start()
    try:
        sent: list[pb.TrainerMessage] = []
        hub.attach(register(hub), sent.append, lambda reason: None)
        dev = hub.devices["cam-1"]
        state = dev.recl
        assert state is not None
        for seq in range(6):  # the first window ends with the second batch; its job then runs
            assert hub.try_submit("cam-1", frames(seq, 3000.0 + 2.5 * seq))
            wait(lambda s=seq: sum(m.WhichOneof("body") == "batch_ack" for m in sent) > s)  # type: ignore[misc]
        wait(lambda: state.windows >= 2)
        last = hub.last_round
        assert last is not None
        assert last.policy == "micro-window"
        assert last.trained == ["cam-1"]
        assert all(s.gain is not None for s in last.slices), "slices scored on held-out frames"
        assert state.job_holdout is not None
        # The job trains on the AMS horizon: earlier windows' training frames too, not only the
        # 8 of the window that just ended.
        assert state.job is not None
        assert len(state.job[0]) > 8
        assert (hub.scheduler.job_view("cam-1")["slices"] or 0) >= 1
        # The retrained model was a candidate at the second window's end.
        assert "retrained" in state.last_scores
        # ... as the top gamma fraction of what the job changed, as AMS's updates are.
        assert job_models
        for start, model in job_models:
            moved = int((model != start).sum())
            assert 0 < moved <= max(1, int(hub.config.ams.gamma * start.numel()))
        assert dev.job is None, "the device's own model is not what RECL's job trains"
    finally:
        hub.stop()


@pytest.mark.parametrize("expert_wins", [False, True])
def test_a_retraining_job_goes_on_with_the_last_jobs_adam_state_unless_an_expert_won(
    models: Models, tmp_path: Path, expert_wins: bool
) -> None:
    expert = perturbed(models[1], 4)
    hub = make_hub(models, tmp_path, FakeGating({"zoo-a": expert}))

    def score(flat: torch.Tensor, images: np.ndarray, labels: torch.Tensor) -> float:
        state = hub.devices["cam-1"].recl
        assert state is not None
        if torch.equal(flat, expert):  # behind at the first window's end; then by 10 points
            return 0.6 if expert_wins and state.windows >= 1 else 0.4
        return 0.5

    started: list[tuple[bool, int]] = []  # per job: went on with moments, Adam states after
    start_job = hub._start_job

    def record(dev: Any, recl: ReclConfig, holdout: Any, moments: Any = None) -> None:
        start_job(dev, recl, holdout, moments)
        assert dev.recl.optimizer is not None
        started.append((moments is not None, len(dev.recl.optimizer.state)))

    hub._miou_of = score  # type: ignore[method-assign]
    hub._start_job = record  # type: ignore[method-assign]
    hub.start()
    try:
        sent: list[pb.TrainerMessage] = []
        hub.attach(register(hub), sent.append, lambda reason: None)
        state = hub.devices["cam-1"].recl
        assert state is not None
        first_end = None
        for seq in range(8):
            assert hub.try_submit("cam-1", frames(seq, 8000.0 + 2.5 * seq))
            wait(lambda s=seq: sum(m.WhichOneof("body") == "batch_ack" for m in sent) > s)  # type: ignore[misc]
            if state.windows == 1 and first_end is None:
                first_end = seq
            elif state.windows == 1:  # the first job trains on new frames before the next end
                wait(lambda: state.job_steps > 0)
            if state.windows >= 2:
                break
        assert state.windows >= 2
        assert started[0] == (False, 0), "the first job starts afresh"
        # The device's own line is the model it runs (which wins ties) or the retrained one.
        winners = {"expert:zoo-a"} if expert_wins else {"current", "retrained"}
        assert state.history[1]["winner"] in winners
        if expert_wins:  # a new line: afresh, as AMS resets its moments after a switch
            assert started[1] == (False, 0)
        else:  # the device kept its own line: the job goes on with the last one's moments
            assert started[1][0]
            assert started[1][1] > 0, "the new job's Adam holds the last one's moments"
    finally:
        hub.stop()


def test_continued_copies_the_state_only_for_the_devices_own_line() -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    assert continued(None, True) is None
    assert continued(optimizer, False) is None
    moments = continued(optimizer, True)
    assert moments is not None
    saved = moments["state"][0]["exp_avg"].clone()
    optimizer.step()  # the old job goes on (or is dropped): the copy does not change with it
    assert torch.equal(moments["state"][0]["exp_avg"], saved)
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    fresh.load_state_dict(moments)
    assert int(fresh.state_dict()["state"][0]["step"]) == 1


def test_without_the_gating_service_a_window_ends_without_reuse(
    models: Models, tmp_path: Path
) -> None:
    gating = FakeGating({}, fail=True)
    hub = make_hub(models, tmp_path, gating)
    hub.start()
    try:
        sent: list[pb.TrainerMessage] = []
        hub.attach(register(hub), sent.append, lambda reason: None)
        for seq in range(3):
            assert hub.try_submit("cam-1", frames(seq, 2000.0 + 2.5 * seq))
        dev = hub.devices["cam-1"]
        assert dev.recl is not None
        wait(lambda: dev.recl is not None and dev.recl.windows >= 1)
        assert dev.recl.gating_errors >= 1
        assert not gating.records
        assert set(dev.recl.last_scores) <= {"current", "retrained"}
    finally:
        hub.stop()


def test_top_change_keeps_the_coordinates_that_moved_most() -> None:
    start = torch.zeros(10)
    after = torch.tensor([0.1, -0.9, 0.3, 0.0, 0.5, 0.2, -0.4, 0.05, 0.0, 0.6])
    kept = top_change(start, after, 0.3)
    assert torch.equal(kept, torch.tensor([0, -0.9, 0, 0, 0.5, 0, 0, 0, 0, 0.6]))
    assert torch.equal(start, torch.zeros(10)), "the start is not changed"
    assert int((top_change(start, after, 0.01) != 0).sum()) == 1  # at least one coordinate
    assert torch.equal(top_change(start, after, 1.0), after)
    for fraction in (0.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            top_change(start, after, fraction)
    with pytest.raises(ValueError, match="coordinates"):
        top_change(start, torch.zeros(3), 0.5)


def test_every_fifth_frame_of_a_window_is_held_out() -> None:
    window = Window()
    images = np.zeros((12, 4, 4, 3), np.uint8)
    labels = torch.zeros(12, 4, 4, dtype=torch.uint8)
    train = window.add(images[:7], labels[:7], [float(i) for i in range(7)])
    train += [i + 7 for i in window.add(images[7:], labels[7:], [float(i) for i in range(7, 12)])]
    assert window.holdout == [4, 9]
    assert train == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11]
    assert not window.due(3.0, 4.0)
    assert window.due(11.0, 4.0)
    assert window.next().index == 1


def test_on_a_budgeted_downlink_a_switch_carries_the_largest_changes_that_fit(
    models: Models, tmp_path: Path
) -> None:
    expert = perturbed(models[1], 5)
    hub = make_hub(models, tmp_path, FakeGating({"zoo-z": expert}))
    message = register(hub)
    message.link.downlink_kbps = 50.0  # about 160 KB over a 30 s window
    hub.attach(message, lambda m: None, lambda reason: None)
    dev = hub.devices["cam-1"]
    assert dev.planner is not None
    room = hub._switch_room(dev, 30.0)
    assert room is not None
    assert 0 < room < hub.spec.num_params, "the whole expert does not fit one window"
    before = parameter_vector(dev.session.model).detach().clone()  # type: ignore[union-attr]
    with dev.lock:
        switch = hub._deploy(dev, expert, "zoo-z", 30.0)
    assert switch is not None
    update = switch.update
    assert update.expert_id == "", "part of the way is not the expert"
    assert dev.recl is not None
    assert dev.recl.partial_switches == 1
    assert "zoo-z" not in dev.recl.cached
    edge = EdgeModel(models[1])
    assert edge.apply(update_bytes(update), expected_checksum=update.model_checksum)
    assert edge.checksum() == dev.checksum
    moved = (parameter_vector(edge.active) != before).sum().item()
    assert 0 < moved <= room * 1.01, "the bucket refills a little between the two looks"
    # The coordinates it moved are the ones that change most.
    delta = (expert.half().float() - before).abs()
    changed = parameter_vector(edge.active) != before
    assert delta[changed].min() >= delta[~changed].max() - 1e-3
    # With the link's room spent, the next switch waits rather than trickle.
    dev.planner.down.take(10 * dev.planner.down.rate * 30, time.monotonic())  # type: ignore[union-attr]
    with dev.lock:
        assert hub._deploy(dev, perturbed(models[1], 6), "", 30.0) is None
    assert dev.recl.switches_held == 1


NAN = float("nan")


@pytest.mark.parametrize(
    ("record", "fell"),
    [
        ([0.8] * 5 + [0.65] * 3, 3),  # 15 points down on the last 3 frames
        ([0.8] * 5 + [0.72] * 3, 0),  # 8 points: noise
        ([0.8] * 2 + [0.4] * 3, 0),  # too little baseline to judge
        ([0.8] * 5 + [0.4] * 2, 2),  # two of the last three fell: it began two frames ago
        ([0.8] * 5 + [0.4, 0.8, 0.8], 0),  # one bad frame is not a change
        ([0.8] * 5 + [0.4, NAN, 0.4], 0),  # an unscored frame: wait for a third
        ([0.8, NAN, 0.8, 0.8, 0.4, 0.4, 0.4], 3),  # the baseline skips unscored frames
        # against the frames kept (the last SCENE_HISTORY), not a model's long-gone past
        ([0.95] * 100 + [0.6] * (SCENE_HISTORY - 3) + [0.52] * 3, 0),
        ([0.4] * 3 + [0.8] * 5, 0),  # a rise is not a change
    ],
)
def test_a_fall_in_the_running_models_accuracy_is_a_scene_change(
    record: list[float], fell: int
) -> None:
    assert scene_change(record) == fell
    assert scene_change(record, 0.0) == 0, "0 turns it off"
    assert scene_change([0.8] * 5 + [0.8 - SCENE_DROP - 0.01] * 3) == 3


def test_a_scene_change_switches_the_device_at_once_on_the_frames_since_it(
    models: Models, tmp_path: Path
) -> None:
    experts = {"zoo-a": perturbed(models[1], 4), "zoo-b": perturbed(models[1], 5)}
    gating = FakeGating(experts)
    hub = make_hub(models, tmp_path, gating, window_s=20.0, scene_drop=SCENE_DROP)
    # The device's model scores 0.8 on every frame until the fifth of the second batch's
    # frames, then 0.4; zoo-a is best on the frames after the change.
    accuracy = {0: [0.8] * 5, 1: [0.8, 0.8, 0.4, 0.4, 0.4], 2: [0.4] * 5}
    batch_no = iter(range(3))

    def score(dev: Any, images: np.ndarray, labels: torch.Tensor) -> tuple[list[float], float]:
        return accuracy[next(batch_no)], 0.5 * len(images)

    sizes: list[int] = []

    def miou_of(flat: torch.Tensor, images: np.ndarray, labels: torch.Tensor) -> float:
        sizes.append(len(images))
        return 0.9 if torch.equal(flat, experts["zoo-a"]) else 0.3

    hub._score = score  # type: ignore[method-assign]
    hub._miou_of = miou_of  # type: ignore[method-assign]
    hub.start()
    try:
        sent: list[pb.TrainerMessage] = []
        hub.attach(register(hub), sent.append, lambda reason: None)
        dev = hub.devices["cam-1"]
        state = dev.recl
        assert state is not None
        for seq in range(3):  # 7.5 s of a 20 s window
            assert hub.try_submit("cam-1", frames(seq, 5000.0 + 2.5 * seq))
            wait(lambda s=seq: sum(m.WhichOneof("body") == "batch_ack" for m in sent) > s)  # type: ignore[misc]
        assert state.windows == 0, "the window has not ended"
        assert state.scene_changes == 1, "one change: the record restarts with the new model"
        assert gating.selects == [3], "Select saw the 3 frames since the change"
        assert set(sizes) == {3}, "and the candidates were scored on them"
        assert state.last_pick == "expert:zoo-a"
        assert state.expert == "zoo-a"
        assert gating.records == [["zoo-a"]], "the pick counts for pruning"
        switched = [m for m in sent if m.WhichOneof("body") == "update" and m.update.expert_id]
        assert [m.update.expert_id for m in switched] == ["zoo-a"]
        assert state.window.since == 7
        assert state.accuracy == [0.4] * 5, "the new model's own record"
        # The retraining job restarted from the new model on the horizon as it was then: the
        # 8 training frames of the first two batches (the window's first job had none), scored
        # on the held-out frame since the change.
        with dev.lock:
            assert state.job is not None
            assert state.job_holdout is not None
            assert len(state.job[0]) == 8
            assert len(state.job_holdout[0]) == 1
        event = state.history[-1]
        assert event["event"] == "scene change"
        assert event["end"] == pytest.approx(5000.0 + 2.5 + 2.0), "at the second batch's end"
        # The window's end selects on the frames since the change, not the whole window.
        with dev.lock:
            selected, _ = state.window.recent(32)
        assert len(selected) == 15 - 7
    finally:
        hub.stop()
