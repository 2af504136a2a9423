"""The edge agent: real-time inference on a video source, sampling for the trainer, model swaps.

Three threads:

- the inference loop (the caller's thread) reads frames at the source's rate, runs the active
  student on every frame, and offers each frame to the sampler;
- the encoder turns each sealed batch (the frames sampled over one T_update) into one H.264
  stream and hands it to the link;
- the link (:mod:`edgeadapt.edge_agent.link`) uploads batches and applies updates to the
  inactive copy of the model, swapping between two frames.

Sampling rate and T_update come from the trainer; until it has said otherwise the agent uses
AMS's initial values. With the trainer unreachable the loop does not notice: it keeps inferring
with the last good model while batches wait in the link's bounded queue.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import Enum as EnumMetric

from edgeadapt._proto.stream.v1 import stream_pb2 as pb
from edgeadapt.adapt.ams import EdgeModel
from edgeadapt.adapt.update import parameter_vector
from edgeadapt.durable import write_atomically
from edgeadapt.edge_agent.experts import ExpertCache
from edgeadapt.edge_agent.link import EncodedBatch, Link, LinkConfig, LinkEvents, LinkState
from edgeadapt.stream.messages import MAX_BATCH_BYTES
from edgeadapt.video.codec import encode_h264
from edgeadapt.video.source import RGBImage, VideoSource

log = logging.getLogger(__name__)

STATE_FORMAT = 1

_Chunk = tuple[bytes, list[float], tuple[int, int]]  # H.264 data, capture times, (height, width)


class Sampler:
    """Picks frames at ``rate`` per second of capture time and seals a batch every ``interval``.

    With an ``upload_fraction`` below 1 (EdgeSync's sample filter, edgesync.md §2.1) a sealed
    batch keeps only ``ceil(fraction * n)`` of its ``n`` samples: those with the highest quality
    ``Q = E + I``, ``E`` the student's mean per-pixel entropy on the frame (``offer``'s
    ``uncertainty``) and ``I = 1 / (1 + exp(i / n))`` with ``i`` the sample's age in the batch
    (0 for the newest; the digest's sign correction). The kept frames stay in capture order.
    """

    def __init__(self, rate: float, interval: float, upload_fraction: float = 1.0) -> None:
        self.rate, self.interval = rate, interval
        self.upload_fraction = upload_fraction
        self.frames: list[RGBImage] = []
        self.times: list[float] = []
        self.scores: list[float] = []
        self.filtered = 0  # samples the filter left out, all batches
        self._next: float | None = None
        self._batch_start: float | None = None

    @property
    def filtering(self) -> bool:
        return 0.0 < self.upload_fraction < 1.0

    def set(self, rate: float, interval: float, upload_fraction: float | None = None) -> None:
        if rate > 0:
            self.rate = rate
        if interval > 0:
            self.interval = interval
        if upload_fraction is not None:
            self.upload_fraction = upload_fraction

    def due(self, t: float) -> bool:
        """Whether the frame captured at ``t`` would be sampled (its uncertainty is needed)."""
        return self._next is None or t >= self._next

    def offer(
        self, image: RGBImage, t: float, uncertainty: float = 0.0
    ) -> tuple[list[RGBImage], list[float]] | None:
        """Take the frame captured at ``t`` if a sample is due; return a batch when one closes.

        A batch holds the samples of [start, start + interval); it closes at the first frame
        past its end, which then belongs to the next batch.
        """
        sealed = None
        if self._batch_start is None:
            self._batch_start = t
        elif t - self._batch_start >= self.interval and self.frames:
            sealed = self._seal()
            self._batch_start = t
        if self.due(t):
            self.frames.append(image)
            self.times.append(t)
            self.scores.append(uncertainty)
            # A slower rate applies from the next sample; a late frame does not cause a burst.
            self._next = max((self._next or t) + 1.0 / self.rate, t + 0.5 / self.rate)
        return sealed

    def flush(self) -> tuple[list[RGBImage], list[float]] | None:
        """Close the open batch early (the source ended, or the agent is stopping)."""
        if not self.frames:
            return None
        sealed = self._seal()
        self._batch_start = None
        return sealed

    def _seal(self) -> tuple[list[RGBImage], list[float]]:
        frames, times = self.frames, self.times
        keep = upload_filter(self.scores, self.upload_fraction) if self.filtering else None
        self.frames, self.times, self.scores = [], [], []
        if keep is None:
            return frames, times
        self.filtered += len(frames) - len(keep)
        return [frames[i] for i in keep], [times[i] for i in keep]


def upload_filter(uncertainty: list[float], fraction: float) -> list[int]:
    """EdgeSync's Alg. 1 (corrected): the indices, in order, of the ``ceil(fraction * n)``
    samples of highest ``E + I`` (``uncertainty`` oldest first; see ``Sampler``)."""
    n = len(uncertainty)
    if n == 0:
        return []
    quality = [e + 1.0 / (1.0 + math.exp((n - 1 - pos) / n)) for pos, e in enumerate(uncertainty)]
    ranked = sorted(range(n), key=lambda i: (-quality[i], -i))
    return sorted(ranked[: math.ceil(fraction * n - 1e-9)])


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.frames = Counter(
            "edgeadapt_agent_frames_inferred_total", "Frames the student inferred", registry=r
        )
        self.filtered = Counter(
            "edgeadapt_agent_samples_filtered_total",
            "Sampled frames the upload filter (EdgeSync) left out of their batch",
            registry=r,
        )
        self.fps = Gauge(
            "edgeadapt_agent_inference_fps", "Frames inferred per second, last 5 s", registry=r
        )
        self.latency = Histogram(
            "edgeadapt_agent_inference_seconds",
            "Student inference time per frame",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.033, 0.05, 0.1, 0.2),
            registry=r,
        )
        self.source_errors = Counter(
            "edgeadapt_agent_source_errors_total",
            "Times the video source failed and was reopened",
            registry=r,
        )
        self.late = Counter(
            "edgeadapt_agent_late_frames_total",
            "Frames inferred after the next frame was due",
            registry=r,
        )
        self.version = Gauge(
            "edgeadapt_agent_model_version", "Version of the model in use", registry=r
        )
        self.stream_bytes = Counter(
            "edgeadapt_agent_stream_bytes_total",
            "Bytes of gRPC messages on the adaptation stream, by direction (up, down)",
            ["direction"],
            registry=r,
        )
        self.updates = Counter(
            "edgeadapt_agent_updates_total",
            "Model updates received, by result (applied, rejected)",
            ["result"],
            registry=r,
        )
        self.batches = Counter(
            "edgeadapt_agent_sample_batches_total",
            "Sample batches, by what happened (sealed, acked, dropped, rejected)",
            ["result"],
            registry=r,
        )
        self.pending = Gauge(
            "edgeadapt_agent_pending_batches", "Batches waiting for an acknowledgement", registry=r
        )
        self.connection = EnumMetric(
            "edgeadapt_agent_connection_state",
            "State of the stream to the trainer",
            states=[s.value for s in LinkState],
            registry=r,
        )
        self.connection.state(LinkState.DISCONNECTED.value)
        # Every known label value is exported from the start, at zero.
        for counter, values in (
            (self.stream_bytes, ("up", "down")),
            (self.updates, ("applied", "rejected")),
            (self.batches, ("sealed", "acked", "dropped", "rejected")),
        ):
            for value in values:
                counter.labels(value)
        self.thread_failures = Counter(
            "edgeadapt_agent_thread_failures_total",
            "Unexpected exceptions caught in a worker thread's loop, by thread (link, encoder)",
            ["thread"],
            registry=r,
        )
        for thread in ("link", "encoder"):
            self.thread_failures.labels(thread)
        self.rate = Gauge(
            "edgeadapt_agent_sampling_rate_fps", "Sampling rate set by the trainer", registry=r
        )
        self.interval = Gauge(
            "edgeadapt_agent_update_interval_seconds", "T_update set by the trainer", registry=r
        )


@dataclass
class AgentOptions:
    device_id: str
    adapt: bool = True
    duration: float | None = None  # seconds; None: until the source ends or a signal
    pace: bool = True  # play files and generated video at their frame rate
    crf: int = 23
    preset: str = "medium"
    r_init: float = 1.0
    t_update: float = 10.0
    state_dir: Path | None = None
    checkpoint_interval: float = 60.0
    reopen_at_end: bool = False  # a live stream that ends is reopened too
    drain_timeout: float = 10.0


@dataclass
class _Counters:
    frames: int = 0
    late: int = 0
    sealed: int = 0
    acked: int = 0
    rejected_batches: int = 0
    dropped: int = 0  # by a bounded queue (the link's offline queue or the encoder's)
    thread_failures: int = 0
    last_failure: str = ""
    source_errors: int = 0
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    window: deque[float] = field(default_factory=lambda: deque(maxlen=8192))  # perf_counter


class Agent(LinkEvents):
    def __init__(
        self,
        options: AgentOptions,
        source: VideoSource,
        edge: EdgeModel,
        link_config: LinkConfig | None,
        metrics: AgentMetrics | None = None,
        reopen: Callable[[], VideoSource] | None = None,
    ) -> None:
        """``reopen`` opens the source again after it failed (network sources); None: never."""
        self.opt = options
        self.source = source
        self.reopen = reopen
        self.edge = edge
        self.metrics = metrics or AgentMetrics()
        self.sampler = Sampler(options.r_init, options.t_update)
        self.counters = _Counters()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._encode_q: queue.Queue[tuple[int, list[RGBImage], list[float], int] | None] = (
            queue.Queue(maxsize=8)
        )
        self._seq = itertools.count(1)
        self.link = Link(link_config, edge, self) if link_config is not None else None
        self._encoder: threading.Thread | None = None
        self._loop_started_pc: float | None = None
        self.metrics.fps.set_function(self.fps_5s)
        # The trainer's limits on one batch (Settings); longer batches are split before upload.
        self.max_batch_frames = 0  # 0: no limit said
        self.max_batch_bytes = MAX_BATCH_BYTES
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.loop_started: float | None = None
        self.loop_ended: float | None = None
        self._saved_version = edge.version
        self._filtered_exported = 0
        self.metrics.version.set(edge.version)
        self.metrics.rate.set(self.sampler.rate)
        self.metrics.interval.set(self.sampler.interval)

    # -- LinkEvents (link thread) -------------------------------------------------------
    def settings(self, settings: pb.Settings) -> None:
        with self._lock:
            self.sampler.set(
                settings.sampling_rate_fps,
                settings.update_interval_s,
                round(float(settings.upload_fraction), 4),  # 0: the trainer filters nothing
            )
            if settings.max_batch_frames:
                self.max_batch_frames = int(settings.max_batch_frames)
            if settings.max_batch_bytes:
                self.max_batch_bytes = min(int(settings.max_batch_bytes), MAX_BATCH_BYTES)
        self.metrics.rate.set(self.sampler.rate)
        self.metrics.interval.set(self.sampler.interval)

    def state(self, state: LinkState) -> None:
        self.metrics.connection.state(state.value)

    def bytes(self, up: int, down: int) -> None:
        with self._lock:
            self.counters.uplink_bytes += up
            self.counters.downlink_bytes += down
        if up:
            self.metrics.stream_bytes.labels("up").inc(up)
        if down:
            self.metrics.stream_bytes.labels("down").inc(down)

    def update(self, applied: bool, reason: str) -> None:
        self.metrics.updates.labels("applied" if applied else "rejected").inc()
        self.metrics.version.set(self.edge.version)

    def batch(self, result: str) -> None:
        self.metrics.batches.labels(result).inc()
        with self._lock:
            if result == "acked":
                self.counters.acked += 1
            elif result == "rejected":
                self.counters.rejected_batches += 1
            elif result == "dropped":
                self.counters.dropped += 1
        if self.link is not None:
            self.metrics.pending.set(self.link.pending_count())

    def failure(self, thread: str, error: BaseException) -> None:
        self.metrics.thread_failures.labels(thread).inc()
        with self._lock:
            self.counters.thread_failures += 1
            self.counters.last_failure = f"{thread}: {error!r}"

    def fps_5s(self) -> float:
        """Frames inferred per second over the last 5 s of wall time (0 once inference stops)."""
        now = time.perf_counter()
        with self._lock:
            recent = sum(1 for t in self.counters.window if now - t <= 5.0)
            started = self._loop_started_pc
        if started is None:
            return 0.0
        return recent / max(min(5.0, now - started), 1e-6)

    def healthy(self) -> bool:
        """False once a thread the agent needs has died (a liveness probe then restarts it)."""
        if self._stop.is_set():
            return False  # shutting down
        if self._encoder is not None and not self._encoder.is_alive():
            return False
        return not (
            self.link is not None and self.link.ident is not None and not self.link.is_alive()
        )

    # -- lifecycle ----------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> dict[str, Any]:
        """Infer until the duration, the end of the source, or :meth:`request_stop`."""
        self.started_at = time.time()
        self.loop_started = None
        encoder = threading.Thread(target=self._encode_loop, name="encoder", daemon=True)
        self._encoder = encoder
        encoder.start()
        if self.link is not None:
            self.link.start()
        try:
            self._infer_loop()
        finally:
            self.loop_ended = time.time()
            with self._lock:
                rest = self.sampler.flush()
                self._count_filtered()
            if rest is not None:
                self._seal(rest)
            with contextlib.suppress(queue.Full):  # a dead encoder must not block the exit
                self._encode_q.put(None, timeout=10)
            encoder.join(timeout=10)
            if self.link is not None:
                self.link.stop(drain=self.opt.drain_timeout)
                self.link.join(timeout=5)
            self.ended_at = time.time()
            self.save_state()
        return self.status()

    def _infer_loop(self) -> None:
        """Play the source; a network source that fails is reopened (with backoff) if allowed."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                ended = self._play(self.source)
            except (OSError, av.error.FFmpegError) as exc:
                if self.reopen is None:
                    raise
                self.counters.source_errors += 1
                self.metrics.source_errors.inc()
                log.warning(
                    "video source lost: %s; reopening in %.1f s",
                    exc,
                    delay,
                    extra={"device": self.opt.device_id},
                )
            else:
                if ended or self.reopen is None or not self.opt.reopen_at_end:
                    return
                log.warning("live source ended; reopening", extra={"device": self.opt.device_id})
            if self._stop.wait(delay) or self._expired():
                return
            delay = min(delay * 2, 30.0)
            try:
                self.source.close()
                self.source = self.reopen()
                delay = 1.0
            except OSError as exc:
                log.warning("cannot reopen the video source: %s", exc)

    def _expired(self) -> bool:
        if self.opt.duration is None or self.loop_started is None:
            return False
        return time.time() - self.loop_started >= self.opt.duration

    def _play(self, source: VideoSource) -> bool:
        """Infer every frame of ``source``; True if the run is over (duration, stop)."""
        fps = source.fps
        start = time.monotonic()
        if self.loop_started is None:
            self.loop_started = time.time()
            self._loop_started_pc = time.perf_counter()
        wall0 = time.time()
        last_checkpoint = start
        ts0: float | None = None  # a live stream's timestamps need not start at 0
        for frame in source.frames():
            if self._stop.is_set() or self._expired():
                return True
            if ts0 is None:
                ts0 = frame.timestamp
            if self.opt.pace:
                due = start + (frame.timestamp - ts0)
                delay = due - time.monotonic()
                if delay > 0:
                    if self._stop.wait(delay):
                        return True
                elif delay < -1.0 / fps:
                    self.counters.late += 1
                    self.metrics.late.inc()
                captured = wall0 + (frame.timestamp - ts0)
            else:
                captured = time.time()
            t0 = time.perf_counter()
            with self._lock:
                score = self.sampler.filtering and self.sampler.due(captured)
            _, entropy = self.edge.predict_with_entropy(frame.image[None], entropy=score)
            now = time.perf_counter()
            self.metrics.latency.observe(now - t0)
            self.metrics.frames.inc()
            with self._lock:
                c = self.counters
                c.frames += 1
                c.window.append(now)
                while c.window and now - c.window[0] > 5.0:
                    c.window.popleft()
                sealed = self.sampler.offer(
                    frame.image, captured, float(entropy[0]) if entropy is not None else 0.0
                )
                self._count_filtered()
            if sealed is not None:
                self._seal(sealed)
            if (
                self.opt.state_dir is not None
                and time.monotonic() - last_checkpoint >= self.opt.checkpoint_interval
            ):
                last_checkpoint = time.monotonic()
                if self.edge.version != self._saved_version:
                    threading.Thread(target=self.save_state, daemon=True).start()
        return False

    def _count_filtered(self) -> None:
        """Caller holds ``_lock``: export the samples the upload filter left out."""
        new = self.sampler.filtered - self._filtered_exported
        if new > 0:
            self.metrics.filtered.inc(new)
            self._filtered_exported = self.sampler.filtered

    def _seal(self, sealed: tuple[list[RGBImage], list[float]]) -> None:
        if self.link is None:
            return
        with self._lock:
            self.counters.sealed += 1
        self.metrics.batches.labels("sealed").inc()
        try:
            self._encode_q.put_nowait((next(self._seq), *sealed, self.edge.version))
        except queue.Full:
            self.batch("dropped")

    def _encode_loop(self) -> None:
        """Encode sealed batches for the link; a batch that fails is dropped and counted."""
        while True:
            item = self._encode_q.get()
            if item is None:
                return
            seq, frames, times, version = item
            try:
                chunks = self._encode(frames, times)
            except Exception as exc:
                log.exception("cannot encode a sample batch", extra={"device": self.opt.device_id})
                self.failure("encoder", exc)
                self.batch("dropped")
                continue
            assert self.link is not None
            for i, (data, chunk_times, (h, w)) in enumerate(chunks):
                if i:  # a split batch is several batches, each acknowledged on its own
                    seq = next(self._seq)
                    with self._lock:
                        self.counters.sealed += 1
                    self.metrics.batches.labels("sealed").inc()
                self.link.enqueue(EncodedBatch(seq, data, chunk_times, w, h, version))
            self.metrics.pending.set(self.link.pending_count())

    def _encode(self, frames: list[RGBImage], times: list[float]) -> list[_Chunk]:
        """H.264 chunks of the batch, each within the trainer's frame and byte limits."""
        with self._lock:
            max_frames, max_bytes = self.max_batch_frames, self.max_batch_bytes
        step = max_frames or len(frames)
        pending = [(frames[i : i + step], times[i : i + step]) for i in range(0, len(frames), step)]
        out: list[_Chunk] = []
        while pending:
            part, part_times = pending.pop(0)
            data = encode_h264(part, crf=self.opt.crf, preset=self.opt.preset)
            if len(data) <= max_bytes:
                h, w = part[0].shape[:2]
                out.append((data, list(part_times), (int(h), int(w))))
            elif len(part) > 1:
                half = len(part) // 2
                pending[:0] = [(part[:half], part_times[:half]), (part[half:], part_times[half:])]
            else:
                raise ValueError(f"one frame encodes to {len(data)} bytes, over {max_bytes}")
        return out

    # -- state ----------------------------------------------------------------------------
    def save_state(self) -> None:
        """Keep the model in use (and its version) across agent restarts."""
        if self.opt.state_dir is None:
            return
        self.opt.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.opt.state_dir / "model.pt"
        with self.edge._apply_lock:  # no update half-applied while we copy
            state = {
                "format": STATE_FORMAT,
                "device_id": self.opt.device_id,
                "version": self.edge.version,
                "params": parameter_vector(self.edge.active).cpu().clone(),
            }
        # The periodic and the final save may overlap: each writes a temporary file of its own.
        write_atomically(path, lambda f: torch.save(state, f))
        self._saved_version = int(state["version"])  # type: ignore[call-overload]
        log.info(
            "model state saved", extra={"device": self.opt.device_id, "version": state["version"]}
        )

    def status(self) -> dict[str, Any]:
        end = self.ended_at or time.time()
        elapsed = max(end - self.started_at, 1e-6)
        c = self.counters
        link = self.link
        loop_s = max((self.loop_ended or end) - (self.loop_started or self.started_at), 1e-6)
        version, checksum, applied, rejected, last_error = self.edge.summary()
        return {
            "id": self.opt.device_id,
            "adapt": self.opt.adapt,
            "source": self.source.spec,
            "source_fps": self.source.fps,
            "elapsed_s": round(elapsed, 2),
            "frames_inferred": c.frames,
            "inference_fps": round(c.frames / loop_s, 2),
            "inference_fps_5s": round(self.fps_5s(), 2),
            "late_frames": c.late,
            "source_errors": c.source_errors,
            "model_version": version,
            "model_checksum": f"{checksum:08x}",
            "updates_applied": applied,
            "updates_rejected": rejected,
            "last_reject_reason": last_error,
            "uplink_bytes": c.uplink_bytes,
            "downlink_bytes": c.downlink_bytes,
            "uplink_kbps": round(c.uplink_bytes * 8 / elapsed / 1000, 2),
            "downlink_kbps": round(c.downlink_bytes * 8 / elapsed / 1000, 2),
            "sampling_rate_fps": round(self.sampler.rate, 3),
            "update_interval_s": round(self.sampler.interval, 2),
            "upload_fraction": self.sampler.upload_fraction if self.sampler.filtering else 1.0,
            "samples_filtered": self.sampler.filtered,
            "batches_sealed": c.sealed,
            "batches_acked": c.acked,
            "batches_rejected": c.rejected_batches,
            "batches_dropped": c.dropped,
            "thread_failures": c.thread_failures,
            "last_failure": c.last_failure,
            "batches_pending": link.pending_count() if link is not None else 0,
            "connection": link.state.value if link is not None else "none",
            "connects": link.connects if link is not None else 0,
            "last_link_error": link.last_error if link is not None else "",
            "expert_cache": _cache_view(link.cfg.experts if link is not None else None),
        }


def _cache_view(cache: ExpertCache | None) -> dict[str, Any] | None:
    if cache is None:
        return None
    return {
        "capacity": cache.capacity,
        "experts": [expert_id for expert_id, _ in cache.entries()],
        "hits": cache.hits,
        "misses": cache.misses,
        "corrupt": cache.corrupt,
    }


def load_state(path: Path, device_id: str, num_params: int) -> tuple[int, torch.Tensor] | None:
    """(version, parameters) saved by a previous run of this agent, if usable."""
    file = path / "model.pt"
    if not file.exists():
        return None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception:
        log.exception("saved model state is unreadable; starting from the pretrained student")
        return None
    params = state.get("params")
    if (
        state.get("format") != STATE_FORMAT
        or state.get("device_id") != device_id
        or not isinstance(params, torch.Tensor)
        or params.numel() != num_params
        or not torch.isfinite(params).all()
    ):
        log.warning("saved model state does not fit this device's student; ignoring it")
        return None
    return int(state["version"]), params


def restore_edge(edge: EdgeModel, version: int, params: torch.Tensor) -> None:
    """Put saved parameters into both copies of an edge model."""
    edge.load_parameters(params, version)
    log.info("restored model version %d (checksum %08x)", version, edge.checksum())
