"""A trainer and real edge agents under crashes, network faults and a hostile client.

    edgeadapt bench chaos [--devices 4] [--duration 300] [--no-baseline] --out FILE.json

One real trainer (TLS, tokens, ``--threads 1``) and N real agents (``python -m
edgeadapt.edge_agent``, each on its own synthetic video) run on loopback for ``--duration``
seconds. Until the last ``--calm`` seconds, three things go wrong at once:

- the trainer is SIGKILLed every ``--kill-every`` seconds and restarted on the same state
  directory and port, as a crash-looping pod would be;
- the agents reach it through :class:`~edgeadapt.bench.proxy.ChaosProxy`, which resets or stalls
  (1-8 s) one of their connections every ``--chaos-every`` seconds on average, seeded;
- a hostile client holding a valid token for its own device (``hostile-1``) keeps sending what a
  broken or malicious device could: H.264 that decodes to far more frames, or far larger ones,
  than the batch declares, batches that lie about their size, frame count or capture times,
  truncated H.264, garbage, and floods of ResyncRequests it never reads the answers to. It talks
  to the trainer directly, not through the proxy, and reconnects after every stream the trainer
  ends.

The last ``--calm`` seconds have none of this, so the agents reconnect and drain their queues
before they stop (``--drain-timeout``). The bench then checks what must hold whatever happened:
no sealed batch is lost (every one was acknowledged by the trainer or dropped and counted by a
bounded queue), no agent runs a model the trainer did not make (equal CRC32 at equal version),
every agent inferred at its source's rate throughout (its ``/status`` sampled each second after
a warm-up: the ``inference_fps_5s`` it reports, and how fast its frame counter rose), every agent
adapted (an applied update per minute it was connected), and the hostile client did not inflate
the trainer's memory: by default a second pass runs with everything identical but the hostile
client, and the trainer's peak RSS (VmHWM, over all its incarnations) must stay within 1.5x of
that baseline's. The figures and those ``targets`` go to ``--out`` and stdout; every process's
log stays in ``--workdir`` when one is given. Agents reconnect with ``--backoff-max`` 5 s rather
than their production 30 s, so that the calm period is enough to drain.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from edgeadapt.api.launch import AgentLaunch
from edgeadapt.bench.proxy import ChaosProxy
from edgeadapt.procs import (
    Proc,
    dev_credentials,
    free_port,
    get_json,
    kill,
    peak_rss_mb,
    start_agent,
    start_trainer,
    stop,
    wait_ready,
)

log = logging.getLogger(__name__)

HOSTILE_ID = "hostile-1"
ALL_TRAINERS = "trainer*"  # the peak meter's name for every incarnation of the trainer together
WARMUP = 10.0  # seconds before inference rates count: the agents' 5 s windows are still filling
OBSERVED_WINDOW = 10.0  # seconds of the agent's clock over which the bench counts its frames
SIZE = (128, 64)  # the sources' frame size (width, height): the students' input size
BIG_FRAME = (1920, 1080)  # what an "oversized" batch really holds, declared as SIZE
BIG_FRAMES = 150  # ~930 MB of RGB once decoded, from about 10 kB of H.264
MANY_FRAMES = 400  # an H.264 stream with this many frames, sent with 4 timestamps
HOSTILE_KINDS = (
    "more_frames",  # decodes to MANY_FRAMES frames; 4 declared
    "bigger_frames",  # BIG_FRAMES frames of BIG_FRAME; 4 declared, as SIZE
    "wrong_size",  # SIZE frames declared as half that size
    "count_mismatch",  # 4 frames, 7 timestamps
    "future_timestamps",  # capture times in 2100
    "truncated",  # a valid batch cut in half
    "garbage",  # random bytes behind an H.264 start code
    "second_register",  # Register again on an open stream
    "resync_flood",  # ResyncRequests for a version the trainer must snapshot, never read
)
FAR_FUTURE = 4_102_444_800.0  # 2100-01-01, Unix seconds
FLOOD_SEND = 5.0  # seconds a flood may take to leave (the trainer may stop reading: fine)
FLOOD_HOLD = 3.0  # seconds a flooding stream stays open, unread, after that
STREAM_TIMEOUT = 20.0  # deadline of one hostile stream
RSS_RATIO_TARGET = 1.5
FPS_RATIO_TARGET = 0.95


class PeakMeter:
    """Largest peak RSS seen per process name, across every process that carried the name.

    Each reading is the kernel's high-water mark (VmHWM), so sampling once a second and once more
    right before a kill misses no spike.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.peaks: dict[str, float] = {}

    def observe(self, pid: int, *names: str) -> None:
        """Read the process's peak and count it under each of ``names``."""
        mb = peak_rss_mb(pid)
        if mb is None:
            return
        with self._lock:
            for name in names:
                self.peaks[name] = max(self.peaks.get(name, 0.0), mb)

    def get(self, name: str) -> float | None:
        with self._lock:
            value = self.peaks.get(name)
        return round(value, 1) if value is not None else None


