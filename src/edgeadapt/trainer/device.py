"""One device's state in the trainer: a record that saves and restores itself.

A :class:`Device` holds everything the trainer knows of one edge device: its AMS session (model,
optimizer, horizon buffer, controllers), the chain of updates it has not acknowledged, what the
agent last said it runs, its scores against the teacher, link accounting, and the scheduler's
per-device state (frames waiting for a round, held-out frames, the open phase).

Persistence (:mod:`edgeadapt.trainer.store`): :meth:`Device.save` writes the whole state as one
checkpoint; :meth:`Device.load` reads it back and replays the update log written after it, so a
trainer killed at any point resumes at the last version it sent. A device never checkpointed but
with logged updates is rebuilt by replaying them onto the pretrained student.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from edgeadapt._proto.stream.v1 import stream_pb2 as pb
from edgeadapt.adapt.ams import AMSSession
from edgeadapt.adapt.update import apply_update, decode_update, model_checksum, parameter_vector
from edgeadapt.stream.messages import MAX_BATCH_BYTES
from edgeadapt.trainer.budget import LinkPlanner
from edgeadapt.trainer.jobs import PhaseJob
from edgeadapt.trainer.recl import DeviceRecl
from edgeadapt.trainer.store import DeviceStore, UpdateRecord, pack_tensor, unpack_tensor

log = logging.getLogger(__name__)

Send = Callable[[pb.TrainerMessage], None]

HOLDOUT_EVERY = 4  # micro-window, urgency: every 4th frame is held out to score slices
HOLDOUT_FRAMES = 6  # the newest held-out frames a job is scored on
DRIFT_FRAMES = 90  # EdgeSync's accuracy bank
COUNTERS = ("frames", "batches", "updates_sent", "snapshots_sent")


@dataclass(frozen=True)
class Batch:
    seq: int
    images: np.ndarray  # N x H x W x 3 uint8 at the model's input size
    times: list[float]  # capture times, Unix seconds (clamped to the trainer's clock)

    @property
    def nbytes(self) -> int:
        return int(self.images.nbytes)


@dataclass(frozen=True)
class BatchLimits:
    """What one uploaded batch may hold; the server refuses a batch beyond any of them."""

    max_frames: int
    max_bytes: int = MAX_BATCH_BYTES  # encoded
    max_decoded_bytes: int = 1 << 30  # RGB at the stream's own size, summed over its frames
    input_size: tuple[int, int] | None = None  # (width, height) frames are brought to


@dataclass(frozen=True)
class PendingUpdate:
    """One sent update the device has not acknowledged yet."""

    version: int
    base_version: int
    data: bytes
    base_checksum: int
    checksum: int

    @classmethod
    def of(cls, rec: UpdateRecord) -> PendingUpdate:
        return cls(rec.version, rec.base_version, rec.data, rec.base_checksum, rec.checksum)


class Score(NamedTuple):
    """One scored batch: per-frame mIoU sums of the device's model and of the pretrained one."""

    time: float  # capture time of the batch's last frame
    miou: float
    miou_base: float
    frames: int
    version: int

    @classmethod
    def restore(cls, row: Mapping[str, Any] | Sequence[Any]) -> Score:
        """A saved row: a mapping by field name, or (older checkpoints) a tuple in field order."""
        if isinstance(row, Mapping):
            return cls(**{name: row[name] for name in cls._fields})
        return cls(*row)


Sample = tuple[np.ndarray, torch.Tensor, float]  # frame, teacher label, capture time


class HoldOut:
    """Frames a device's job is scored on (micro-window, urgency), never trained on while held.

    Every ``every``-th uploaded frame (from the first) is held out; the newest ``size`` are kept,
    so the score follows the scene the device sees now. A frame pushed out by a newer one is
    released to training: holding out delays a frame's use, it loses none.
    """

    def __init__(self, every: int = HOLDOUT_EVERY, size: int = HOLDOUT_FRAMES) -> None:
        if every < 2 or size < 1:
            raise ValueError("hold out every 2nd frame or fewer, at least one frame")
        self.every = every
        self.held: collections.deque[Sample] = collections.deque()
        self.size = size
        self.seen = 0

    def __len__(self) -> int:
        return len(self.held)

    def split(
        self,
        images: np.ndarray,
        labels: torch.Tensor,
        times: Sequence[float],
        hold: bool = True,
    ) -> tuple[list[int], list[Sample]]:
        """The indices of the frames to train on now, and the held frames released to training.
        ``hold=False`` (the scheduler has no choice to score): every frame trains, and every held
        frame is released."""
        if not hold:
            return list(range(len(images))), self.release()
        train, released = [], []
        for i in range(len(images)):
            self.seen += 1
            if self.seen % self.every == 1:
                self.held.append((images[i], labels[i], float(times[i])))
                if len(self.held) > self.size:
                    released.append(self.held.popleft())
            else:
                train.append(i)
        return train, released

    def release(self) -> list[Sample]:
        """Every held frame, released to training (the scheduler has no choice to score)."""
        released = list(self.held)
        self.held.clear()
        return released

    def frames(self) -> tuple[np.ndarray, torch.Tensor] | None:
        """The held frames and their teacher labels, stacked (None while none is held)."""
        if not self.held:
            return None
        return (
            np.stack([img for img, _, _ in self.held]),
            torch.stack([lab for _, lab, _ in self.held]),
        )


