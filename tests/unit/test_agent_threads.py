"""The edge agent's threads: callbacks never deadlock, failures are counted, never silent."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np
import pytest
import torch

from edgeadapt._proto.stream.v1 import stream_pb2 as pb
from edgeadapt.adapt.ams import EdgeModel
from edgeadapt.edge_agent import agent as agent_module
from edgeadapt.edge_agent.agent import Agent, AgentOptions
from edgeadapt.edge_agent.link import EncodedBatch, Link, LinkConfig, LinkEvents
from edgeadapt.models.zoo import SegmentationModel, build_student
from edgeadapt.stream.messages import register_message
from edgeadapt.video.codec import encode_h264
from edgeadapt.video.source import open_source


@pytest.fixture(scope="module")
def student() -> SegmentationModel:
    torch.manual_seed(0)
    return build_student(7, width_mult=0.5).eval()


def config(student: SegmentationModel, max_pending: int = 2) -> LinkConfig:
    return LinkConfig(
        target="127.0.0.1:1",
        device_id="cam-1",
        token="",
        credentials=None,
        register=register_message("cam-1", student),
        max_pending=max_pending,
    )


def batch(seq: int) -> EncodedBatch:
    return EncodedBatch(seq, b"x", [float(seq)], 128, 64, 0)


def test_a_full_offline_queue_does_not_deadlock_the_callbacks(student: SegmentationModel) -> None:
    class Events(LinkEvents):
        """Like the agent: the batch callback asks the link how much is pending."""

        def __init__(self) -> None:
            self.link: Link | None = None
            self.pending: list[int] = []

        def batch(self, result: str) -> None:
            assert self.link is not None
            self.pending.append(self.link.pending_count())

    events = Events()
    link = Link(config(student), EdgeModel(student), events)
    events.link = link

    def fill() -> None:
        for i in range(1, 6):
            link.enqueue(batch(i))

    worker = threading.Thread(target=fill)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "enqueue deadlocked once the queue was full"
    assert link.dropped == 3
    assert events.pending == [2, 2, 2]
    assert [b.seq for b in link.pending] == [4, 5]


def test_an_update_that_is_not_even_well_formed_is_rejected_not_fatal(
    student: SegmentationModel,
) -> None:
    events = LinkEvents()
    edge = EdgeModel(student)
    link = Link(config(student), edge, events)
    out: queue.Queue[object] = queue.Queue()
    bad = pb.ModelUpdate(version=1, base_version=0, num_params=10)
    bad.mask_encoding = -1  # type: ignore[assignment]  # whatever the wire carries
    link._apply(out, bad)
    sent = [
        m for m in (out.get_nowait() for _ in range(out.qsize())) if isinstance(m, pb.AgentMessage)
    ]
    assert [m.WhichOneof("body") for m in sent] == ["ack", "resync"]
    assert not sent[0].ack.applied
    assert "mask encoding" in sent[0].ack.reason
    assert edge.rejected == 1
    assert edge.version == 0


def test_an_encoder_failure_is_counted_and_the_encoder_goes_on(
    student: SegmentationModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = open_source("synthetic:seed=1,duration=5,fps=5")
    agent = Agent(AgentOptions("cam-1"), source, EdgeModel(student), config(student, 60))
    calls = {"n": 0}
    real = encode_h264

    def flaky(frames: list[np.ndarray], **kw: Any) -> bytes:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("libx264 fell over")
        return real(frames, **kw)

    monkeypatch.setattr(agent_module, "encode_h264", flaky)
    encoder = threading.Thread(target=agent._encode_loop, daemon=True)
    agent._encoder = encoder
    encoder.start()
    images = [np.zeros((64, 128, 3), np.uint8)] * 2
    for seq in (1, 2):
        agent._encode_q.put((seq, images, [1.0 * seq, 1.5 * seq], 0))
    deadline = time.monotonic() + 20
    while agent.link is not None and agent.link.pending_count() < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert encoder.is_alive()
    assert agent.healthy()
    status = agent.status()
    assert status["batches_dropped"] == 1
    assert status["thread_failures"] == 1
    assert "libx264 fell over" in status["last_failure"]
    agent._encode_q.put(None)
    encoder.join(5)
    assert not agent.healthy(), "a dead encoder fails the liveness check"


def test_a_batch_over_the_trainers_limits_is_split(student: SegmentationModel) -> None:
    source = open_source("synthetic:seed=1,duration=5,fps=5")
    agent = Agent(AgentOptions("cam-1"), source, EdgeModel(student), config(student, 60))
    agent.settings(pb.Settings(sampling_rate_fps=1, update_interval_s=10, max_batch_frames=4))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 128, 3), dtype=np.uint8) for _ in range(10)]
    chunks = agent._encode(images, [float(i) for i in range(10)])
    assert [len(times) for _, times, _ in chunks] == [4, 4, 2]
    one = len(chunks[0][0])
    agent.settings(pb.Settings(max_batch_frames=10, max_batch_bytes=one + 10))
    chunks = agent._encode(images, [float(i) for i in range(10)])
    assert all(len(data) <= one + 10 for data, _, _ in chunks)
    assert sum(len(times) for _, times, _ in chunks) == 10
    assert len(chunks) > 1


def test_concurrent_state_saves_never_collide(student: SegmentationModel, tmp_path: Any) -> None:
    from edgeadapt.edge_agent.agent import load_state

    source = open_source("synthetic:seed=1,duration=5,fps=5")
    edge = EdgeModel(student)
    agent = Agent(AgentOptions("cam-1", state_dir=tmp_path), source, edge, None)
    errors: list[BaseException] = []

    def save() -> None:
        for _ in range(10):
            try:
                agent.save_state()
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=save) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "no temporary file left"
    loaded = load_state(tmp_path, "cam-1", edge.num_params)
    assert loaded is not None
    assert loaded[0] == 0


def test_a_batch_is_counted_acknowledged_once(student: SegmentationModel) -> None:
    results: list[str] = []

    class Events(LinkEvents):
        def batch(self, result: str) -> None:
            results.append(result)

    link = Link(config(student, max_pending=2), EdgeModel(student), Events())
    for seq in (1, 2, 3):  # 1 is dropped by the full queue
        link.enqueue(batch(seq))
    out: queue.Queue[object] = queue.Queue()
    for seq in (2, 2, 1, 3):  # a resent batch answered twice; the dropped one answered late
        link._handle(out, pb.TrainerMessage(batch_ack=pb.BatchAck(seq=seq, frames=1)))
    assert results == ["dropped", "acked", "acked"]
    assert link.pending_count() == 0


def test_the_reported_rate_falls_when_inference_stops(student: SegmentationModel) -> None:
    source = open_source("synthetic:seed=1,duration=2,fps=10")
    agent = Agent(AgentOptions("cam-1"), source, EdgeModel(student), None)
    summary = agent.run()
    assert summary["frames_inferred"] >= 19
    assert agent.fps_5s() > 3.0  # 20 frames over the 2 s that just ended
    # As if the loop had started a minute ago and its last frames were inferred 30 s ago.
    agent._loop_started_pc = time.perf_counter() - 60
    with agent._lock:
        agent.counters.window.clear()
        agent.counters.window.extend([time.perf_counter() - 30] * 5)
    assert agent.fps_5s() == 0.0