class TrainerKeeper(threading.Thread):
    """Owns the trainer: SIGKILLs it every ``kill_every`` s before ``chaos_end``, restarts it.

    Restarts reuse the state directory and the gRPC port (``start_trainer(n)`` makes the n-th
    incarnation), so agents and proxy keep their address and devices resume where the last
    persisted state left them. Every process it started is in :attr:`procs`, for the caller's
    clean-up; :meth:`close` guarantees none is started after it returns.
    """

    def __init__(
        self,
        first: Proc,
        start_trainer: Callable[[int], Proc],
        meter: PeakMeter,
        kill_every: float,
        chaos_end: float,
    ) -> None:
        super().__init__(name="trainer-keeper", daemon=True)
        self.start_trainer = start_trainer
        self.meter = meter
        self.kill_every = kill_every
        self.chaos_end = chaos_end
        self.procs = [first]
        self.kills = 0
        self.restart_seconds: list[float] = []
        self.error = ""
        self._lock = threading.Lock()
        self._halt = threading.Event()

    @property
    def current(self) -> Proc:
        with self._lock:
            return self.procs[-1]

    def close(self) -> None:
        with self._lock:
            self._halt.set()

    def run(self) -> None:
        next_kill = time.monotonic() + self.kill_every
        while next_kill < self.chaos_end:
            if self._halt.wait(max(0.0, next_kill - time.monotonic())):
                return
            victim = self.current
            self.meter.observe(victim.popen.pid, ALL_TRAINERS, victim.name)
            kill(victim)
            self.kills += 1
            t0 = time.monotonic()
            log.info("trainer killed (%d)", self.kills)
            try:
                self._restart()
            except Exception as exc:  # reported; the run goes on without a trainer
                self.error = f"restart {self.kills} failed: {exc}"
                log.error("%s", self.error)
                return
            self.restart_seconds.append(round(time.monotonic() - t0, 2))
            next_kill += self.kill_every

    def _restart(self, attempts: int = 3) -> None:
        for attempt in range(1, attempts + 1):
            with self._lock:
                if self._halt.is_set():
                    return
                proc = self.start_trainer(len(self.procs))
                self.procs.append(proc)
            try:
                wait_ready(proc, 120)
                return
            except (RuntimeError, TimeoutError):
                kill(proc)
                if attempt == attempts:
                    raise
                self._halt.wait(2.0)  # the port may still be held for a moment


@dataclass
class _Kind:
    sent: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)


