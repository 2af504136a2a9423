"""The trainer's device hub: per-device AMS state, batched teacher labelling, round-robin training.

The hub knows nothing of gRPC. The server hands it each device's stream as two callables (send a
message, close the stream) and feeds it decoded sample batches; one worker thread does all model
work in cycles:

1. take every sample batch that is waiting, from every device;
2. label all their frames with the teacher in one pass (batched across devices);
3. visit the devices round-robin, one batch each per turn: score the device's current model on
   the new frames against the teacher labels (test, then train), add the frames to its horizon
   buffer, tick ASR/ATR, run one AMS training phase, persist the device's state, then send the
   batch acknowledgement, the update and the new settings.

State is persisted before an update leaves the trainer, so a trainer killed at any point never
has sent a version it cannot resume from. Updates not yet acknowledged are kept (a short chain);
a device that reconnects behind the trainer receives the updates it missed, or a float32
snapshot of its model when the chain does not reach back to its version.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edgeadapt._proto.stream.v1 import stream_pb2 as pb
from edgeadapt.adapt.ams import AMSConfig, AMSSession, Teacher
from edgeadapt.adapt.metrics import frame_miou
from edgeadapt.adapt.update import (
    encode_update,
    model_checksum,
    parameter_vector,
    snapshot_update,
)
from edgeadapt.models.data import to_tensor
from edgeadapt.models.zoo import SegmentationModel
from edgeadapt.stream.messages import update_message
from edgeadapt.trainer.metrics import TrainerMetrics
from edgeadapt.trainer.store import DeviceStore

log = logging.getLogger(__name__)

Send = Callable[[pb.TrainerMessage], None]
Close = Callable[[str], None]


class PreconditionError(Exception):
    """The device cannot be served by this trainer (another student, another task)."""


@dataclass(frozen=True)
class Batch:
    seq: int
    images: np.ndarray  # N x H x W x 3 uint8, decoded from what crossed the wire
    times: list[float]  # capture times, Unix seconds


@dataclass(frozen=True)
class Link:
    """One sent update the device has not acknowledged yet."""

    version: int
    base_version: int
    data: bytes
    base_checksum: int
    checksum: int


@dataclass
class Device:
    device_id: str
    adapt: bool
    session: AMSSession | None
    checksum: int
    lock: threading.RLock = field(
        default_factory=threading.RLock
    )  # model state; held while training
    conn_lock: threading.Lock = field(default_factory=threading.Lock)  # send/close; never held long
    chain: list[Link] = field(default_factory=list)
    acked_version: int = 0
    last_frame_time: float = 0.0
    # (time of the batch's last frame, sum of per-frame mIoU, same for the pretrained student,
    #  frames, model version scored)
    scores: collections.deque[tuple[float, float, float, int, int]] = field(
        default_factory=lambda: collections.deque(maxlen=4096)
    )
    frames: int = 0
    batches: int = 0
    updates_sent: int = 0
    snapshots_sent: int = 0
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    settings: tuple[float, float] | None = None
    send: Send | None = None
    close: Close | None = None
    connected_at: float | None = None
    snapshot: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return self.session.version if self.session is not None else 0

    def deliver(self, message: pb.TrainerMessage) -> None:
        send = self.send
        if send is not None:
            send(message)


@dataclass(frozen=True)
class HubConfig:
    ams: AMSConfig = field(default_factory=AMSConfig)
    chain_length: int = 8  # unacknowledged updates kept for a reconnecting device
    max_queue: int = 256  # waiting batches, all devices; beyond it submit() blocks


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
    ) -> None:
        self.config = config
        self.store = store
        self.device = device
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
        self.devices: dict[str, Device] = {}
        self._devices_lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, Batch] | None] = queue.Queue(config.max_queue)
        self._in_flight: dict[str, int] = {}  # batches submitted and not yet processed
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._worker = threading.Thread(target=self._run, name="hub-worker", daemon=True)
        self._worker.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in progress, persist every device, close every stream."""
        self._stopping.set()
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout)
        for dev in list(self.devices.values()):
            with dev.lock:
                self._persist(dev)
            with dev.conn_lock:
                if dev.close is not None:
                    dev.close("trainer shutting down")
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
        dev = self._device(register.device_id, register.adapt)
        with dev.lock:
            if register.adapt and dev.session is None:
                dev.session = self._new_session()
                dev.adapt = True
            elif not register.adapt:
                dev.adapt = False
            with dev.conn_lock:
                if dev.close is not None:
                    dev.close("replaced by a newer stream for the same device")
                dev.send, dev.close, dev.connected_at = send, close, time.time()
            rate, interval = self._settings(dev)
            dev.settings = (rate, interval)
            messages = [
                pb.TrainerMessage(
                    welcome=pb.Welcome(
                        model_version=dev.version,
                        settings=pb.Settings(sampling_rate_fps=rate, update_interval_s=interval),
                    )
                )
            ]
            messages += self._catch_up(dev, register.model_version, register.model_checksum)
            dev.snapshot = self._snapshot(dev)
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
        self._update_gauges()

    def submit(self, device_id: str, batch: Batch) -> None:
        with self._devices_lock:
            self._in_flight[device_id] = self._in_flight.get(device_id, 0) + 1
        self._queue.put((device_id, batch))
        self.metrics.queue.set(self._queue.qsize())

    def in_flight(self, device_id: str) -> int:
        """Batches of this device that were submitted and are not processed yet."""
        with self._devices_lock:
            return self._in_flight.get(device_id, 0)

    def ack(self, device_id: str, ack: pb.UpdateAck) -> None:
        dev = self.devices[device_id]
        with dev.lock:
            if ack.applied:
                dev.acked_version = max(dev.acked_version, ack.version)
                dev.chain = [link for link in dev.chain if link.version > dev.acked_version]
            else:
                log.warning(
                    "device rejected an update",
                    extra={"device": device_id, "version": ack.version, "reason": ack.reason},
                )

    def resync(self, device_id: str, request: pb.ResyncRequest) -> list[pb.TrainerMessage]:
        dev = self.devices[device_id]
        with dev.lock:
            return self._catch_up(dev, request.have_version, request.have_checksum)

    def count_bytes(self, device_id: str, up: int = 0, down: int = 0) -> None:
        dev = self.devices.get(device_id)
        if dev is not None:
            dev.uplink_bytes += up
            dev.downlink_bytes += down
        if up:
            self.metrics.stream_bytes.labels("up").inc(up)
        if down:
            self.metrics.stream_bytes.labels("down").inc(down)

    # -- device state -------------------------------------------------------------------
    def _new_session(self) -> AMSSession:
        return AMSSession(self.student, self.config.ams, self.num_classes, self.device)

    def _device(self, device_id: str, adapt: bool) -> Device:
        with self._devices_lock:
            dev = self.devices.get(device_id)
            if dev is None:
                dev = self._restore(device_id) or Device(
                    device_id,
                    adapt,
                    self._new_session() if adapt else None,
                    self.base_checksum,
                )
                self.devices[device_id] = dev
            return dev

    def _restore(self, device_id: str) -> Device | None:
        state = self.store.load(device_id) if self.store is not None else None
        if state is None:
            return None
        session = None
        if state["session"] is not None:
            session = self._new_session()
            session.load_state_dict(state["session"])
        dev = Device(device_id, bool(state["adapt"]), session, int(state["checksum"]))
        dev.chain = [Link(*link) for link in state["chain"]]
        dev.acked_version = int(state["acked_version"])
        dev.last_frame_time = float(state["last_frame_time"])
        dev.scores.extend(tuple(s) for s in state["scores"])
        for key in ("frames", "batches", "updates_sent", "snapshots_sent"):
            setattr(dev, key, int(state["counters"][key]))
        log.info(
            "device state restored",
            extra={"device": device_id, "version": dev.version, "frames": dev.frames},
        )
        return dev

    def _persist(self, dev: Device) -> None:
        if self.store is None:
            return
        t0 = time.perf_counter()
        self.store.save(
            dev.device_id,
            {
                "device_id": dev.device_id,
                "adapt": dev.adapt,
                "session": dev.session.state_dict() if dev.session is not None else None,
                "checksum": dev.checksum,
                "chain": [
                    (k.version, k.base_version, k.data, k.base_checksum, k.checksum)
                    for k in dev.chain
                ],
                "acked_version": dev.acked_version,
                "last_frame_time": dev.last_frame_time,
                "scores": list(dev.scores),
                "counters": {
                    "frames": dev.frames,
                    "batches": dev.batches,
                    "updates_sent": dev.updates_sent,
                    "snapshots_sent": dev.snapshots_sent,
                },
            },
        )
        self.metrics.persist_seconds.observe(time.perf_counter() - t0)

    def _settings(self, dev: Device) -> tuple[float, float]:
        if dev.session is not None:
            return dev.session.settings()
        # A device that does not adapt is only scored, at AMS's initial rate and interval.
        return self.config.ams.r_init, self.config.ams.t_update

    def _catch_up(self, dev: Device, have: int, have_checksum: int) -> list[pb.TrainerMessage]:
        if have == dev.version and have_checksum == dev.checksum:
            return []
        links = [k for k in dev.chain if k.version > have]
        contiguous = all(a.version == b.base_version for a, b in itertools.pairwise(links))
        if (
            links
            and links[0].base_version == have
            and links[0].base_checksum == have_checksum
            and links[-1].version == dev.version
            and contiguous
        ):
            self.metrics.updates.labels("sparse").inc(len(links))
            return [pb.TrainerMessage(update=update_message(k.data, k.checksum)) for k in links]
        model = dev.session.model if dev.session is not None else self.student
        flat = parameter_vector(model).cpu()
        data = encode_update(snapshot_update(flat, dev.version))
        dev.snapshots_sent += 1
        self.metrics.updates.labels("snapshot").inc()
        log.info(
            "sending a snapshot",
            extra={"device": dev.device_id, "have": have, "version": dev.version},
        )
        return [pb.TrainerMessage(update=update_message(data, dev.checksum, snapshot=True))]

    def _update_gauges(self) -> None:
        self.metrics.devices_known.set(len(self.devices))
        self.metrics.devices_connected.set(
            sum(1 for d in self.devices.values() if d.send is not None)
        )

    # -- the worker ---------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            item = self._queue.get()
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
            self.metrics.queue.set(self._queue.qsize())
            try:
                self._cycle(items)
            except Exception:
                log.exception("worker cycle failed")
            finally:
                with self._devices_lock:
                    for device_id, _ in items:
                        self._in_flight[device_id] -= 1

    def _cycle(self, items: list[tuple[str, Batch]]) -> None:
        t0 = time.perf_counter()
        images = np.concatenate([b.images for _, b in items])
        labels = self.teacher.label(images)
        self.metrics.label_seconds.observe(time.perf_counter() - t0)
        self.metrics.frames_labelled.inc(len(images))
        per_device: dict[str, list[tuple[Batch, torch.Tensor]]] = {}
        start = 0
        for device_id, batch in items:
            n = len(batch.images)
            per_device.setdefault(device_id, []).append((batch, labels[start : start + n]))
            start += n
        # Round-robin: one batch per device per turn.
        queues = [collections.deque(v) for v in per_device.values()]
        ids = list(per_device)
        while any(queues):
            for device_id, q in zip(ids, queues, strict=True):
                if q:
                    batch, lab = q.popleft()
                    self._process(self.devices[device_id], batch, lab)

    @torch.no_grad()
    def _score(self, dev: Device, images: np.ndarray, labels: torch.Tensor) -> tuple[float, float]:
        x = to_tensor(images, self.device)
        base = self.student(x).argmax(1).cpu()
        if dev.session is not None:
            model = dev.session.model
            pred = model(x).argmax(1).cpu()
        else:
            pred = base
        miou = sum(frame_miou(p, t, self.num_classes) for p, t in zip(pred, labels, strict=True))
        miou_base = sum(
            frame_miou(p, t, self.num_classes) for p, t in zip(base, labels, strict=True)
        )
        return float(miou), float(miou_base)

    def _process(self, dev: Device, batch: Batch, labels: torch.Tensor) -> None:
        with dev.lock:
            keep = [i for i, t in enumerate(batch.times) if t > dev.last_frame_time]
            update = None
            if keep:
                images = batch.images[keep]
                labels = labels[keep]
                times = [batch.times[i] for i in keep]
                now = times[-1]
                miou, miou_base = self._score(dev, images, labels)
                dev.scores.append((now, miou, miou_base, len(keep), dev.version))
                dev.frames += len(keep)
                dev.batches += 1
                dev.last_frame_time = max(times)
                if dev.session is not None:
                    dev.session.ingest(images, labels, times)
                    dev.session.control(now)
                    t0 = time.perf_counter()
                    before = dev.checksum
                    update = dev.session.train_phase(now)
                    if update is not None:
                        self.metrics.train_seconds.observe(time.perf_counter() - t0)
                        dev.checksum = model_checksum(parameter_vector(dev.session.model))
                        dev.chain.append(
                            Link(
                                update.version,
                                update.base_version,
                                encode_update(update),
                                before,
                                dev.checksum,
                            )
                        )
                        dev.chain = dev.chain[-self.config.chain_length :]
                self._persist(dev)
            dev.deliver(pb.TrainerMessage(batch_ack=pb.BatchAck(seq=batch.seq, frames=len(keep))))
            if update is not None:
                link = dev.chain[-1]
                dev.updates_sent += 1
                self.metrics.updates.labels("sparse").inc()
                dev.deliver(pb.TrainerMessage(update=update_message(link.data, link.checksum)))
            settings = self._settings(dev)
            dev.snapshot = self._snapshot(dev)
            if settings != dev.settings:
                dev.settings = settings
                dev.deliver(
                    pb.TrainerMessage(
                        settings=pb.Settings(
                            sampling_rate_fps=settings[0], update_interval_s=settings[1]
                        )
                    )
                )

    # -- status -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Per-device summaries; never waits for a training phase in progress."""
        devices = []
        for dev in sorted(self.devices.values(), key=lambda d: d.device_id):
            if dev.lock.acquire(blocking=False):
                try:
                    dev.snapshot = self._snapshot(dev)
                finally:
                    dev.lock.release()
            devices.append({**dev.snapshot, "connected": dev.send is not None})
        return {"devices": devices, "queued_batches": self._queue.qsize()}

    def _snapshot(self, dev: Device, history: int = 400) -> dict[str, Any]:
        scores = list(dev.scores)
        settings = dev.settings or self._settings(dev)
        recent_from = scores[-1][0] - 60.0 if scores else 0.0
        recent = [s for s in scores if s[0] >= recent_from]
        step = max(1, len(scores) // history)
        checksums = {str(k.base_version): f"{k.base_checksum:08x}" for k in dev.chain}
        checksums |= {str(k.version): f"{k.checksum:08x}" for k in dev.chain}
        checksums[str(dev.version)] = f"{dev.checksum:08x}"
        return {
            "id": dev.device_id,
            "adapt": dev.adapt,
            "model_version": dev.version,
            "acked_version": dev.acked_version,
            "model_checksum": f"{dev.checksum:08x}",
            "checksums": checksums,
            "frames": dev.frames,
            "batches": dev.batches,
            "miou_teacher": _mean(scores, 1),
            "miou_teacher_no_adaptation": _mean(scores, 2),
            "miou_teacher_last_60s": _mean(recent, 1),
            "sampling_rate_fps": round(settings[0], 3),
            "update_interval_s": round(settings[1], 2),
            "updates_sent": dev.updates_sent,
            "snapshots_sent": dev.snapshots_sent,
            "uplink_bytes": dev.uplink_bytes,
            "downlink_bytes": dev.downlink_bytes,
            "history": [
                [round(s[0], 2), round(100 * s[1] / s[3], 2), round(100 * s[2] / s[3], 2)]
                for s in scores[::step]
            ],
        }


def _mean(scores: list[tuple[float, float, float, int, int]], k: int) -> float | None:
    n = sum(s[3] for s in scores)
    return round(100 * sum(s[k] for s in scores) / n, 2) if n else None
