"""A device's training job as the scheduler runs it: slices of an AMS phase (or, for strategy
recl, of RECL's retraining job), timed and scored.

The job trains the device's own resident model (no copy, no reload between slices). It opens the
AMS phase (chooses the coordinates it may change) at its first slice, so a job the scheduler
defers costs nothing; the hub commits the phase after the round. Each slice holds the device's
lock only while it trains; between slices the committed parameters are ``phase.before``, which
is what a snapshot sent meanwhile carries.

Compute time is measured, not assumed: CUDA events around each step on a GPU (the device's
kernels only, not the Python around them), ``time.perf_counter`` on a CPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from edgeadapt.adapt.ams import AMSSession, Phase, freeze_batchnorm
from edgeadapt.adapt.buffer import gather
from edgeadapt.models.zoo import SegmentationModel
from edgeadapt.recl.zoo import per_frame_miou
from edgeadapt.trainer.scheduler import Work, drift

log = logging.getLogger(__name__)


class StepTimer:
    """Compute seconds of the work between ``start`` and ``stop`` on ``device``."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._t0 = 0.0
        self._events: tuple[torch.cuda.Event, torch.cuda.Event] | None = None

    def start(self) -> None:
        if self.cuda:
            begin = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            begin.record()
            self._events = (begin, end)
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> float:
        if self.cuda and self._events is not None:
            begin, end = self._events
            end.record()
            end.synchronize()
            return float(begin.elapsed_time(end)) / 1000.0
        return time.perf_counter() - self._t0


class SlicedJob:
    """What every job shares: its key and urgency, slices that a failure ends, and scoring on
    held-out frames. Subclasses say how one slice trains (``_train``), what a failed slice
    undoes (``_roll_back``) and which model is scored (``_model``)."""

    def __init__(
        self,
        key: str,
        lock: threading.RLock,
        holdout: tuple[np.ndarray, torch.Tensor] | None,
        urgency: float,
        num_classes: int,
        device: torch.device,
    ) -> None:
        self._key = key
        self.lock = lock
        self.holdout = holdout
        self._urgency = urgency
        self.num_classes = num_classes
        self.device = device
        self._timer = StepTimer(device)
        self.seconds = 0.0  # compute seconds, all slices
        self.failed = False  # a slice raised: rolled back, no more slices this round

    @property
    def key(self) -> str:
        return self._key

    @property
    def urgency(self) -> float:
        return self._urgency

    def train(self, *, iterations: int | None = None, seconds: float | None = None) -> Work:
        """A slice; a failing slice (out of memory, say) is undone and ends the job (no steps:
        the scheduler gives it no more)."""
        if self.failed:
            return Work(0, 0.0)
        with self.lock:
            try:
                work = self._train(iterations, seconds)
            except Exception:
                log.exception("a training slice failed", extra={"device": self._key})
                self.failed = True
                self._roll_back()
                return Work(0, 0.0)
        self.seconds += work.seconds
        return work

    def _steps(
        self, step: Callable[[], None], iterations: int | None, seconds: float | None
    ) -> Work:
        """``iterations`` steps, or steps until ``seconds`` of compute have passed (at least one),
        each timed on the device."""
        done, spent = 0, 0.0

        def more() -> bool:
            if iterations is not None:
                return done < iterations
            return done == 0 or spent < (seconds or 0.0)

        while more():
            self._timer.start()
            step()
            spent += self._timer.stop()
            done += 1
        return Work(done, spent)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean per-frame mIoU against the teacher on the held-out frames (0 without)."""
        if self.holdout is None or not len(self.holdout[0]):
            return 0.0
        images, labels = self.holdout
        with self.lock:
            model = self._model()
            try:
                scores = per_frame_miou(
                    model, images, labels.long(), self.num_classes, batch=8, device=self.device
                )
            finally:
                freeze_batchnorm(model)  # jobs train with BatchNorm statistics frozen
        return float(scores.mean())

    def _train(self, iterations: int | None, seconds: float | None) -> Work:
        raise NotImplementedError

    def _roll_back(self) -> None:
        raise NotImplementedError

    def _model(self) -> SegmentationModel:
        raise NotImplementedError


class PhaseJob(SlicedJob):
    """One device's AMS phase, trained in slices."""

    def __init__(
        self,
        key: str,
        session: AMSSession,
        lock: threading.RLock,
        now: float,
        gamma: float | None,
        holdout: tuple[np.ndarray, torch.Tensor] | None,
        bank: Sequence[float],
        num_classes: int,
        device: torch.device,
    ) -> None:
        super().__init__(key, lock, holdout, drift(bank), num_classes, device)
        self.session = session
        self.now = now
        self.gamma = gamma
        self.phase: Phase | None = None
        self.empty = False  # the horizon held nothing to train on

    def _train(self, iterations: int | None, seconds: float | None) -> Work:
        if self.phase is None:
            self.phase = self.session.begin_phase(self.now, self.gamma)
            if self.phase is None:
                self.empty = True
                return Work(0, 0.0)
        phase = self.phase
        if iterations is not None:  # one timed call: the session batches its own steps
            self._timer.start()
            self.session.step(phase, iterations)
            return Work(iterations, self._timer.stop())
        return self._steps(lambda: self.session.step(phase, 1), None, seconds)

    def _roll_back(self) -> None:
        """Back to the committed parameters; the phase is dropped."""
        if self.phase is not None:
            self.session.optimizer.set_flat_params(self.phase.before.clone())
            self.phase = None

    def _model(self) -> SegmentationModel:
        return self.session.model


class ReclJob(SlicedJob):
    """Strategies recl and ams+recl: a device's retraining job (RECL §2.5) as the scheduler runs
    it.

    The job fine-tunes its own copy of the model the last window's safety check picked, while
    the next window fills, on the device's training frames of the last ``ams.t_horizon`` seconds
    (the AMS horizon; RECL's own horizon is one window, which overfits: recl.md §2.5); slices
    are scored on the last window's held-out frames (RECL's "test subset"). Under recl the
    device's deployed model is untouched until the next window's end decides whether the
    retrained model wins (ams+recl streams its progress within the window). A failed slice
    leaves the copy as it is (the safety check judges it like any candidate).
    """

    def __init__(
        self,
        key: str,
        model: SegmentationModel,
        optimizer: torch.optim.Optimizer,
        frames: tuple[list[torch.Tensor], list[torch.Tensor]],
        holdout: tuple[np.ndarray, torch.Tensor] | None,
        lock: threading.RLock,
        generator: torch.Generator,
        batch_size: int,
        num_classes: int,
        device: torch.device,
        urgency: float = 0.0,
    ) -> None:
        super().__init__(key, lock, holdout, urgency, num_classes, device)
        self.model = model
        self.optimizer = optimizer
        self.frames = frames  # uint8 3 x H x W frames and their labels, shared with the buffer
        self.generator = generator
        self.batch_size = batch_size
        self.criterion = torch.nn.CrossEntropyLoss()
        self.steps = 0

    def _train(self, iterations: int | None, seconds: float | None) -> Work:
        self.model.train()
        freeze_batchnorm(self.model)
        try:
            work = self._steps(self._step, iterations, seconds)
        finally:
            self.model.eval()
        self.steps += work.iterations
        return work

    def _step(self) -> None:
        images, labels = self.frames
        pick = torch.randint(
            len(images), (min(self.batch_size, len(images)),), generator=self.generator
        ).tolist()
        x, y = gather(images, labels, pick, self.device)
        loss = self.criterion(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def _roll_back(self) -> None:
        pass

    def _model(self) -> SegmentationModel:
        return self.model
