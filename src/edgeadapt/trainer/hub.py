"""The trainer's device hub: per-device AMS state, batched teacher labelling, scheduled training.

The hub knows nothing of gRPC. The server hands it each device's stream as two callables (send a
message, close the stream) and feeds it decoded sample batches, already at the model's input
size; one worker thread does all model work in cycles:

1. take every sample batch that is waiting, from every device;
2. label their frames with the teacher, batched across devices, one pass per frame shape;
3. visit each device once, with all of its waiting batches: score the device's current model on
   the new frames against the teacher labels (test, then train), add the frames to its horizon
   buffer, tick ASR/ATR, and acknowledge the batches;
4. run one training round (:mod:`edgeadapt.trainer.scheduler`) over every device with frames it
   has not trained on: the AdaptationPolicy's scheduler shares the round's compute among their
   AMS phases (:mod:`edgeadapt.trainer.jobs`), then each trained phase is committed, logged to
   disk and sent with the new settings. A device whose batches queued up while the worker was
   busy gets one phase for all of them, so a loaded trainer sends each device fewer, larger steps
   instead of falling ever further behind; a device a round's budget did not reach goes first in
   the next.

One device's failure (a bad batch, a scoring error, a full disk) is caught, counted and answered
on that device alone; the other devices' batches of the same cycle are processed as usual.

Persistence: every update is appended to the device's update log (:mod:`edgeadapt.trainer.store`)
before it leaves the trainer, so a trainer killed at any point never has sent a version it cannot
resume from; the device's record (:mod:`edgeadapt.trainer.device`) checkpoints its whole state
(model, optimizer, horizon) once per ``checkpoint_interval``, at shutdown, and when an idle device
is evicted from memory, and restores itself by replaying the log after its checkpoint. Updates
not yet acknowledged are kept (a short chain); a device behind the trainer is caught up
(:mod:`edgeadapt.trainer.catchup`). ``/status`` is built by :mod:`edgeadapt.trainer.view`.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import enum
import io
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edgeadapt._proto.stream.v1 import stream_pb2 as pb
from edgeadapt.adapt.ams import AMSConfig, AMSSession, Teacher, freeze_batchnorm
from edgeadapt.adapt.metrics import frame_miou
from edgeadapt.adapt.optim import MaskedAdam
from edgeadapt.adapt.update import (
    ModelUpdate,
    encode_update,
    model_checksum,
    parameter_vector,
)
from edgeadapt.models.data import to_tensor
from edgeadapt.models.zoo import SegmentationModel
from edgeadapt.recl.rules import Verdict, safety_check
from edgeadapt.recl.zoo import per_frame_miou
from edgeadapt.stream.messages import update_message
from edgeadapt.trainer.budget import (
    LinkBudget,
    LinkPlanner,
    prior_bytes_per_frame,
)
from edgeadapt.trainer.catchup import CatchUp
from edgeadapt.trainer.device import Batch, BatchLimits, Device, PendingUpdate, Sample, Score
from edgeadapt.trainer.gpu import GpuTelemetry
from edgeadapt.trainer.jobs import PhaseJob, ReclJob
from edgeadapt.trainer.metrics import TrainerMetrics
from edgeadapt.trainer.recl import (
    SCENE_HISTORY,
    SELECT_FRAMES,
    DeviceRecl,
    GatingClient,
    GatingError,
    ReclConfig,
    continued,
    scene_change,
    top_change,
)
from edgeadapt.trainer.scheduler import Job, Round, Scheduler, SchedulerConfig, drift
from edgeadapt.trainer.store import DeviceStore, UpdateRecord
from edgeadapt.trainer.view import device_view, scheduler_view

log = logging.getLogger(__name__)


class CloseReason(enum.Enum):
    """Why the hub ends a device's stream; the server maps each to a gRPC status."""

    REPLACED = "replaced by a newer stream for the same device"
    SHUTDOWN = "trainer shutting down"


Send = Callable[[pb.TrainerMessage], None]
Close = Callable[[CloseReason], None]

HARD_MAX_BATCH_FRAMES = 600
TELEMETRY_INTERVAL = 5.0  # seconds between GPU telemetry polls
MIN_SWITCH_COORDS = 1000  # below this a switch waits for the link rather than trickle


class PreconditionError(Exception):
    """The device cannot be served by this trainer (another student, another task)."""


@dataclass(frozen=True)
class HubConfig:
    ams: AMSConfig = field(default_factory=AMSConfig)
    chain_length: int = 8  # unacknowledged updates kept for a reconnecting device
    max_queued_batches: int = 256  # waiting batches, all devices; beyond it uploads wait
    max_queued_bytes: int = 256 << 20  # decoded frame bytes waiting, all devices
    max_batch_decoded_bytes: int = 1 << 30
    input_size: tuple[int, int] | None = None  # (width, height); None: as uploaded
    checkpoint_interval: float = 60.0  # seconds between a device's checkpoints
    idle_evict_after: float = 600.0  # a device disconnected this long leaves memory
    resync_interval: float = 1.0  # at most one resync served per device per interval
    score_chunk: int = 8  # frames scored per forward pass
    recl: ReclConfig | None = None  # RECL windows (strategies recl, ams+recl); None: AMS only
    upload_fraction: float = 1.0  # EdgeSync's filter on the agents (Settings); 1: every sample
    # who trains next (None: round-robin, K iterations per job, rounds capped at T_update)
    scheduler: SchedulerConfig | None = None
    admit_frames: int = 64  # of a window, sent with a model offered to the zoo


