"""Adaptive sampling rate (ASR, Eq. 4.1) and adaptive update interval (ATR, Appendix B).

phi_k scores how much the scene changed between consecutive *sampled* frames, on teacher labels:
the task loss of T(I_k) against T(I_{k-1}) taken as ground truth, i.e. 1 - mIoU for segmentation.
Every delta_t seconds the trainer moves the sampling rate by eta_r * (mean phi - phi_target),
clamped to [r_min, r_max]. ATR enters a slow-down mode when r falls below g0 and leaves it above
g1; in slow-down T_update grows by a step each period (capped at cap_mult * tau_min), otherwise it
resets to tau_min.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from edgeadapt.adapt.metrics import frame_miou


def phi_score(label: torch.Tensor, prev_label: torch.Tensor, num_classes: int) -> float:
    """Task loss of the new teacher label scored against the previous one: 1 - mIoU."""
    return 1.0 - frame_miou(label, prev_label, num_classes)


@dataclass
class SamplingRateController:
    """Eq. 4.1: r <- clip(r + eta_r * (phi_mean - phi_target), r_min, r_max)."""

    r_min: float = 0.1
    r_max: float = 1.0
    eta_r: float = 4.0
    phi_target: float = 0.06
    rate: float = 1.0
    _phis: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 < self.r_min <= self.r_max:
            raise ValueError("need 0 < r_min <= r_max")
        self.rate = min(max(self.rate, self.r_min), self.r_max)

    def observe(self, phi: float) -> None:
        self._phis.append(phi)

    def tick(self) -> float:
        """End of a control period: move the rate from this period's phi scores."""
        if self._phis:
            mean = sum(self._phis) / len(self._phis)
            self.rate = min(max(self.rate + self.eta_r * (mean - self.phi_target), self.r_min), self.r_max)
            self._phis.clear()
        return self.rate


@dataclass
class UpdateIntervalController:
    """Appendix B: hysteresis on the sampling rate stretches T_update on static scenes."""

    tau_min: float = 10.0
    enter_below: float = 0.25  # g0
    exit_above: float = 0.35  # g1
    step: float = 2.0
    cap_mult: float = 6.0
    interval: float = 0.0
    slow: bool = False

    def __post_init__(self) -> None:
        if self.enter_below > self.exit_above:
            raise ValueError("hysteresis needs enter_below <= exit_above")
        self.interval = self.interval or self.tau_min

    def tick(self, rate: float) -> float:
        if rate < self.enter_below:
            self.slow = True
        elif rate > self.exit_above:
            self.slow = False
        if self.slow:
            self.interval = min(self.interval + self.step, self.cap_mult * self.tau_min)
        else:
            self.interval = self.tau_min
        return self.interval