class HostileClient(threading.Thread):
    """A device with a valid token that sends only what the trainer must refuse or survive.

    Each stream registers properly, waits for the Welcome, then sends one hostile message (or a
    flood of ResyncRequests) and reads on until the trainer ends the stream; a rejected message
    must end it with INVALID_ARGUMENT. Streams follow each other every ``mean_interval`` s on
    average, kinds drawn at random from a seeded generator. :attr:`sent` counts every hostile
    message handed to gRPC, Registers excluded; :attr:`kinds` records per kind what the trainer
    answered (a status code name, ``accepted`` for a batch acknowledged, ``flood_unread`` for a
    flood whose stream was still open when the client gave up on it).
    """

    def __init__(
        self,
        target: str,
        credentials: grpc.ChannelCredentials,
        token: str,
        register: Any,
        seed: int,
        mean_interval: float,
        flood_size: int,
    ) -> None:
        super().__init__(name="hostile", daemon=True)
        self.target, self.credentials, self.token = target, credentials, token
        self.register = register
        self.rng = random.Random(seed)
        self.mean_interval = mean_interval
        self.flood_size = flood_size
        self.sent = 0
        self.streams = 0
        self.kinds = {k: _Kind() for k in HOSTILE_KINDS}
        self._seq = 0
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._call: Any = None
        self._payloads = self._make_payloads()

    def stop(self) -> None:
        """No more streams; the one open now is cancelled, so the calm period starts calm."""
        with self._lock:
            self._halt.set()
            if self._call is not None:
                self._call.cancel()

    def _make_payloads(self) -> dict[str, bytes]:
        """H.264 streams encoded once; each is small on the wire and large when decoded."""
        import numpy as np

        from edgeadapt.video.codec import encode_h264
        from edgeadapt.video.synthetic import SyntheticVideo

        w, h = SIZE
        video = SyntheticVideo.from_spec(f"synthetic:seed=97,duration=10,size={w}x{h}")
        real = [video.frame(i * 10).image for i in range(8)]
        gray = np.full((BIG_FRAME[1], BIG_FRAME[0], 3), 120, dtype=np.uint8)
        good = encode_h264(real[:4])
        eight = encode_h264(real)
        return {
            "good4": good,
            "many": encode_h264([real[0]] * MANY_FRAMES, preset="ultrafast"),
            "big": encode_h264([gray] * BIG_FRAMES, preset="ultrafast"),
            "truncated": eight[: len(eight) // 2],
            "garbage": b"\x00\x00\x00\x01" + self.rng.randbytes(4000),
        }

    def _messages(self, kind: str) -> list[Any]:
        from edgeadapt._proto.stream.v1 import stream_pb2 as pb

        p, (w, h) = self._payloads, SIZE
        now = time.time()

        def batch(data: bytes, n: int, width: int = w, height: int = h, t_end: float = now) -> Any:
            self._seq += 1
            return pb.AgentMessage(
                samples=pb.SampleBatch(
                    seq=self._seq,
                    codec=pb.CODEC_H264,
                    data=data,
                    timestamps=[t_end - (n - 1 - i) * 0.5 for i in range(n)],
                    width=width,
                    height=height,
                )
            )

        if kind == "resync_flood":
            return [
                pb.AgentMessage(
                    resync=pb.ResyncRequest(
                        have_version=self.rng.randrange(0, 4),
                        have_checksum=self.rng.getrandbits(32),
                    )
                )
                for _ in range(self.flood_size)
            ]
        if kind == "second_register":
            return [pb.AgentMessage(register=self.register)]
        builders: dict[str, Callable[[], Any]] = {
            "more_frames": lambda: batch(p["many"], 4),
            "bigger_frames": lambda: batch(p["big"], 4),
            "wrong_size": lambda: batch(p["good4"], 4, w // 2, h // 2),
            "count_mismatch": lambda: batch(p["good4"], 7),
            "future_timestamps": lambda: batch(p["good4"], 4, t_end=FAR_FUTURE),
            "truncated": lambda: batch(p["truncated"], 8),
            "garbage": lambda: batch(p["garbage"], 4),
        }
        return [builders[kind]()]

    def run(self) -> None:
        while not self._halt.is_set():
            kind = self.rng.choice(HOSTILE_KINDS)
            t0 = time.monotonic()
            try:
                outcome = self._stream(kind)
            except Exception as exc:  # a bug here must not end the run
                log.exception("hostile stream failed")
                outcome = f"client_error:{type(exc).__name__}"
            self.kinds[kind].outcomes[outcome] += 1
            log.debug("hostile %s: %s after %.1f s", kind, outcome, time.monotonic() - t0)
            self._halt.wait(self.rng.expovariate(1.0 / self.mean_interval))

    def _stream(self, kind: str) -> str:
        from edgeadapt._proto.stream.v1 import stream_pb2 as pb
        from edgeadapt._proto.stream.v1 import stream_pb2_grpc as pb_grpc
        from edgeadapt.stream.auth import call_metadata
        from edgeadapt.stream.messages import CHANNEL_OPTIONS

        messages = self._messages(kind)
        welcomed, sent_all, over = threading.Event(), threading.Event(), threading.Event()

        def requests() -> Iterator[pb.AgentMessage]:
            yield pb.AgentMessage(register=self.register)
            if not welcomed.wait(STREAM_TIMEOUT) or over.is_set():
                return
            for m in messages:
                with self._lock:
                    self.sent += 1
                    self.kinds[kind].sent += 1
                yield m
            sent_all.set()
            over.wait(STREAM_TIMEOUT)  # the trainer ends the stream, not a half-close of ours

        self.streams += 1
        with grpc.secure_channel(self.target, self.credentials, options=CHANNEL_OPTIONS) as ch:
            stub = pb_grpc.AdaptationServiceStub(ch)  # type: ignore[no-untyped-call]
            with self._lock:
                if self._halt.is_set():
                    return "not_sent"
                call = self._call = stub.Connect(
                    requests(),
                    metadata=call_metadata(HOSTILE_ID, self.token),
                    timeout=STREAM_TIMEOUT,
                )
            try:
                for message in call:
                    body = message.WhichOneof("body")
                    if body == "welcome":
                        welcomed.set()
                        if kind == "resync_flood":  # never read the answers
                            sent_all.wait(FLOOD_SEND)
                            self._halt.wait(FLOOD_HOLD)
                            if call.done():
                                return str(call.code().name)
                            call.cancel()
                            return "flood_unread"
                    elif body == "batch_ack":
                        call.cancel()
                        return "accepted"
                return "closed_ok"
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
                return str(code.name)
            finally:
                over.set()
                welcomed.set()
                with self._lock:
                    self._call = None

    def report(self) -> dict[str, Any]:
        return {
            "device": HOSTILE_ID,
            "streams": self.streams,
            "messages": self.sent,
            "by_kind": {
                k: {"sent": v.sent, "outcomes": dict(v.outcomes)} for k, v in self.kinds.items()
            },
        }


@dataclass
class _AgentTrack:
    """What the bench saw of one agent while it ran."""

    connected_s: float = 0.0
    min_reported: float | None = None  # inference_fps_5s / source_fps, as the agent says
    min_reported_at_s: float | None = None
    min_observed: float | None = None  # its frame counter's rise per second / source_fps
    min_observed_at_s: float | None = None
    samples: int = 0
    last_t: float | None = None
    last_status: dict[str, Any] | None = None
    # (agent's elapsed_s, frames_inferred) of recent samples, both read at one moment
    counts: collections.deque[tuple[float, int]] = field(
        default_factory=lambda: collections.deque(maxlen=30)
    )


def _agent_launch(args: argparse.Namespace, name: str, i: int, env: dict[str, Any]) -> AgentLaunch:
    w, h = SIZE
    video = f"synthetic:seed={args.seed + i},duration={args.duration + 60:g},fps={args.fps:g}"
    return AgentLaunch(
        device_id=name,
        source=f"{video},size={w}x{h}",
        trainer=f"127.0.0.1:{env['proxy_port']}",
        ca_file=str(env["ca"]),
        token_file=str(env["token_dir"] / f"{name}.token"),
        student_file=str(env["student"]),
        duration=args.duration,
        http_listen="127.0.0.1:0",
        state_dir=str(env["workdir"] / f"{name}-state"),
        summary_out=str(env["workdir"] / f"{name}.summary.json"),
        backoff_max=args.backoff_max,
        drain_timeout=args.drain_timeout,
        max_pending=args.max_pending,
        log_format="json",
    )


def run_pass(
    args: argparse.Namespace, workdir: Path, teacher: Path, student: Path, hostile: bool
) -> dict[str, Any]:
    """One run: trainer, proxy, agents (and the hostile client); returns its figures."""
    from edgeadapt.models.zoo import load_checkpoint_model
    from edgeadapt.stream.messages import register_message
    from edgeadapt.stream.tls import channel_credentials

    workdir.mkdir(parents=True, exist_ok=True)
    creds = dev_credentials(workdir)
    state_dir = workdir / "trainer-state"
    shutil.rmtree(state_dir, ignore_errors=True)
    grpc_port = free_port()

    def trainer_proc(n: int) -> Proc:
        return start_trainer(
            workdir,
            state_dir=state_dir,
            teacher=teacher,
            student=student,
            credentials=creds,
            listen=f"127.0.0.1:{grpc_port}",
            extra=("--threads", str(args.trainer_threads), "--log-format", "json"),
            name="trainer" if n == 0 else f"trainer-{n + 1}",
        )

    meter = PeakMeter()
    proxy = ChaosProxy(grpc_port, seed=args.seed, mean_interval=args.chaos_every)
    agents: dict[str, Proc] = {}
    first = trainer_proc(0)
    keeper: TrainerKeeper | None = None
    client: HostileClient | None = None
    try:
        wait_ready(first, 120)
        proxy_port = proxy.start()
        env = {
            "proxy_port": proxy_port,
            "ca": creds.pki.ca,
            "token_dir": workdir,
            "student": student,
            "workdir": workdir,
        }
        for i in range(args.devices):
            name = f"cam-{i + 1}"
            (workdir / f"{name}.token").write_text(creds.token(name))
            agents[name] = start_agent(_agent_launch(args, name, i, env), workdir)
        if hostile:
            client = HostileClient(
                f"127.0.0.1:{grpc_port}",
                channel_credentials(creds.pki.ca),
                creds.token(HOSTILE_ID),
                register_message(HOSTILE_ID, load_checkpoint_model(student)),
                seed=args.seed,
                mean_interval=args.hostile_every,
                flood_size=args.resync_flood,
            )
        for p in agents.values():
            wait_ready(p, 180)

        t0 = time.monotonic()
        chaos_end = t0 + max(0.0, args.duration - args.calm)
        end = t0 + args.duration
        keeper = TrainerKeeper(first, trainer_proc, meter, args.kill_every, chaos_end)
        keeper.start()
        proxy.set_chaos(True)
        if client is not None:
            client.start()
        tracks = {n: _AgentTrack() for n in agents}
        deadline = end + args.drain_timeout + 60.0
        calm, last_log = False, t0
        while True:
            tick = time.monotonic()
            if not calm and tick >= chaos_end:
                calm = True
                proxy.set_chaos(False)
                if client is not None:
                    client.stop()
                log.info("chaos over at %.0f s; agents drain", tick - t0)
            running = [n for n, p in agents.items() if p.popen.poll() is None]
            if (tick >= end and not running) or tick >= deadline:
                break
            for name in running:
                _sample(agents[name], tracks[name], meter, t0, args.duration)
            current = keeper.current
            meter.observe(current.popen.pid, ALL_TRAINERS, current.name)
            if tick - last_log >= args.progress_every:
                last_log = tick
                log.info(
                    "%5.0f s: kills %d, cuts %d, stalls %d, hostile %d; %s",
                    tick - t0,
                    keeper.kills,
                    proxy.cuts,
                    proxy.stalls,
                    client.sent if client is not None else 0,
                    ", ".join(
                        f"{n} v{(t.last_status or {}).get('model_version', '-')} "
                        f"{(t.last_status or {}).get('connection', '-')}"
                        for n, t in tracks.items()
                    ),
                )
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        seconds = time.monotonic() - t0
        hung = [n for n, p in agents.items() if p.popen.poll() is None]
        for name in hung:
            log.error("%s still running %.0f s into the run; stopping it", name, seconds)
            stop(agents[name], timeout=10)
        keeper.close()
        keeper.join(5)
        trainer = keeper.current
        trainer_status = (
            get_json(trainer.http_port, timeout=10, token=trainer.status_token)
            if trainer.popen.poll() is None
            else None
        )
        meter.observe(trainer.popen.pid, ALL_TRAINERS, trainer.name)
        for name, p in agents.items():
            meter.observe(p.popen.pid, name)
        stop(trainer)
    finally:
        if client is not None:
            client.stop()
        if keeper is not None:
            keeper.close()
        proxy.close()
        for p in [*agents.values(), *(keeper.procs if keeper is not None else [first])]:
            if p.popen.poll() is None:
                kill(p)
    if client is not None:
        client.join(STREAM_TIMEOUT + FLOOD_HOLD + 5)
    return _figures(
        args,
        agents,
        tracks,
        trainer_status,
        meter,
        keeper,
        proxy,
        client,
        seconds=seconds,
        hung=hung,
        workdir=workdir,
    )


def _sample(p: Proc, track: _AgentTrack, meter: PeakMeter, t0: float, duration: float) -> None:
    """One look at a running agent: memory, connection, inference rate against its source.

    Two rates: the agent's ``inference_fps_5s``, and what its frame counter rose by over the last
    ``OBSERVED_WINDOW`` s of the agent's own clock (``elapsed_s``, read with the counter). The
    first is taken over the last frames inferred, so an inference loop that stops keeps
    reporting the rate it had; the second sees the stop.
    """
    meter.observe(p.popen.pid, p.name)
    status = get_json(p.http_port, timeout=2.0)
    if status is None:
        return
    now = time.monotonic()
    if track.last_t is not None and status.get("connection") == "connected":
        track.connected_s += min(now - track.last_t, 5.0)
    track.last_t = now
    track.last_status = status
    source_fps = float(status.get("source_fps") or 0.0)
    elapsed, frames = float(status.get("elapsed_s", 0.0)), int(status.get("frames_inferred", 0))
    track.counts.append((elapsed, frames))
    in_loop = elapsed <= duration - 0.5  # then it stops inferring and drains
    if now < t0 + WARMUP or not in_loop or source_fps <= 0:
        return
    reported = float(status.get("inference_fps_5s", 0.0)) / source_fps
    track.samples += 1
    at = round(now - t0, 1)
    if track.min_reported is None or reported < track.min_reported:
        track.min_reported, track.min_reported_at_s = reported, at
    older = [c for c in track.counts if c[0] <= elapsed - OBSERVED_WINDOW]
    if older:
        e0, f0 = older[-1]
        observed = (frames - f0) / (elapsed - e0) / source_fps
        if track.min_observed is None or observed < track.min_observed:
            track.min_observed, track.min_observed_at_s = observed, at


def _figures(
    args: argparse.Namespace,
    agents: dict[str, Proc],
    tracks: dict[str, _AgentTrack],
    trainer_status: dict[str, Any] | None,
    meter: PeakMeter,
    keeper: TrainerKeeper,
    proxy: ChaosProxy,
    client: HostileClient | None,
    *,
    seconds: float,
    hung: list[str],
    workdir: Path,
) -> dict[str, Any]:
    by_id = {d["id"]: d for d in (trainer_status or {}).get("devices", [])}
    per_device = []
    for name, p in agents.items():
        summary_file = workdir / f"{name}.summary.json"
        track = tracks[name]
        final: dict[str, Any] = {}
        if summary_file.exists():
            final = json.loads(summary_file.read_text())
        elif track.last_status is not None:  # hung or crashed: the last status seen
            final = track.last_status
        trainer_dev = by_id.get(name, {})
        version = final.get("model_version")
        expected = trainer_dev.get("checksums", {}).get(str(version))
        sealed = int(final.get("batches_sealed", 0))
        acked = int(final.get("batches_acked", 0))
        dropped = int(final.get("batches_dropped", 0))
        per_device.append(
            {
                "id": name,
                "exit": "hung" if name in hung else f"rc={p.popen.returncode}",
                "summary_written": summary_file.exists(),
                "source": final.get("source"),
                "source_fps": final.get("source_fps"),
                "frames_inferred": final.get("frames_inferred"),
                "inference_fps": final.get("inference_fps"),
                "late_frames": final.get("late_frames"),
                "min_inference_fps_over_source": _round(track.min_reported, 3),
                "min_at_s": track.min_reported_at_s,
                "min_observed_fps_over_source": _round(track.min_observed, 3),
                "min_observed_at_s": track.min_observed_at_s,
                "rate_samples": track.samples,
                "connected_s": round(track.connected_s, 1),
                "connects": final.get("connects"),
                "updates_applied": final.get("updates_applied", 0),
                "updates_rejected": final.get("updates_rejected", 0),
                "last_reject_reason": final.get("last_reject_reason", ""),
                "model_version": version,
                "model_checksum": final.get("model_checksum"),
                "trainer_version": trainer_dev.get("model_version"),
                "trainer_checksum_at_version": expected,
                "model_matches_trainer": None
                if expected is None
                else expected == final.get("model_checksum"),
                "batches_sealed": sealed,
                "batches_acked": acked,
                "batches_dropped": dropped,
                "batches_rejected": final.get("batches_rejected", 0),
                "batches_pending": final.get("batches_pending", 0),
                "batches_lost": sealed - acked - dropped,
                "thread_failures": final.get("thread_failures", 0),
                "last_link_error": final.get("last_link_error", ""),
                "peak_rss_mb": meter.get(name),
            }
        )
    agent_peaks = [d["peak_rss_mb"] for d in per_device if d["peak_rss_mb"] is not None]
    figures: dict[str, Any] = {
        "devices": len(agents),
        "seconds": round(seconds, 1),
        "trainer_kills": keeper.kills,
        "connection_cuts": proxy.cuts,
        "connection_stalls": proxy.stalls,
        "hostile_messages": client.sent if client is not None else 0,
        "batches_sealed": sum(d["batches_sealed"] for d in per_device),
        "batches_acked": sum(d["batches_acked"] for d in per_device),
        "batches_dropped_by_bounded_queue": sum(d["batches_dropped"] for d in per_device),
        # A device's overcount (acked + dropped > sealed) must not hide another's loss.
        "batches_lost": sum(max(0, d["batches_lost"]) for d in per_device),
        "batches_overcounted": sum(max(0, -d["batches_lost"]) for d in per_device),
        "batches_pending_at_exit": sum(int(d["batches_pending"]) for d in per_device),
        "corrupt_updates_applied": sum(d["model_matches_trainer"] is False for d in per_device),
        "unverified_models": [d["id"] for d in per_device if d["model_matches_trainer"] is None],
        "agents_with_rejected_updates": [d["id"] for d in per_device if d["updates_rejected"]],
        "min_inference_fps_over_source": _least(per_device, "min_inference_fps_over_source"),
        "min_observed_fps_over_source": _least(per_device, "min_observed_fps_over_source"),
        "trainer_peak_rss_mb": meter.get(ALL_TRAINERS),
        "trainer_peak_rss_by_incarnation_mb": [meter.get(p.name) for p in keeper.procs],
        "agent_peak_rss_mb": max(agent_peaks) if agent_peaks else None,
        "updates_applied": sum(int(d["updates_applied"]) for d in per_device),
        "agents_hung": hung,
        "trainer_restart_s": keeper.restart_seconds,
        "trainer_error": keeper.error,
        "trainer_status_read": trainer_status is not None,
        "connection_stall_s": round(proxy.stall_seconds, 1),
        "proxy_connections": proxy.connections_accepted,
        "proxy_upstream_refused": proxy.upstream_refused,
        "per_device": per_device,
    }
    if client is not None:
        figures["hostile"] = client.report()
    return figures


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _least(per_device: list[dict[str, Any]], key: str) -> float | None:
    """The smallest value over the devices; None if any device has none (it was never seen)."""
    values = [d[key] for d in per_device]
    return None if not values or None in values else min(values)


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, evaluated on the run; None where the run cannot tell."""
    ratio = report.get("trainer_rss_ratio")
    min_fps = report["min_inference_fps_over_source"]
    min_observed = report["min_observed_fps_over_source"]
    out: dict[str, Any] = {
        "no_batch_lost": report["batches_lost"] == 0,
        # acked + dropped = sealed - pending on every device: no batch counted twice
        "batch_counts_consistent": report["batches_overcounted"] == 0,
        "no_corrupt_update_applied": report["corrupt_updates_applied"] == 0
        and not report["unverified_models"],
        # As the agents report it, and as their frame counters rose (a stalled loop shows there).
        "inference_at_source_rate": min_fps is not None
        and min_fps >= FPS_RATIO_TARGET
        and min_observed is not None
        and min_observed >= FPS_RATIO_TARGET,
        # An applied update per minute the agent was connected, and connected at some point.
        "every_agent_adapting": all(
            d["connected_s"] > 0 and d["updates_applied"] >= d["connected_s"] / 60.0
            for d in report["per_device"]
        ),
        "trainer_rss_within_1_5x_baseline": None if ratio is None else ratio <= RSS_RATIO_TARGET,
        "no_agent_hung": not report["agents_hung"],
    }
    out["all_met"] = all(v is not False for v in out.values())
    return out


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--devices", type=int, default=4, help="edge agents (default 4)")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of each run")
    parser.add_argument("--out", type=Path, required=True, help="JSON output")
    parser.add_argument("--profile", default="bench", help="model profile (bench, tiny)")
    parser.add_argument("--fps", type=float, default=10.0, help="source frame rate of each agent")
    parser.add_argument("--kill-every", type=float, default=60.0, help="seconds between kills")
    parser.add_argument(
        "--chaos-every", type=float, default=4.0, help="mean seconds between proxy cuts or stalls"
    )
    parser.add_argument(
        "--hostile-every", type=float, default=1.0, help="mean seconds between hostile streams"
    )
    parser.add_argument("--resync-flood", type=int, default=100, help="ResyncRequests in one flood")
    parser.add_argument(
        "--calm", type=float, default=25.0, help="last seconds without chaos, for draining"
    )
    parser.add_argument("--seed", type=int, default=1, help="chaos seed and first video seed")
    parser.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        help="skip the second run without the hostile client (no RSS ratio)",
    )
    parser.add_argument("--trainer-threads", type=int, default=1, help="trainer torch threads")
    parser.add_argument(
        "--drain-timeout", type=float, default=60.0, help="agents' wait for their last acks"
    )
    parser.add_argument(
        "--backoff-max", type=float, default=5.0, help="agents' longest reconnect delay (s)"
    )
    parser.add_argument(
        "--max-pending", type=int, default=60, help="agents' offline queue (batches)"
    )
    parser.add_argument("--workdir", type=Path, help="keep logs, certificates and state here")
    parser.add_argument(
        "--progress-every", type=float, default=15.0, help="seconds between progress log lines"
    )


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up of every process


def run(args: argparse.Namespace) -> int:
    if args.devices < 1:
        raise SystemExit("--devices must be at least 1")
    if args.duration <= args.calm:
        raise SystemExit("--duration must be longer than --calm")
    from edgeadapt.models.cache import ensure_checkpoint

    teacher = ensure_checkpoint("teacher", args.profile)
    student = ensure_checkpoint("student", args.profile)
    keep = args.workdir is not None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="edgeadapt-bench-chaos-"))
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    ok = False
    try:
        report = run_pass(args, workdir / "chaos", teacher, student, hostile=True)
        report["baseline_trainer_peak_rss_mb"] = report["trainer_rss_ratio"] = None
        if args.baseline:
            base = run_pass(args, workdir / "baseline", teacher, student, hostile=False)
            report["baseline"] = {k: v for k, v in base.items() if k != "per_device"}
            report["baseline_trainer_peak_rss_mb"] = base["trainer_peak_rss_mb"]
            if report["trainer_peak_rss_mb"] and base["trainer_peak_rss_mb"]:
                report["trainer_rss_ratio"] = round(
                    report["trainer_peak_rss_mb"] / base["trainer_peak_rss_mb"], 3
                )
        report["targets"] = targets(report)
        report["config"] = {
            "profile": args.profile,
            "duration_s": args.duration,
            "calm_s": args.calm,
            "fps": args.fps,
            "size": f"{SIZE[0]}x{SIZE[1]}",
            "kill_every_s": args.kill_every,
            "chaos_every_s": args.chaos_every,
            "hostile_every_s": args.hostile_every,
            "resync_flood": args.resync_flood,
            "seed": args.seed,
            "trainer_threads": args.trainer_threads,
            "agent_backoff_max_s": args.backoff_max,
            "agent_drain_timeout_s": args.drain_timeout,
            "agent_max_pending": args.max_pending,
            "cpu_count": os.cpu_count(),
        }
        if keep:
            report["workdir"] = str(workdir)
        ok = True
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if not keep:
            if ok:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                log.error("logs kept in %s", workdir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0