@dataclass
class Device:
    device_id: str
    adapt: bool
    session: AMSSession | None
    checksum: int
    lock: threading.RLock = field(default_factory=threading.RLock)  # model; held while training
    conn_lock: threading.Lock = field(default_factory=threading.Lock)  # send/close; never long
    chain_lock: threading.Lock = field(default_factory=threading.Lock)  # chain, acks; never long
    chain: list[PendingUpdate] = field(default_factory=list)
    acked_version: int = 0
    # What the agent runs, as it last told us (Register, or an applied update's ack), and when
    # it last applied an update (wall clock).
    agent_version: int | None = None
    agent_checksum: int | None = None
    last_applied: float | None = None
    last_frame_time: float = 0.0
    scores: collections.deque[Score] = field(default_factory=lambda: collections.deque(maxlen=4096))
    frames: int = 0
    batches: int = 0
    updates_sent: int = 0
    snapshots_sent: int = 0
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    settings: tuple[float, float] | None = None
    planner: LinkPlanner | None = None  # the link budget's bookkeeping, when it has one
    send: Send | None = None
    close: Callable[[Any], None] | None = None  # ends the stream with a hub.CloseReason
    connected_at: float | None = None
    view: dict[str, Any] = field(default_factory=dict)  # the last /status summary
    # (monotonic time, uplink bytes, downlink bytes) now and then: the link rates /status shows
    rate_samples: collections.deque[tuple[float, int, int]] = field(
        default_factory=lambda: collections.deque(maxlen=32)
    )
    # flow control of resynchronisation
    snapshot_in_flight: int | None = None  # version of a snapshot sent and not acknowledged
    snapshot_cache: tuple[int, bytes] | None = None
    last_resync: float = -math.inf  # monotonic
    deferred_resync: tuple[int, int] | None = None  # (have version, have checksum)
    # persistence and memory
    dirty: bool = False
    last_checkpoint: float = field(default_factory=time.monotonic)
    last_active: float = field(default_factory=time.monotonic)
    state_bytes: int = 0
    evicted: bool = False
    recl: DeviceRecl | None = None  # RECL's window state (strategies recl and ams+recl)
    # the scheduler's view: frames not trained on yet wait for a round (``train_now``: the
    # capture time the phase trains up to); held-out frames score a job's slices
    train_now: float | None = None
    holdout: HoldOut = field(default_factory=HoldOut)
    job: PhaseJob | None = None  # the phase a round has open (its slices train dev's model)

    @property
    def version(self) -> int:
        return self.session.version if self.session is not None else 0

    @property
    def mid_phase(self) -> bool:
        """A round's phase is open: the model is ahead of the version it would be saved as."""
        return self.job is not None and self.job.phase is not None

    def deliver(self, message: pb.TrainerMessage) -> None:
        send = self.send
        if send is not None:
            send(message)

    def committed(self, base: torch.Tensor) -> torch.Tensor:
        """The parameters of the last committed version (a round's phase may be open);
        ``base``, the pretrained student's, for a device without a session."""
        job = self.job
        if job is not None and job.phase is not None:
            return job.phase.before.cpu()
        if self.session is None:
            return base
        return parameter_vector(self.session.model).cpu()

    def bank(self) -> list[float]:
        """EdgeSync's accuracy bank from the scored batches: per-frame mIoU of the newest
        DRIFT_FRAMES frames, oldest first (a batch's frames share its mean)."""
        bank: list[float] = []
        for s in reversed(self.scores):
            if len(bank) >= DRIFT_FRAMES:
                break
            bank += [s.miou / s.frames] * min(s.frames, DRIFT_FRAMES - len(bank))
        return bank[::-1]

    # -- persistence ---------------------------------------------------------------------
    def save(self, store: DeviceStore) -> int | None:
        """Checkpoint the whole state (caller holds ``lock``); its size in bytes, or None while
        a round's phase is open (the next checkpoint saves it)."""
        if self.mid_phase:
            return None
        session = None
        if self.session is not None:
            session = self.session.state_dict()
            buf = session["buffer"]
            session["buffer"] = {
                "times": buf["times"],
                "frames": pack_tensor(buf["frames"]),
                "labels": pack_tensor(buf["labels"]),
            }
        with self.chain_lock:
            chain = [
                (k.version, k.base_version, k.data, k.base_checksum, k.checksum) for k in self.chain
            ]
            acked = self.acked_version
        size = store.save(
            self.device_id,
            {
                "device_id": self.device_id,
                "adapt": self.adapt,
                "session": session,
                "checksum": self.checksum,
                "chain": chain,
                "acked_version": acked,
                "last_frame_time": self.last_frame_time,
                "scores": [s._asdict() for s in self.scores],
                "counters": {key: getattr(self, key) for key in COUNTERS},
            },
        )
        self.dirty = False
        self.last_checkpoint = time.monotonic()
        self.state_bytes = size
        return size

    @classmethod
    def load(
        cls,
        store: DeviceStore,
        device_id: str,
        new_session: Callable[[], AMSSession],
        base_checksum: int,
        chain_length: int,
    ) -> Device | None:
        """The device as last saved, with the logged updates after the checkpoint replayed;
        None for a device the store has never seen."""
        loaded = store.load(device_id)
        if loaded is None:
            # Never checkpointed, but updates were sent: replay them onto the pretrained student.
            records = store.records(device_id)
            if not records:
                return None
            dev = cls(device_id, True, new_session(), base_checksum)
            replayed = dev.replay(records, chain_length)
            log.info(
                "device state restored from its update log",
                extra={"device": device_id, "version": dev.version, "replayed_updates": replayed},
            )
            return dev
        state, records = loaded
        session = None
        if state["session"] is not None:
            session = new_session()
            sess = dict(state["session"])
            sess["buffer"] = {
                "times": sess["buffer"]["times"],
                "frames": unpack_tensor(sess["buffer"]["frames"]),
                "labels": unpack_tensor(sess["buffer"]["labels"]),
            }
            session.load_state_dict(sess)
        dev = cls(device_id, bool(state["adapt"]), session, int(state["checksum"]))
        dev.chain = [PendingUpdate(*k) for k in state["chain"]]
        dev.acked_version = int(state["acked_version"])
        dev.last_frame_time = float(state["last_frame_time"])
        dev.scores.extend(Score.restore(s) for s in state["scores"])
        for key in COUNTERS:
            setattr(dev, key, int(state["counters"][key]))
        replayed = dev.replay(records, chain_length)
        log.info(
            "device state restored",
            extra={
                "device": device_id,
                "version": dev.version,
                "frames": dev.frames,
                "replayed_updates": replayed,
            },
        )
        return dev

    def replay(self, records: Iterable[UpdateRecord], chain_length: int) -> int:
        """Apply the logged updates newer than the model; stops at the first that misfits.
        Keeps the last ``chain_length`` unacknowledged ones as the chain; the number applied."""
        session, n = self.session, 0
        for rec in records:
            if session is None or rec.version <= self.version:
                continue
            if rec.base_version != self.version or rec.base_checksum != self.checksum:
                log.warning(
                    "update log does not continue the checkpoint; replay stops",
                    extra={"device": self.device_id, "at": self.version, "record": rec.version},
                )
                break
            flat = session.optimizer.flat_params().clone()
            apply_update(flat, decode_update(rec.data, flat.numel()))
            if model_checksum(flat) != rec.checksum:
                log.warning(
                    "logged update does not reproduce its checksum; replay stops",
                    extra={"device": self.device_id, "record": rec.version},
                )
                break
            session.optimizer.set_flat_params(flat)
            session.version = rec.version
            session.phase += 1
            self.checksum = rec.checksum
            self.last_frame_time = max(self.last_frame_time, rec.last_frame_time)
            self.chain.append(PendingUpdate.of(rec))
            n += 1
        self.chain = [k for k in self.chain if k.version > self.acked_version][-chain_length:]
        self.dirty = n > 0
        return n