class Hub:
    def __init__(
        self,
        teacher: SegmentationModel,
        student: SegmentationModel,
        config: HubConfig,
        store: DeviceStore | None,
        device: torch.device,
        metrics: TrainerMetrics | None = None,
        num_classes: int | None = None,
        trainer_id: str = "",
        gating: GatingClient | None = None,
        telemetry: GpuTelemetry | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.device = device
        self.trainer_id = trainer_id
        self.metrics = metrics or TrainerMetrics()
        self.teacher = Teacher(teacher, device)
        self.student = student.to(device).eval()
        self.num_classes = int(num_classes or student.config["num_classes"])
        self.base_flat = parameter_vector(self.student).cpu()
        self.base_checksum = model_checksum(self.base_flat)
        self.spec = pb.ModelSpec(
            arch=student.arch,
            num_classes=self.num_classes,
            width_mult=float(student.config.get("width_mult", 1.0)),
            num_params=int(self.base_flat.numel()),
        )
        ams = config.ams
        longest = ams.t_update * (ams.atr_cap_mult if ams.atr else 1.0)
        self.limits = BatchLimits(
            max_frames=min(HARD_MAX_BATCH_FRAMES, math.ceil(ams.r_max * longest * 1.25) + 2),
            max_decoded_bytes=config.max_batch_decoded_bytes,
            input_size=config.input_size,
        )
        self.devices: dict[str, Device] = {}
        self._devices_lock = threading.Lock()  # the devices dict; never held during I/O
        self._loading: dict[str, threading.Lock] = {}  # one restore at a time per device
        self._queue: queue.Queue[tuple[str, Batch] | None] = queue.Queue()
        self._queue_lock = threading.Lock()  # in-flight counts and queued bytes
        self._in_flight: dict[str, int] = {}  # batches submitted and not yet processed
        self._queued = 0
        self._queued_bytes = 0
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._last_housekeeping = 0.0
        self.gating = gating
        self._alpha = 0.02  # the zoo's margin, until the gating service has told us
        self._scratch = copy.deepcopy(self.student).eval()  # the safety checker's evaluations
        if config.recl is not None and gating is None:
            raise ValueError(f"strategy {config.recl.strategy} needs a gating service")
        scheduling = config.scheduler or SchedulerConfig(
            iterations=config.ams.iterations, round_cap=config.ams.t_update
        )
        # strategies recl and ams+recl: the rounds run the devices' RECL retraining jobs, not
        # AMS phases, and round-robin gives each RECL's steps per batch
        self._retrains = config.recl is not None
        if config.recl is not None:
            scheduling = dataclasses.replace(scheduling, iterations=config.recl.iterations)
        self.scheduler = Scheduler(scheduling)
        # micro-window and urgency score AMS's slices on held-out frames (RECL's retraining
        # jobs are scored on their window's own held-out frames)
        self._scored_slices = self.scheduler.config.policy != "round-robin" and config.recl is None
        self._pending: dict[str, None] = {}  # devices with frames for a round (worker only)
        self.last_round: Round | None = None
        self.share = 1.0  # of the GPU this trainer may use (telemetry lowers it)
        self.telemetry = telemetry or GpuTelemetry(None, reason="not configured")
        self._last_telemetry = -math.inf
        self.catchup = CatchUp(self.base_flat, self.metrics, config.resync_interval)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._worker = threading.Thread(target=self._run, name="hub-worker", daemon=True)
        self._worker.start()

    def healthy(self) -> bool:
        """False once the worker thread has died: a liveness probe should restart the trainer."""
        return self._worker is None or self._worker.is_alive() or self._stopping.is_set()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in progress, checkpoint every device, close every stream."""
        self._stopping.set()
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout)
        for dev in list(self.devices.values()):
            try:  # one device's failure never skips the others
                with dev.lock:
                    self._checkpoint(dev)
            except Exception:
                log.exception("cannot save device state", extra={"device": dev.device_id})
            with dev.conn_lock:
                if dev.close is not None:
                    dev.close(CloseReason.SHUTDOWN)
                dev.send = dev.close = None

    # -- stream events (called from the server's threads) --------------------------------
    def attach(self, register: pb.Register, send: Send, close: Close) -> list[pb.TrainerMessage]:
        """A device opened its stream: the welcome and what it needs to reach our version."""
        if register.task != pb.TASK_SEMANTIC_SEGMENTATION:
            raise PreconditionError(f"task {pb.Task.Name(register.task)} is not served")
        m, s = register.model, self.spec
        if (m.arch, m.num_classes, m.num_params) != (s.arch, s.num_classes, s.num_params) or abs(
            m.width_mult - s.width_mult
        ) > 1e-6:
            raise PreconditionError(
                f"device runs {m.arch} x{m.width_mult:g} ({m.num_classes} classes, "
                f"{m.num_params} parameters); this trainer adapts {s.arch} x{s.width_mult:g} "
                f"({s.num_classes} classes, {s.num_params} parameters)"
            )
        while True:
            dev = self._device(register.device_id, register.adapt)
            with dev.lock:
                if dev.evicted:  # evicted between the lookup and the lock: restore it again
                    continue
                messages = self._attach_locked(dev, register, send, close)
                break
        self._update_gauges()
        log.info(
            "device attached",
            extra={
                "device": dev.device_id,
                "adapt": dev.adapt,
                "agent_version": register.model_version,
                "trainer_version": dev.version,
                "catch_up": len(messages) - 1,
            },
        )
        return messages

    def _attach_locked(
        self, dev: Device, register: pb.Register, send: Send, close: Close
    ) -> list[pb.TrainerMessage]:
        # A device that registers with adapt=false is scored only, whatever it did before; its
        # session (if any) is kept for the day it adapts again.
        dev.adapt = register.adapt
        budget = LinkBudget.from_message(register.link)
        if not budget.any:
            dev.planner = None
        elif dev.planner is None or dev.planner.budget != budget:
            dev.planner = LinkPlanner(
                budget,
                int(self.spec.num_params),
                time.monotonic(),
                bytes_per_frame=prior_bytes_per_frame(self.config.input_size),
            )
        dev.agent_version, dev.agent_checksum = register.model_version, register.model_checksum
        if dev.adapt and dev.session is None:
            dev.session = self._new_session()
        if self.config.recl is not None:
            if dev.recl is None:
                dev.recl = DeviceRecl(switch_margin=self.config.recl.switch_margin)
            with dev.chain_lock:
                dev.recl.cache_size = register.expert_cache_size
                dev.recl.cached = collections.OrderedDict(
                    (e.id, e.model_checksum) for e in register.cached_experts
                )
                dev.recl.switch_pending = ""
        with dev.conn_lock:
            if dev.close is not None:
                dev.close(CloseReason.REPLACED)
            dev.send, dev.close, dev.connected_at = send, close, time.time()
        self.catchup.reset(dev, time.monotonic())
        dev.last_active = time.monotonic()
        dev.settings = self._settings(dev)
        messages = [
            pb.TrainerMessage(
                welcome=pb.Welcome(
                    model_version=dev.version,
                    settings=self._settings_message(dev.settings),
                    trainer_id=self.trainer_id,
                )
            )
        ]
        messages += self.catchup.serve(dev, register.model_version, register.model_checksum)
        dev.view = self._view(dev)
        return messages

    def detach(self, device_id: str, send: Send) -> None:
        dev = self.devices.get(device_id)
        if dev is None:
            return
        # Called on the server's event loop: only the connection lock, never the device lock
        # that a training phase holds for seconds.
        with dev.conn_lock:
            if dev.send is send:  # not replaced by a newer stream meanwhile
                dev.send = dev.close = None
                dev.connected_at = None
        dev.last_active = time.monotonic()
        self._update_gauges()

    def try_submit(self, device_id: str, batch: Batch) -> bool:
        """Queue a decoded batch for the worker; False while the queue is full (retry later).

        Never blocks: the server awaits and retries, so a full queue holds back the uploads
        (gRPC flow control) without tying up threads.
        """
        with self._queue_lock:
            full = (
                self._queued >= self.config.max_queued_batches
                or self._queued_bytes + batch.nbytes > self.config.max_queued_bytes
            )
            if full and self._queued:  # one batch is always accepted, however large
                return False
            self._queued += 1
            self._queued_bytes += batch.nbytes
            self._in_flight[device_id] = self._in_flight.get(device_id, 0) + 1
        self._queue.put((device_id, batch))
        self.metrics.queue.set(self._queued)
        self.metrics.queued_bytes.set(self._queued_bytes)
        return True

    def in_flight(self, device_id: str) -> int:
        """Batches of this device that were submitted and are not processed yet (processed:
        acknowledged, and the round after them has sent its updates)."""
        with self._queue_lock:
            return self._in_flight.get(device_id, 0)

    def ack(self, device_id: str, ack: pb.UpdateAck) -> None:
        """An update acknowledgement; takes only the chain lock, never waits for training."""
        dev = self.devices.get(device_id)
        if dev is None:
            return
        with dev.chain_lock:
            if dev.recl is not None and dev.recl.switch_pending:
                if not ack.applied:  # the agent did not hold that expert after all
                    dev.recl.cached.pop(dev.recl.switch_pending, None)
                dev.recl.switch_pending = ""
            if ack.applied:
                known = {k.version: k.checksum for k in dev.chain} | {dev.version: dev.checksum}
                dev.agent_version, dev.agent_checksum = ack.version, known.get(ack.version)
                dev.last_applied = time.time()
                dev.acked_version = max(dev.acked_version, ack.version)
                dev.chain = [k for k in dev.chain if k.version > dev.acked_version]
            if dev.snapshot_in_flight is not None and (
                not ack.applied or ack.version >= dev.snapshot_in_flight
            ):
                dev.snapshot_in_flight = None
                dev.snapshot_cache = None
        dev.dirty = True
        if not ack.applied:
            log.warning(
                "device rejected an update",
                extra={"device": device_id, "version": ack.version, "reason": ack.reason},
            )

    def resync(self, device_id: str, request: pb.ResyncRequest) -> list[pb.TrainerMessage]:
        """What a device that asked to resynchronise needs, at most once per resync interval.

        A request inside the interval is not answered now: the latest one is kept and the
        worker answers it when the interval has passed, so a flood of requests costs one
        answer per interval and at most one snapshot in flight.
        """
        dev = self.devices.get(device_id)
        if dev is None:
            return []
        if not self.catchup.admit(
            dev, request.have_version, request.have_checksum, time.monotonic()
        ):
            return []
        with dev.lock:
            return self.catchup.serve(dev, request.have_version, request.have_checksum)

    def count_bytes(self, device_id: str, up: int = 0, down: int = 0, frames: int = 0) -> None:
        """Bytes written on a device's stream (``frames``: sampled frames among ``up``)."""
        dev = self.devices.get(device_id)
        if dev is not None:
            dev.uplink_bytes += up
            dev.downlink_bytes += down
            planner = dev.planner
            if planner is not None:
                now = time.monotonic()
                if up:
                    planner.uploaded(up, frames, now)
                if down:
                    planner.downloaded(down, now)
        if up:
            self.metrics.stream_bytes.labels("up").inc(up)
        if down:
            self.metrics.stream_bytes.labels("down").inc(down)

    # -- device state -------------------------------------------------------------------
    def _new_session(self) -> AMSSession:
        return AMSSession(self.student, self.config.ams, self.num_classes, self.device)

    def _device(self, device_id: str, adapt: bool) -> Device:
        """The device's record, restored from disk (outside the devices lock) if not in memory."""
        with self._devices_lock:
            dev = self.devices.get(device_id)
            if dev is not None:
                return dev
            loading = self._loading.setdefault(device_id, threading.Lock())
        with loading:
            with self._devices_lock:
                dev = self.devices.get(device_id)
            if dev is None:
                dev = self._restore(device_id) or Device(
                    device_id,
                    adapt,
                    self._new_session() if adapt else None,
                    self.base_checksum,
                )
                with self._devices_lock:
                    self.devices[device_id] = dev
                    self._loading.pop(device_id, None)
            return dev

    def _restore(self, device_id: str) -> Device | None:
        if self.store is None:
            return None
        return Device.load(
            self.store, device_id, self._new_session, self.base_checksum, self.config.chain_length
        )

    def _checkpoint(self, dev: Device) -> None:
        """Write the device's whole state (caller holds ``dev.lock``)."""
        if self.store is None:
            return
        t0 = time.perf_counter()
        size = dev.save(self.store)
        if size is not None:
            self.metrics.persist_seconds.observe(time.perf_counter() - t0)
            self.metrics.state_bytes.observe(size)

    def _settings(self, dev: Device) -> tuple[float, float]:
        """(sampling rate, update interval): AMS's, within the device's link budget."""
        if dev.session is not None and dev.adapt:
            rate, interval = dev.session.settings()
        else:
            # A device that does not adapt is only scored, at AMS's initial rate and interval.
            rate, interval = self.config.ams.r_init, self.config.ams.t_update
        if dev.planner is None:
            return rate, interval
        plan = dev.planner.plan(rate, interval, self.config.ams.gamma, time.monotonic())
        return plan.sampling_rate, plan.update_interval

    def _settings_message(self, settings: tuple[float, float]) -> pb.Settings:
        return pb.Settings(
            sampling_rate_fps=settings[0],
            update_interval_s=settings[1],
            max_batch_frames=self.limits.max_frames,
            max_batch_bytes=self.limits.max_bytes,
            upload_fraction=self.config.upload_fraction,
        )

    def _update_gauges(self) -> None:
        devices = list(self.devices.values())
        self.metrics.devices_known.set(len(devices))
        self.metrics.devices_connected.set(sum(1 for d in devices if d.send is not None))

    # -- the worker ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            log.critical("the hub worker died; /healthz now fails", exc_info=True)
            raise

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                item = None
                if not self._stopping.is_set():
                    self._train_round()
                    self._housekeeping()
                continue
            if item is None:
                break
            items = [item]
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._stopping.set()
                    break
                items.append(nxt)
            try:
                self._cycle(items)
            except Exception:  # every device's batch is already answered inside the cycle
                log.exception("worker cycle failed")
                self.metrics.thread_failures.labels("process").inc()
            finally:
                with self._queue_lock:
                    for _, batch in items:
                        self._queued -= 1
                        self._queued_bytes -= batch.nbytes
                    self.metrics.queue.set(self._queued)
                    self.metrics.queued_bytes.set(self._queued_bytes)
            try:
                # The batches count as in flight until the round that trains on them has sent
                # its updates: a stream the agent half-closed stays open for them.
                if not self._stopping.is_set():
                    self._train_round()
            finally:
                with self._queue_lock:
                    for device_id, _ in items:
                        self._in_flight[device_id] -= 1
                        if not self._in_flight[device_id]:
                            del self._in_flight[device_id]
            self._housekeeping()

    def _label(self, items: list[tuple[str, Batch]]) -> list[torch.Tensor | None]:
        """Teacher labels per batch: one pass per frame shape; a failing pass retries per batch."""
        t0 = time.perf_counter()
        labels: list[torch.Tensor | None] = [None] * len(items)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, (_, b) in enumerate(items):
            by_shape.setdefault(b.images.shape[1:], []).append(i)
        for group in by_shape.values():
            try:
                out = self.teacher.label(np.concatenate([items[i][1].images for i in group]))
            except Exception:
                log.exception("labelling failed; labelling batch by batch")
                self.metrics.thread_failures.labels("label").inc()
                for i in group:
                    try:
                        labels[i] = self.teacher.label(items[i][1].images)
                    except Exception:
                        log.exception("cannot label a batch", extra={"device": items[i][0]})
                continue
            start = 0
            for i in group:
                n = len(items[i][1].images)
                labels[i] = out[start : start + n]
                start += n
        self.metrics.label_seconds.observe(time.perf_counter() - t0)
        self.metrics.frames_labelled.inc(sum(len(lab) for lab in labels if lab is not None))
        return labels

    def _cycle(self, items: list[tuple[str, Batch]]) -> None:
        labels = self._label(items)
        per_device: dict[str, list[tuple[Batch, torch.Tensor | None]]] = {}
        for (device_id, batch), lab in zip(items, labels, strict=True):
            per_device.setdefault(device_id, []).append((batch, lab))
        # Each device once per cycle, with every batch it has waiting: one training phase on
        # the horizon they extend, however many batches arrived while the worker was busy.
        for device_id, work in per_device.items():
            dev = self.devices.get(device_id)
            if dev is None:
                continue
            try:
                self._process(dev, work)
            except Exception:
                log.exception(
                    "cannot process sample batches",
                    extra={"device": device_id, "seqs": [b.seq for b, _ in work]},
                )
                self.metrics.thread_failures.labels("process").inc()
                self.metrics.batches.labels("failed").inc(len(work))
                # Acknowledged (with no frames learned) so the agent does not resend them.
                for batch, _ in work:
                    dev.deliver(pb.TrainerMessage(batch_ack=pb.BatchAck(seq=batch.seq, frames=0)))

    @torch.no_grad()
    def _score(
        self, dev: Device, images: np.ndarray, labels: torch.Tensor
    ) -> tuple[list[float], float]:
        """Per-frame mIoU of the device's model, and the sum of the pretrained student's."""
        model = dev.session.model if dev.session is not None else None
        mious: list[float] = []
        miou_base = 0.0
        step = max(1, self.config.score_chunk)
        for i in range(0, len(images), step):
            x = to_tensor(images[i : i + step], self.device)
            truth = labels[i : i + step]
            base = self.student(x).argmax(1).cpu()
            pred = model(x).argmax(1).cpu() if model is not None else base
            mious += [
                float(frame_miou(p, t, self.num_classes)) for p, t in zip(pred, truth, strict=True)
            ]
            miou_base += sum(
                frame_miou(p, t, self.num_classes) for p, t in zip(base, truth, strict=True)
            )
        return mious, float(miou_base)

    def _process(self, dev: Device, work: list[tuple[Batch, torch.Tensor | None]]) -> None:
        """Score and learn a device's waiting batches, then acknowledge them and send the update."""
        with dev.lock:
            dev.last_active = time.monotonic()
            acks: list[tuple[int, int]] = []
            learned: list[tuple[np.ndarray, torch.Tensor, list[float]]] = []
            released: list[Sample] = []  # held-out frames that go to training now
            for batch, labels in work:
                if labels is None:  # the teacher could not label it: answered, not learned
                    self.metrics.batches.labels("failed").inc()
                    acks.append((batch.seq, 0))
                    continue
                keep = [i for i, t in enumerate(batch.times) if t > dev.last_frame_time]
                acks.append((batch.seq, len(keep)))
                if not keep:  # resent after a reconnect: already learned
                    continue
                images, kept, times = (
                    batch.images[keep],
                    labels[keep],
                    [batch.times[i] for i in keep],
                )
                per_frame = [math.nan] * len(keep)
                try:
                    per_frame, miou_base = self._score(dev, images, kept)
                    dev.scores.append(
                        Score(times[-1], sum(per_frame), miou_base, len(keep), dev.version)
                    )
                except Exception:  # e.g. out of GPU memory: the batch is still learned
                    log.exception("cannot score a batch", extra={"device": dev.device_id})
                    self.metrics.thread_failures.labels("process").inc()
                dev.frames += len(keep)
                dev.batches += 1
                dev.last_frame_time = max(times)
                dev.dirty = True
                if dev.recl is not None and dev.adapt:
                    # RECL holds some frames out of training for its safety checker.
                    train = dev.recl.window.add(images, kept, times)
                    dev.recl.accuracy += per_frame
                    del dev.recl.accuracy[:-SCENE_HISTORY]
                    if not train:
                        continue
                    images, kept, times = images[train], kept[train], [times[i] for i in train]
                if self._scored_slices and dev.adapt:
                    # The scheduler scores slices on frames the job never trains on, while it
                    # has a choice to make; otherwise every device gets its steps, none is held.
                    hold = self.scheduler.over_subscribed
                    train, freed = dev.holdout.split(images, kept, times, hold=hold)
                    released += freed
                    if not train:
                        continue
                    images, kept, times = images[train], kept[train], [times[i] for i in train]
                learned.append((images, kept, times))
            recl = self.config.recl
            if (learned or released) and dev.session is not None and dev.adapt:
                if recl is None:
                    self._ingest(dev, learned, released)
                else:
                    self._retrain(dev, learned, recl)
            window_end: list[pb.TrainerMessage] = []
            if recl is not None and dev.recl is not None and dev.session is not None and dev.adapt:
                window_end = self._recl_event(dev, recl)
            if time.monotonic() - dev.last_checkpoint >= self.config.checkpoint_interval:
                self._checkpoint_quietly(dev)
            for seq, frames in acks:
                dev.deliver(pb.TrainerMessage(batch_ack=pb.BatchAck(seq=seq, frames=frames)))
            for message in window_end:
                dev.deliver(message)
            self._send_settings(dev)

    def _recl_event(self, dev: Device, recl: ReclConfig) -> list[pb.TrainerMessage]:
        """What a device's new frames set off under RECL: the window's end; else under ams+recl
        the job's progress every ``ams.t_update``, under recl a scene change."""
        state = dev.recl
        assert state is not None
        now = dev.last_frame_time
        if state.window.due(now, recl.window_s):
            return self._end_window(dev, recl)
        if recl.streams:
            due = state.window.stream_due(now, self.config.ams.t_update)
            return self._stream(dev) if due else []
        if fell := scene_change(state.accuracy, recl.scene_drop):
            return self._scene_select(dev, recl, fell)
        return []

    def _send_settings(self, dev: Device) -> None:
        settings = self._settings(dev)
        dev.view = self._view(dev)
        if settings != dev.settings:
            dev.settings = settings
            dev.deliver(pb.TrainerMessage(settings=self._settings_message(settings)))

    def _ingest(
        self,
        dev: Device,
        learned: list[tuple[np.ndarray, torch.Tensor, list[float]]],
        released: list[Sample],
    ) -> None:
        """Add the frames to the horizon (``released``: held-out frames a newer one pushed out);
        the device waits for the next round to train on them."""
        session = dev.session
        assert session is not None
        for images, labels, times in learned:
            session.ingest(images, labels, times)
        for image, label, t in released:
            session.ingest(image[None], label[None], [t], observe=False)
        now = max([t for _, _, times in learned for t in times] + [t for _, _, t in released])
        session.control(now)
        dev.train_now = now
        self._pending[dev.device_id] = None

    # -- rounds: the scheduler shares the compute among the devices' phases ---------------
    def _train_round(self) -> None:
        """One scheduling round over every device with frames it has not trained on yet."""
        jobs: list[Job] = []
        for device_id in list(self._pending):
            dev = self.devices.get(device_id)
            if dev is None or dev.session is None or not dev.adapt or dev.train_now is None:
                self._pending.pop(device_id, None)
                continue
            if self._retrains:
                retraining = self._recl_job(dev)
                if retraining is None:
                    self._pending.pop(device_id, None)
                else:
                    jobs.append(retraining)
                continue
            gamma = None
            if dev.planner is not None:
                gamma = dev.planner.fraction(self.config.ams.gamma, time.monotonic())
                if gamma is None:  # the downlink budget is spent: the frames wait in the horizon
                    self.metrics.phases_held.inc()
                    continue
            dev.job = PhaseJob(
                device_id, dev.session, dev.lock, dev.train_now, gamma, dev.holdout.frames(),
                dev.bank(), self.num_classes, self.device,
            )  # fmt: skip
            jobs.append(dev.job)
        if not jobs:
            return
        try:
            result = self.scheduler.run(jobs, self.share)
        except Exception:
            log.exception("training round failed")
            self.metrics.thread_failures.labels("process").inc()
            result = None
        finally:
            for done in jobs:
                dev = self.devices.get(done.key)
                if dev is not None and isinstance(done, ReclJob):
                    self._retrained(dev, done)
                if dev is None or not isinstance(done, PhaseJob) or dev.job is not done:
                    continue
                try:
                    self._commit(dev, done)
                except Exception:
                    log.exception("cannot commit a phase", extra={"device": done.key})
                    self.metrics.thread_failures.labels("process").inc()
        if result is not None:
            self.last_round = result
            self.metrics.rounds.labels(result.policy, result.ended).inc()
            self.metrics.round_budget.set(result.budget)
            self.metrics.round_spent.set(result.spent)
            self.metrics.jobs_deferred.inc(len(result.deferred))

    def _recl_job(self, dev: Device) -> ReclJob | None:
        """Strategies recl and ams+recl: the device's retraining job, if it has one to run."""
        state, session, recl = dev.recl, dev.session, self.config.recl
        if state is None or session is None or recl is None or state.job is None:
            return None
        if state.retrain is None or state.optimizer is None:
            return None
        return ReclJob(
            dev.device_id, state.retrain, state.optimizer, state.job, state.job_holdout,
            dev.lock, session.generator, recl.batch_size, self.num_classes, self.device,
            urgency=drift(dev.bank()),
        )  # fmt: skip

    def _retrained(self, dev: Device, job: ReclJob) -> None:
        """After a round: what the device's retraining job did (a deferred job waits)."""
        with dev.lock:
            state = dev.recl
            if job.steps and state is not None and state.retrain is job.model:
                state.job_steps += job.steps
                self.metrics.train_seconds.observe(job.seconds)
            if job.steps or job.failed:
                self._pending.pop(dev.device_id, None)
            if job.failed:
                self.metrics.thread_failures.labels("process").inc()

    def _commit(self, dev: Device, job: PhaseJob) -> None:
        """End a job's phase after the round: log the update, send it and the new settings."""
        with dev.lock:
            dev.job = None
            if job.phase is None:  # deferred: its frames wait for the next round
                if job.failed:  # rolled back; its frames wait for the device's next batch
                    self.metrics.thread_failures.labels("process").inc()
                if job.empty or job.failed:
                    self._pending.pop(dev.device_id, None)
                return
            self._pending.pop(dev.device_id, None)
            session = dev.session
            assert session is not None
            before = dev.checksum
            update = session.commit(job.phase)
            self.metrics.train_seconds.observe(job.seconds)
            dev.checksum = model_checksum(parameter_vector(session.model))
            dev.dirty = True
            link = PendingUpdate(
                update.version, update.base_version, encode_update(update), before, dev.checksum
            )
            if dev.planner is not None:
                dev.planner.update_sent(len(link.data), len(update.indices))
                dev.planner.last_fraction = job.gamma
            if self._log_update(dev, link):
                dev.updates_sent += 1
                self.metrics.updates.labels("sparse").inc()
                dev.deliver(pb.TrainerMessage(update=update_message(link.data, link.checksum)))
            self._send_settings(dev)

    def _log_update(self, dev: Device, link: PendingUpdate) -> bool:
        """Append an update to the device's log and chain; False if it cannot be logged (then it
        must not be sent: the device catches up later)."""
        if self.store is not None:
            t0 = time.perf_counter()
            try:
                self.store.append(
                    dev.device_id,
                    UpdateRecord(
                        link.version,
                        link.base_version,
                        link.base_checksum,
                        link.checksum,
                        dev.last_frame_time,
                        link.data,
                    ),
                )
            except OSError:
                # Not on disk, so not sent: the device catches up (chain or snapshot) later.
                log.exception(
                    "cannot log an update; holding it back", extra={"device": dev.device_id}
                )
                self.metrics.thread_failures.labels("process").inc()
                return False
            finally:
                self.metrics.persist_seconds.observe(time.perf_counter() - t0)
        with dev.chain_lock:
            dev.chain.append(link)
            dev.chain = dev.chain[-self.config.chain_length :]
        return True

    # -- RECL ---------------------------------------------------------------------------
    def _retrain(
        self,
        dev: Device,
        learned: list[tuple[np.ndarray, torch.Tensor, list[float]]],
        recl: ReclConfig,
    ) -> None:
        """Strategies recl and ams+recl: the frames join the AMS horizon (its controller still
        sets the sampling rate), and the device's retraining job (on the horizon's frames)
        waits for the next round; under recl nothing is sent before the window ends."""
        session, state = dev.session, dev.recl
        assert session is not None
        assert state is not None
        for images, labels, times in learned:
            session.ingest(images, labels, times)
        now = max(t for _, _, times in learned for t in times)
        session.control(now)
        if state.retrain is not None and state.optimizer is not None and state.job is not None:
            dev.train_now = now
            self._pending[dev.device_id] = None

    def _miou_of(self, flat: torch.Tensor, images: np.ndarray, labels: torch.Tensor) -> float:
        """Mean per-frame mIoU against the teacher of the model with parameters ``flat``."""
        torch.nn.utils.vector_to_parameters(
            flat.to(self.device), [p for p in self._scratch.parameters() if p.requires_grad]
        )
        scores = per_frame_miou(
            self._scratch, images, labels.long(), self.num_classes,
            batch=max(1, self.config.score_chunk), device=self.device,
        )  # fmt: skip
        return float(scores.mean()) if len(scores) else 0.0

    def _end_window(self, dev: Device, recl: ReclConfig) -> list[pb.TrainerMessage]:
        """Select, check, switch, offer, record; then start the next window (see trainer.recl)."""
        session, state = dev.session, dev.recl
        assert session is not None
        assert state is not None
        assert self.gating is not None
        t0 = time.perf_counter()
        window = state.window
        held_images, held_labels = window.held_out()
        selected, selected_labels = window.recent(SELECT_FRAMES)
        # The candidates are scored on the frames sent to Select: none has trained on any (the
        # retraining job's frames end where the window begins; under ams+recl what it streamed
        # during the window is the device's model).
        current = session.optimizer.flat_params().detach().cpu().clone()
        candidates: dict[str, torch.Tensor] = {"current": current}
        retrained: str | None = None
        if state.retrain is not None and state.job_steps:
            retrained = "retrained"
            candidates["retrained"] = self._job_model(state)
        experts, reachable = self._reuse(dev, selected, candidates)
        verdict = self._check(recl, candidates, selected, selected_labels, retrained, experts)
        messages: list[pb.TrainerMessage] = []
        if verdict.winner == "current":
            pick = state.expert
        else:
            pick = experts.get(verdict.winner, "")
            # Under ams+recl a switch may take the link until AMS's next update, not the next
            # window's end: one that fills a window's link holds AMS's updates for a window.
            horizon = self.config.ams.t_update if recl.streams else recl.window_s
            message = self._deploy(dev, candidates[verdict.winner], pick, horizon)
            if message is not None:
                messages.append(message)
        if reachable:
            try:
                if verdict.promising and retrained is not None:
                    self._offer(dev, window, candidates[retrained])
                self.gating.record([pick])
            except GatingError as exc:
                state.gating_errors += 1
                log.warning(
                    "cannot reach the gating service at the window's end",
                    extra={"device": dev.device_id, "error": str(exc)},
                )
        state.windows += 1
        shown = self._note_selection(dev, "window end", verdict, pick)
        # The next window's retraining starts from the winner.
        state.window = window.next()
        own = verdict.winner in ("current", "retrained")
        self._start_job(dev, recl, (held_images, held_labels), continued(state.optimizer, own))
        self.metrics.recl_seconds.observe(time.perf_counter() - t0)
        log.info(
            "window ended",
            extra={
                "device": dev.device_id,
                "window": window.index,
                "winner": verdict.winner,
                "scores": shown,
                "promising": verdict.promising,
                "version": dev.version,
            },
        )
        return messages

    def _stream(self, dev: Device) -> list[pb.TrainerMessage]:
        """Strategy ams+recl, every ``ams.t_update`` seconds of a window: what the device's
        retraining job has learned so far (its ``gamma`` fraction of change, as at the window's
        end) goes to the device as a sparse update, at AMS's cadence rather than the window's;
        the window's end still picks among that, the job's model and the zoo's experts."""
        state = dev.recl
        assert state is not None
        state.window.streamed += 1
        if state.retrain is None or not state.job_steps:
            return []  # the first window, or the job has not run yet: nothing new
        message = self._deploy(
            dev, self._job_model(state), "", self.config.ams.t_update, streamed=True
        )
        return [message] if message is not None else []

    def _start_job(
        self,
        dev: Device,
        recl: ReclConfig,
        holdout: tuple[np.ndarray, torch.Tensor] | None,
        moments: dict[str, Any] | None = None,
    ) -> None:
        """The device's retraining job starts from the model it runs, on the AMS
        horizon's frames (the window's training frames so far and older ones), with Adam's
        ``moments`` when it goes on with the last job's line (``continued``), else afresh; its
        slices are scored on ``holdout``."""
        session, state = dev.session, dev.recl
        assert session is not None
        assert state is not None
        state.retrain = copy.deepcopy(session.model)
        freeze_batchnorm(state.retrain)
        state.optimizer = torch.optim.Adam(state.retrain.parameters(), lr=recl.lr)
        if moments is not None:
            state.optimizer.load_state_dict(moments)
        frames, kept = session.buffer.recent(dev.last_frame_time)
        state.job, state.job_steps = ((frames, kept) if frames else None), 0
        state.job_start = parameter_vector(state.retrain).detach().cpu().clone()
        state.job_holdout = holdout

    def _check(
        self,
        recl: ReclConfig,
        candidates: dict[str, torch.Tensor],
        images: np.ndarray,
        labels: torch.Tensor,
        retrained: str | None,
        experts: Collection[str],
    ) -> Verdict:
        """The safety checker on the candidates' mIoU against the teacher on ``images``: the
        device's model (``current``) wins ties, a zoo expert (``experts``) wins only by the
        policy's switching margin."""
        scores = {key: self._miou_of(flat, images, labels) for key, flat in candidates.items()}
        return safety_check(
            scores,
            current="current",
            retrained=retrained,
            alpha=self._alpha,
            experts=experts,
            margin=recl.switch_margin,
        )

    def _job_model(self, state: DeviceRecl) -> torch.Tensor:
        """The retraining job's model as a candidate, the ``gamma`` fraction of
        its change from where it started (``top_change``)."""
        assert state.retrain is not None
        assert state.job_start is not None  # both set as the job starts
        after = parameter_vector(state.retrain).detach().cpu()
        return top_change(state.job_start, after, self.config.ams.gamma)

    def _reuse(
        self, dev: Device, selected: np.ndarray, candidates: dict[str, torch.Tensor]
    ) -> tuple[dict[str, str], bool]:
        """Add the gating service's top-K experts for ``selected`` to ``candidates``; returns
        candidate key -> expert id, and whether the service answered (when it does not, the
        selection goes on without reuse and the failure is counted)."""
        assert dev.recl is not None
        assert self.gating is not None
        experts: dict[str, str] = {}
        try:
            top_k, self._alpha = self.gating.zoo_params()
            _, choices = self.gating.select(selected, top_k)
            for choice in choices:
                key = f"expert:{choice.id}"
                candidates[key] = self.gating.expert(choice, self.student.arch, self.student)
                experts[key] = choice.id
        except GatingError as exc:
            dev.recl.gating_errors += 1
            self.metrics.thread_failures.labels("gating").inc()
            log.warning(
                "gating service unavailable; the selection goes on without reuse",
                extra={"device": dev.device_id, "error": str(exc)},
            )
            return {}, False
        return experts, True

    def _scene_select(self, dev: Device, recl: ReclConfig, fell: int) -> list[pb.TrainerMessage]:
        """Strategy recl, a scene change within a window (its last ``fell`` frames show the new
        scene): the safety checker picks among the device's model, its last retrained one and
        the zoo's top-K for the frames since the change, at once rather than at the window's
        end, and the retraining job restarts from the winner. The window and admission go on;
        the window's end selects on the frames since the change."""
        session, state = dev.session, dev.recl
        assert session is not None
        assert state is not None
        assert self.gating is not None
        t0 = time.perf_counter()
        window = state.window
        window.since = max(window.since, len(window.images) - fell)
        images, labels = window.recent(SELECT_FRAMES)
        candidates = {"current": session.optimizer.flat_params().detach().cpu().clone()}
        if state.retrain is not None and state.job_steps:
            candidates["retrained"] = self._job_model(state)
        experts, reachable = self._reuse(dev, images, candidates)
        verdict = self._check(recl, candidates, images, labels, None, experts)
        messages: list[pb.TrainerMessage] = []
        pick = state.expert
        if verdict.winner != "current":
            pick = experts.get(verdict.winner, "")
            message = self._deploy(dev, candidates[verdict.winner], pick, recl.window_s)
            if message is not None:
                messages.append(message)
        if reachable:
            try:
                self.gating.record([pick])
            except GatingError as exc:
                state.gating_errors += 1
                log.warning(
                    "cannot reach the gating service after a scene change",
                    extra={"device": dev.device_id, "error": str(exc)},
                )
        state.accuracy = []  # the next check needs a baseline of the model now chosen
        state.scene_changes += 1
        # The job restarts from the winner on the horizon as it is now, which holds the new
        # scene's training frames (the job that began with the window had none of them); its
        # slices are scored on the held-out frames since the change once there are any.
        held = window.held_out_since(window.since)
        self._start_job(dev, recl, held if held is not None else state.job_holdout)
        shown = self._note_selection(dev, "scene change", verdict, pick)
        self.metrics.recl_seconds.observe(time.perf_counter() - t0)
        log.info(
            "scene change",
            extra={
                "device": dev.device_id,
                "window": window.index,
                "winner": verdict.winner,
                "scores": shown,
                "version": dev.version,
            },
        )
        return messages

    def _note_selection(
        self, dev: Device, event: str, verdict: Verdict, pick: str
    ) -> dict[str, float]:
        """Remember a selection for /status (the last 16) and pruning's view of the picks;
        returns the candidates' scores as /status and the log give them."""
        state = dev.recl
        assert state is not None
        window = state.window
        shown = {k: round(100 * v, 2) for k, v in verdict.scores.items()}
        state.history.append(
            {
                "window": window.index,
                "event": event,
                "start": window.start,
                "end": dev.last_frame_time,
                "winner": verdict.winner,
                "expert": state.expert or None,
                "held_by_margin": verdict.held,
                "scores": shown,
            }
        )
        if verdict.held is not None:
            state.margin_holds += 1
        state.last_pick = verdict.winner
        state.last_scores = dict(verdict.scores)
        if pick:
            state.picks[pick] += 1
        return shown

    def _offer(self, dev: Device, window: Any, flat: torch.Tensor) -> None:
        """Offer a promising retrained model to the zoo, with the window it learned."""
        assert dev.recl is not None
        assert self.gating is not None
        model = copy.deepcopy(self.student)
        torch.nn.utils.vector_to_parameters(
            flat.to(self.device), [p for p in model.parameters() if p.requires_grad]
        )
        buf = io.BytesIO()
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({"model": state, "ids": {"arch": model.arch, "config": model.config}}, buf)
        images, labels = window.all_frames(self.config.admit_frames)
        reply = self.gating.admit(
            f"{dev.device_id}-w{window.index}-{self.trainer_id or 'trainer'}",
            buf.getvalue(),
            dev.device_id,
            window.index,
            images,
            labels,
        )
        dev.recl.offered += 1
        log.info(
            "offered a retrained model to the zoo",
            extra={"device": dev.device_id, "window": window.index, "queued": reply.queued},
        )

    def _deploy(
        self,
        dev: Device,
        flat: torch.Tensor,
        expert_id: str,
        horizon_s: float = 30.0,
        streamed: bool = False,
    ) -> pb.TrainerMessage | None:
        """Make ``flat`` the device's model: a cached switch, or one versioned, logged update.

        The model is rounded to float16 whatever way it travels, so the device holds exactly
        the trainer's copy: as a switch to the agent's cached copy, or as the coordinates that
        differ (every coordinate when that is smaller; the encoder picks the coding). On a
        budgeted downlink an update carries at most what the link carries in ``horizon_s``
        (until the next window's end, or AMS's next update): the coordinates that change
        most, so the device moves part of the way (and runs no zoo expert exactly) rather than
        falling behind by a model per window. A ``streamed`` one (ams+recl's progress within a
        window) is counted as a sparse update, not a switch.
        """
        session, state = dev.session, dev.recl
        assert session is not None
        assert state is not None
        target = flat.detach().cpu().to(torch.float16).to(torch.float32)
        before = session.optimizer.flat_params().detach().cpu()
        changed = torch.nonzero(target != before).squeeze(1)
        if len(changed) == 0:
            state.expert = expert_id
            return None
        checksum = model_checksum(target)
        with dev.chain_lock:
            cached = bool(expert_id) and state.cached.get(expert_id) == checksum
        if not cached:
            room = self._switch_room(dev, horizon_s)
            if room is not None and len(changed) > room:
                if room < MIN_SWITCH_COORDS:
                    state.switches_held += not streamed
                    return None  # the link is busy with the last one: the device stays
                delta = (target[changed] - before[changed]).abs()
                changed = changed[torch.topk(delta, room).indices].sort().values
                target = before.clone()
                target[changed] = flat.detach().cpu().to(torch.float16).to(torch.float32)[changed]
                checksum = model_checksum(target)
                expert_id = ""  # part of the way: not the expert itself
                state.partial_switches += not streamed
        base = session.version
        update = ModelUpdate(
            version=base + 1,
            base_version=base,
            num_params=int(target.numel()),
            indices=changed.numpy().astype(np.int64),
            values=target[changed].half().numpy(),
        )
        link = PendingUpdate(base + 1, base, encode_update(update), dev.checksum, checksum)
        if not self._log_update(dev, link):
            return None
        session.optimizer.set_flat_params(target.to(self.device))
        # A new starting point: AMS's moments and last update belong to the old one.
        session.optimizer = MaskedAdam(session.model.parameters(), lr=self.config.ams.lr)
        session.version = base + 1
        dev.checksum = checksum
        dev.updates_sent += 1
        state.expert = expert_id
        state.accuracy = []  # a new model: its own record of per-frame accuracy
        if streamed:
            state.streamed += 1
        else:
            state.switches += 1
        with dev.chain_lock:
            if cached:
                state.cached.move_to_end(expert_id)
                state.switch_pending = expert_id
            else:
                state.remember(expert_id, checksum)
        if cached:
            state.switches_cached += 1
            self.metrics.updates.labels("switch").inc()
            message = pb.TrainerMessage(
                switch_expert=pb.SwitchExpert(
                    expert_id=expert_id,
                    version=base + 1,
                    base_version=base,
                    model_checksum=checksum,
                )
            )
        else:
            kind = "sparse" if streamed else "expert" if expert_id else "retrained"
            self.metrics.updates.labels(kind).inc()
            message = pb.TrainerMessage(
                update=update_message(link.data, checksum, expert_id=expert_id)
            )
            if dev.planner is not None:
                dev.planner.update_sent(len(link.data), len(changed))
        state.switch_bytes += message.ByteSize()
        return message

    def _switch_room(self, dev: Device, horizon_s: float) -> int | None:
        """Coordinates an update may carry on the device's downlink budget in ``horizon_s``
        (what its planner's bucket holds now, plus that long's refill); None without a
        downlink budget."""
        planner = dev.planner
        if planner is None or planner.down is None:
            return None
        now = time.monotonic()
        room = planner.down.refill(now) + planner.down.rate * horizon_s
        return max(0, int(room / max(planner.bytes_per_coord, 1e-6)))

    def _checkpoint_quietly(self, dev: Device) -> None:
        try:
            self._checkpoint(dev)
        except Exception:  # the update log still holds every update sent
            log.exception("cannot checkpoint device state", extra={"device": dev.device_id})
            self.metrics.thread_failures.labels("process").inc()

    # -- housekeeping (worker thread, about once a second) ------------------------------
    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_housekeeping < 1.0:
            return
        self._last_housekeeping = now
        if now - self._last_telemetry >= TELEMETRY_INTERVAL:
            self._last_telemetry = now
            if self.telemetry.poll() is not None:
                self.share = self.telemetry.share
        for dev in list(self.devices.values()):
            try:
                self._tend(dev, now)
            except Exception:
                log.exception("housekeeping failed", extra={"device": dev.device_id})
                self.metrics.thread_failures.labels("housekeeping").inc()
        self._update_gauges()

    def _tend(self, dev: Device, now: float) -> None:
        deferred = self.catchup.due(dev, now)
        if deferred is not None:
            with dev.lock:
                for message in self.catchup.serve(dev, *deferred):
                    dev.deliver(message)
        connected = dev.send is not None
        if connected and dev.planner is not None and dev.lock.acquire(blocking=False):
            # The budget's plan moves with time (a debt paid back, tokens saved), not only when
            # a batch arrives: a device slowed to a trickle is told when it may speed up.
            try:
                settings = self._settings(dev)
                if _moved(dev.settings, settings):
                    dev.settings = settings
                    dev.deliver(pb.TrainerMessage(settings=self._settings_message(settings)))
            finally:
                dev.lock.release()
        due = dev.dirty and now - dev.last_checkpoint >= self.config.checkpoint_interval
        if due and dev.lock.acquire(blocking=False):
            try:
                self._checkpoint_quietly(dev)
            finally:
                dev.lock.release()
        if not connected and now - dev.last_active >= self.config.idle_evict_after:
            self._evict(dev)

    def _evict(self, dev: Device) -> None:
        """Checkpoint an idle device and drop it from memory; a reconnect restores it."""
        if self.store is None or not dev.lock.acquire(blocking=False):
            return
        try:
            if dev.dirty:
                self._checkpoint(dev)
            with self._devices_lock:
                if dev.send is not None or self.in_flight(dev.device_id):
                    return
                dev.evicted = True
                self.devices.pop(dev.device_id, None)
        finally:
            dev.lock.release()
        # Housekeeping runs on the worker thread, as rounds do: the scheduler's measurements of
        # the device (step time, held-out score) go with it, and a reconnect starts them anew.
        self.scheduler.forget(dev.device_id)
        self.metrics.evictions.inc()
        log.info("idle device evicted from memory", extra={"device": dev.device_id})

    # -- status -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Per-device summaries; never waits for a training phase in progress."""
        devices = []
        for dev in sorted(self.devices.values(), key=lambda d: d.device_id):
            if dev.lock.acquire(blocking=False):
                try:
                    dev.view = self._view(dev)
                finally:
                    dev.lock.release()
            devices.append({**dev.view, "connected": dev.send is not None})
        with self._queue_lock:
            queued, queued_bytes = self._queued, self._queued_bytes
        return {
            "devices": devices,
            "queued_batches": queued,
            "queued_bytes": queued_bytes,
            "worker_alive": self.healthy(),
            "scheduler": scheduler_view(self.scheduler, self.last_round, self.share),
            "gpu": self.telemetry.view(),
            "limits": {
                "max_batch_frames": self.limits.max_frames,
                "max_batch_bytes": self.limits.max_bytes,
                "max_batch_decoded_bytes": self.limits.max_decoded_bytes,
                "input_size": list(self.limits.input_size) if self.limits.input_size else None,
            },
        }

    def _view(self, dev: Device) -> dict[str, Any]:
        return device_view(
            dev,
            dev.settings or self._settings(dev),
            self.config.ams.gamma,
            self.scheduler,
            dev.device_id in self._pending,
        )


def _moved(old: tuple[float, float] | None, new: tuple[float, float]) -> bool:
    """Whether new settings differ enough to be sent (10 % in rate or interval)."""
    if old is None:
        return True
    return any(abs(n - o) > 0.1 * max(abs(o), 1e-9) for o, n in zip(old, new, strict=True))
