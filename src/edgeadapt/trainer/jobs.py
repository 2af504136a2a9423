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
from collections.abc import Sequence

import numpy as np
import torch

from edgeadapt.adapt.ams import AMSSession, Phase, freeze_batchnorm
from edgeadapt.models.data import to_tensor
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


class PhaseJob:
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
        self._key = key
        self.session = session
        self.lock = lock
        self.now = now
        self.gamma = gamma
        self.holdout = holdout
        self.num_classes = num_classes
        self.device = device
        self.phase: Phase | None = None
        self.seconds = 0.0
        self._urgency = drift(bank)
        self._timer = StepTimer(device)
        self.empty = False  # the horizon held nothing to train on
        self.failed = False  # a slice raised: rolled back, no more slices this round

    @property
    def key(self) -> str:
        return self._key

    @property
    def urgency(self) -> float:
        return self._urgency

    def train(self, *, iterations: int | None = None, seconds: float | None = None) -> Work:
        """A slice; a failing slice (out of memory, say) rolls the model back to the committed
        parameters and ends the job (no steps: the scheduler gives it no more)."""
        if self.failed:
            return Work(0, 0.0)
        with self.lock:
            try:
                return self._train(iterations, seconds)
            except Exception:
                log.exception("a training slice failed", extra={"device": self._key})
                self.failed = True
                if self.phase is not None:
                    self.session.optimizer.set_flat_params(self.phase.before.clone())
                    self.phase = None
                return Work(0, 0.0)

    def _train(self, iterations: int | None, seconds: float | None) -> Work:
        if self.phase is None:
            self.phase = self.session.begin_phase(self.now, self.gamma)
            if self.phase is None:
                self.empty = True
                return Work(0, 0.0)
        if iterations is not None:
            self._timer.start()
            self.session.step(self.phase, iterations)
            spent = self._timer.stop()
            self.seconds += spent
            return Work(iterations, spent)
        assert seconds is not None
        done, spent = 0, 0.0
        while done == 0 or spent < seconds:
            self._timer.start()
            self.session.step(self.phase, 1)
            spent += self._timer.stop()
            done += 1
        self.seconds += spent
        return Work(done, spent)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean per-frame mIoU against the teacher on the device's held-out frames (0 without)."""
        if self.holdout is None or not len(self.holdout[0]):
            return 0.0
        images, labels = self.holdout
        with self.lock:
            model = self.session.model
            try:
                scores = per_frame_miou(
                    model, images, labels.long(), self.num_classes, batch=8, device=self.device
                )
            finally:
                freeze_batchnorm(model)  # the session trains with BatchNorm statistics frozen
        return float(scores.mean())


class ReclJob:
    """Strategy recl: one device's retraining job (RECL §2.5) as the scheduler runs it.

    The job fine-tunes its own copy of the model the last window's safety check picked, on that
    window's training frames, while the next window fills; slices are scored on the same window's
    held-out frames (RECL's "test subset"). The device's deployed model is untouched until the
    next window's end decides whether the retrained model wins.
    """

    def __init__(
        self,
        key: str,
        model: SegmentationModel,
        optimizer: torch.optim.Optimizer,
        frames: tuple[np.ndarray, torch.Tensor],
        holdout: tuple[np.ndarray, torch.Tensor] | None,
        lock: threading.RLock,
        generator: torch.Generator,
        batch_size: int,
        num_classes: int,
        device: torch.device,
        urgency: float = 0.0,
    ) -> None:
        self._key = key
        self.model = model
        self.optimizer = optimizer
        self.frames = frames
        self.holdout = holdout
        self.lock = lock
        self.generator = generator
        self.batch_size = batch_size
        self.num_classes = num_classes
        self.device = device
        self._urgency = urgency
        self._timer = StepTimer(device)
        self.steps = 0
        self.seconds = 0.0
        self.failed = False

    @property
    def key(self) -> str:
        return self._key

    @property
    def urgency(self) -> float:
        return self._urgency

    def train(self, *, iterations: int | None = None, seconds: float | None = None) -> Work:
        """A slice of Adam steps; one that fails ends the job for this round (no steps)."""
        if self.failed:
            return Work(0, 0.0)
        with self.lock:
            try:
                return self._train(iterations, seconds)
            except Exception:
                log.exception("a retraining slice failed", extra={"device": self._key})
                self.failed = True
                return Work(0, 0.0)

    def _train(self, iterations: int | None, seconds: float | None) -> Work:
        images, labels = self.frames
        criterion = torch.nn.CrossEntropyLoss()
        self.model.train()
        freeze_batchnorm(self.model)
        done, spent = 0, 0.0
        try:
            while (iterations is not None and done < iterations) or (
                iterations is None and (done == 0 or spent < (seconds or 0.0))
            ):
                self._timer.start()
                pick = torch.randint(
                    len(images), (min(self.batch_size, len(images)),), generator=self.generator
                )
                x = to_tensor(images[pick.numpy()], self.device)
                loss = criterion(self.model(x), labels[pick].long().to(self.device))
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                spent += self._timer.stop()
                done += 1
        finally:
            self.model.eval()
        self.steps += done
        self.seconds += spent
        return Work(done, spent)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean per-frame mIoU against the teacher on the window's held-out frames (0 without)."""
        if self.holdout is None or not len(self.holdout[0]):
            return 0.0
        images, labels = self.holdout
        with self.lock:
            scores = per_frame_miou(
                self.model, images, labels.long(), self.num_classes, batch=8, device=self.device
            )
            freeze_batchnorm(self.model)
        return float(scores.mean())
