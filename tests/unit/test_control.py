"""Adaptive sampling rate (Eq. 4.1), adaptive update interval (Appendix B), horizon buffer."""

from __future__ import annotations

import pytest
import torch

from edgeadapt.adapt.buffer import HorizonBuffer
from edgeadapt.adapt.control import SamplingRateController, UpdateIntervalController, phi_score


def test_rate_rises_on_change_and_falls_on_static_scenes() -> None:
    c = SamplingRateController(r_min=0.1, r_max=1.0, eta_r=2.0, phi_target=0.1, rate=0.5)
    c.observe(0.2)
    assert c.tick() == pytest.approx(0.7)  # 0.5 + 2 * (0.2 - 0.1)
    c.observe(0.05)
    assert c.tick() == pytest.approx(0.6)
    assert c.tick() == pytest.approx(0.6)  # no samples, no move


def test_rate_is_clamped_to_its_bounds() -> None:
    c = SamplingRateController(r_min=0.1, r_max=1.0, eta_r=10.0, phi_target=0.1, rate=0.5)
    c.observe(0.9)
    assert c.tick() == 1.0
    for _ in range(5):
        c.observe(0.0)
        c.tick()
    assert c.rate == 0.1


def test_phi_is_zero_for_identical_labels_and_grows_with_change() -> None:
    a = torch.zeros(8, 8, dtype=torch.long)
    b = a.clone()
    b[:4] = 1
    assert phi_score(a, a, 3) == 0.0
    assert 0.0 < phi_score(b, a, 3) <= 1.0


def test_update_interval_hysteresis_growth_cap_and_reset() -> None:
    c = UpdateIntervalController(tau_min=10, enter_below=0.25, exit_above=0.35, step=2, cap_mult=2)
    assert c.tick(0.3) == 10  # between thresholds, not slow
    assert c.tick(0.2) == 12
    assert c.tick(0.3) == 14  # still slow inside the hysteresis band
    for _ in range(10):
        c.tick(0.1)
    assert c.interval == 20  # capped at 2 * tau_min
    assert c.tick(0.4) == 10  # left slow-down: reset


def test_horizon_buffer_draws_only_from_the_horizon_and_evicts() -> None:
    buf = HorizonBuffer(horizon=10.0)
    for t in range(30):
        frame = torch.full((3, 2, 2), t, dtype=torch.uint8)
        buf.add(frame, torch.full((2, 2), t % 7, dtype=torch.uint8), float(t))
    assert len(buf) == 11  # t in [19, 29]
    gen = torch.Generator().manual_seed(0)
    frames, labels = buf.sample(256, now=29.0, generator=gen)
    drawn = set((frames[:, 0, 0, 0] * 255).round().long().tolist())
    assert drawn <= set(range(19, 30))
    assert len(drawn) == 11
    assert labels.dtype == torch.long
    with pytest.raises(LookupError):
        buf.sample(1, now=100.0, generator=gen)


def test_horizon_buffer_hands_out_its_recent_samples_without_copying_them() -> None:
    buf = HorizonBuffer(horizon=10.0)
    for t in range(30):
        buf.add(torch.full((3, 2, 2), t, dtype=torch.uint8), torch.zeros(2, 2), float(t))
    frames, labels = buf.recent(25.0)
    assert [int(f[0, 0, 0]) for f in frames] == list(range(19, 26))  # [now - horizon, now]
    assert len(labels) == len(frames)
    assert frames[0] is buf.frames[0], "the job shares the buffer's tensors"
    buf.add(torch.full((3, 2, 2), 40, dtype=torch.uint8), torch.zeros(2, 2), 40.0)
    assert len(buf) == 1
    assert len(frames) == 7, "eviction leaves a handed-out list alone"
    assert buf.recent(100.0) == ([], [])
