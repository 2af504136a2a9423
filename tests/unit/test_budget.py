"""Link budgets: the token bucket, the planner's choices, and split updates joined back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeadapt._proto.stream.v1 import stream_pb2 as pb
from edgeadapt.adapt.update import (
    ModelUpdate,
    UpdateError,
    encode_update,
    snapshot_update,
)
from edgeadapt.stream.messages import UpdateJoiner, split_update, update_bytes, update_message
from edgeadapt.trainer.budget import (
    MIN_FRACTION_OF_GAMMA,
    PLAN_UTILISATION,
    LinkBudget,
    LinkPlanner,
    TokenBucket,
    bytes_per_second,
    pacing_bucket,
)


def test_bucket_refills_to_capacity_and_may_be_overdrawn() -> None:
    b = TokenBucket(rate=100.0, capacity=500.0, now=0.0, tokens=0.0)
    assert b.wait(200, 0.0) == pytest.approx(2.0)
    assert b.refill(10.0) == 500.0  # never more than the capacity
    b.take(800, 10.0)  # a message larger than the bucket goes once it is full...
    assert b.tokens == -300.0
    assert b.wait(100, 10.0) == pytest.approx(4.0)  # ...and the next ones wait for the debt
    assert b.wait(10_000, 13.0) == pytest.approx(5.0)  # waits for a full bucket at most


def test_a_paced_writer_stays_within_its_budget_over_any_minute() -> None:
    kbps = 100.0
    bucket = pacing_bucket(kbps, now=0.0)
    now, sent, log = 0.0, 0, []
    rng = np.random.default_rng(0)
    while now < 300.0:
        size = int(rng.integers(100, 30_000))
        now += bucket.wait(size, now)
        bucket.take(size, now)
        sent += size
        log.append((now, size))
    for start in range(0, 240, 10):
        window = sum(s for t, s in log if start <= t < start + 60)
        assert window * 8 / 1000 / 60 <= kbps


def test_budget_from_message() -> None:
    assert not LinkBudget.from_message(pb.LinkBudget()).any
    b = LinkBudget.from_message(pb.LinkBudget(downlink_kbps=100))
    assert (b.uplink_kbps, b.downlink_kbps) == (None, 100)
    with pytest.raises(ValueError, match="non-negative"):
        LinkBudget.from_message(pb.LinkBudget(uplink_kbps=-1))
    with pytest.raises(ValueError, match="non-negative"):
        LinkBudget.from_message(pb.LinkBudget(uplink_kbps=float("nan")))


def test_uplink_caps_the_sampling_rate_to_the_measured_frame_size() -> None:
    p = LinkPlanner(LinkBudget(uplink_kbps=100), num_params=1000, now=0.0)
    plan = p.plan(rate=1.0, interval=10.0, gamma=0.05, now=0.0)
    assert plan.sampling_rate == 1.0
    assert not plan.limits
    p.uploaded(100_000, frames=2, now=10.0)  # 50 kB a frame, within the 10 s saved
    plan = p.plan(rate=1.0, interval=10.0, gamma=0.05, now=10.0)
    expected = PLAN_UTILISATION * bytes_per_second(100) / 50_000
    assert plan.sampling_rate == pytest.approx(expected, rel=1e-3)
    assert [k for k, _ in plan.limits] == ["sampling-rate"]
    assert "sampling rate" in plan.limits[0][1]
    # An overshoot is paid back: the next interval's rate is lower still.
    p.uploaded(200_000, frames=4, now=11.0)
    assert p.plan(1.0, 10.0, 0.05, now=11.0).sampling_rate < expected
    # A rate AMS already keeps low is not touched.
    assert p.plan(0.01, 10.0, 0.05, now=100.0).limits == ()


def test_downlink_chooses_the_update_fraction_and_holds_when_spent() -> None:
    n = 1_000_000
    p = LinkPlanner(LinkBudget(downlink_kbps=100), num_params=n, now=0.0)
    rate = PLAN_UTILISATION * bytes_per_second(100)
    assert p.fraction(0.05, now=0.0) is None  # nothing saved yet
    f = p.fraction(0.05, now=10.0)
    assert f is not None
    assert f == pytest.approx(10 * rate / (n * p.bytes_per_coord), rel=1e-3)
    assert f < 0.05
    p.downloaded(int(f * n * p.bytes_per_coord), now=10.0)
    assert p.fraction(0.05, now=10.0) is None
    assert p.held_phases == 2
    # A generous budget leaves the policy's fraction alone.
    big = LinkPlanner(LinkBudget(downlink_kbps=100_000), num_params=n, now=0.0)
    assert big.fraction(0.05, now=10.0) == 0.05
    assert big.plan(1.0, 10.0, 0.05, now=10.0).limits == ()


def test_downlink_stretches_the_interval_when_no_useful_update_fits() -> None:
    n = 10_000_000
    p = LinkPlanner(LinkBudget(downlink_kbps=100), num_params=n, now=0.0)
    plan = p.plan(rate=1.0, interval=10.0, gamma=0.05, now=0.0)
    need = MIN_FRACTION_OF_GAMMA * 0.05 * n * p.bytes_per_coord / p.down.rate  # type: ignore[union-attr]
    assert plan.update_interval == pytest.approx(need)
    assert {k for k, _ in plan.limits} == {"update-interval", "update-fraction"}
    assert any("update interval" in m for _, m in plan.limits)


def test_measured_bytes_per_coordinate_steer_the_fraction() -> None:
    p = LinkPlanner(LinkBudget(downlink_kbps=100), num_params=100_000, now=0.0)
    for _ in range(20):
        p.update_sent(nbytes=1500, coords=1000)
    assert p.bytes_per_coord == pytest.approx(1.5, rel=1e-2)


def _snapshot(n: int = 50_000) -> bytes:
    return encode_update(snapshot_update(torch.randn(n), version=7))


def _sparse(n: int = 200_000) -> bytes:
    idx = np.arange(3, n, 11, dtype=np.int64)
    return encode_update(ModelUpdate(4, 3, n, idx, np.ones(len(idx), dtype=np.float16)))


@pytest.mark.parametrize("data", [_snapshot(), _sparse()], ids=["snapshot", "sparse"])
def test_split_parts_join_back_to_the_same_update(data: bytes) -> None:
    msg = update_message(data, 0xABCD, snapshot=True)
    parts = split_update(msg, 8192)
    assert len(parts) >= 5
    assert all(p.ByteSize() <= max(8192 + 200, len(msg.mask) + 200) for p in parts)
    assert [(p.part, p.parts) for p in parts] == [(i, len(parts)) for i in range(len(parts))]
    joiner = UpdateJoiner()
    out = [joiner.add(pb.ModelUpdate.FromString(p.SerializeToString())) for p in parts]
    assert out[:-1] == [None] * (len(parts) - 1)
    whole = out[-1]
    assert whole is not None
    assert update_bytes(whole) == data
    assert whole.model_checksum == 0xABCD
    assert whole.snapshot


def test_a_small_update_is_not_split() -> None:
    msg = update_message(_sparse(2000), 1)
    assert split_update(msg, 1 << 20) == [msg]
    assert UpdateJoiner().add(msg) is msg


def test_parts_out_of_order_or_of_another_update_are_refused() -> None:
    parts = split_update(update_message(_snapshot(), 1, snapshot=True), 8192)
    joiner = UpdateJoiner()
    joiner.add(parts[0])
    with pytest.raises(UpdateError, match="does not continue"):
        joiner.add(parts[2])
    with pytest.raises(UpdateError, match="does not continue"):
        joiner.add(parts[1])  # the first part was dropped with the bad one
    other = split_update(update_message(_snapshot(), 2, snapshot=True), 8192)
    joiner.add(parts[0])
    with pytest.raises(UpdateError, match="does not continue"):
        joiner.add(other[1])
    joiner.add(parts[0])
    with pytest.raises(UpdateError, match="whole update"):
        joiner.add(update_message(_sparse(2000), 1))
    bogus = pb.ModelUpdate()
    bogus.CopyFrom(parts[0])
    bogus.part = bogus.parts
    with pytest.raises(UpdateError, match="part"):
        joiner.add(bogus)


def test_a_split_update_cannot_grow_beyond_the_limit() -> None:
    parts = split_update(update_message(_snapshot(), 1, snapshot=True), 8192)
    joiner = UpdateJoiner(max_bytes=50_000)
    total = 0
    for p in parts[:-1]:
        total += p.ByteSize()
        if total > 50_000:
            with pytest.raises(UpdateError, match="beyond"):
                joiner.add(p)
            return
        joiner.add(p)
    raise AssertionError("the parts never passed the limit")


def test_an_early_overshoot_slows_sampling_without_stopping_it() -> None:
    p = LinkPlanner(LinkBudget(uplink_kbps=8), num_params=1000, now=0.0, bytes_per_frame=3000)
    # Before anything was measured, two large batches went up: 30 s of budget at once.
    p.uploaded(26_000, frames=8, now=2.0)
    plan = p.plan(rate=1.0, interval=4.0, gamma=0.05, now=2.0)
    assert 0.05 < plan.sampling_rate < PLAN_UTILISATION * bytes_per_second(8) / 3250
    # Paid back over time: the rate climbs back to what the budget carries.
    later = p.plan(rate=1.0, interval=4.0, gamma=0.05, now=200.0)
    assert later.sampling_rate == pytest.approx(
        PLAN_UTILISATION * bytes_per_second(8) / 3250, rel=1e-3
    )
