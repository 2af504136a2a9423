"""Per-device link budgets: what the trainer may send and ask for on one device's stream.

An EdgeDevice's ``spec.link`` reaches the trainer in the agent's ``Register`` (``LinkBudget``).
The trainer keeps the stream's measured rates within it at two levels:

* **Planning** (:class:`LinkPlanner`, on the hub's worker). Uplink: the agent uploads
  ``rate x interval`` frames per interval at the bytes per frame measured on its batches, so the
  sampling rate AMS asks for is capped to what the uplink budget carries, less any overshoot
  already spent (a token bucket that may go into debt). Downlink: each training phase's update
  fraction is chosen so the encoded update fits the tokens the downlink bucket holds, at the
  bytes per coordinate measured on the updates sent; when not even ``MIN_FRACTION_OF_GAMMA``
  of the policy's fraction fits, the phase waits (its frames stay in the horizon) and the
  update interval stretches until it does.
* **Pacing** (:class:`TokenBucket`, on the server's writer). Every message on the stream is
  written only when the bucket holds its bytes, and updates larger than the bucket's capacity
  (a snapshot after a reconnect, say) are split into parts that are paced one by one.

Planning aims at ``PLAN_UTILISATION`` of the budget and pacing enforces ``PACE_UTILISATION``, so
what gRPC framing and acknowledgements add stays inside it. The one-time starting-model fetch is
provisioning, like the container image pull, and is not counted (see ARCHITECTURE.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from edgeadapt._proto.stream.v1 import stream_pb2 as pb

PLAN_UTILISATION = 0.85  # share of the budget the planner fills
PACE_UTILISATION = 0.95  # share of the budget the writer lets through
BURST_SECONDS = 2.0  # the writer's bucket: this many seconds of budget at most
PLAN_BURST_SECONDS = 30.0  # the planner's buckets: an idle device saves this much at most
MIN_PART_BYTES = 4096  # parts of a split update are never smaller
MIN_FRACTION_OF_GAMMA = 0.1  # smallest update worth a phase, as a share of the policy's gamma
RATE_FLOOR_FPS = 0.01  # the uplink budget never stops sampling altogether
DEBT_REPAY_S = 120.0  # an overshoot (the first uploads, before a frame was measured) is paid
# back over this long, so sampling slows rather than stops
PRIOR_BYTES_PER_PIXEL = 0.4  # an H.264 frame at the model's input size, until one is measured
PRIOR_BYTES_PER_COORD = 3.0  # float16 value plus a compressed gap, until updates are measured
EWMA = 0.3  # weight of the newest measurement


def bytes_per_second(kbps: float) -> float:
    return kbps * 1000.0 / 8.0


@dataclass(frozen=True)
class LinkBudget:
    """A device's budget, kbps each way; None: no budget that way."""

    uplink_kbps: float | None = None
    downlink_kbps: float | None = None

    @classmethod
    def from_message(cls, message: pb.LinkBudget) -> LinkBudget:
        def kbps(value: float) -> float | None:
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"link budget {value!r} kbps is not a non-negative number")
            return value or None

        return cls(kbps(message.uplink_kbps), kbps(message.downlink_kbps))

    @property
    def any(self) -> bool:
        return self.uplink_kbps is not None or self.downlink_kbps is not None


class TokenBucket:
    """Bytes at ``rate`` per second, holding at most ``capacity``; may be overdrawn."""

    def __init__(self, rate: float, capacity: float, now: float, tokens: float | None = None):
        if rate <= 0 or capacity <= 0:
            raise ValueError("a token bucket needs a positive rate and capacity")
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity if tokens is None else tokens
        self.at = now

    def refill(self, now: float) -> float:
        if now > self.at:
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
            self.at = now
        return self.tokens

    def take(self, n: float, now: float) -> None:
        self.refill(now)
        self.tokens -= n

    def wait(self, n: float, now: float) -> float:
        """Seconds until ``n`` bytes may go: until the bucket holds them, or is full if it never
        could (the message then overdraws it and the next ones wait)."""
        need = min(n, self.capacity) - self.refill(now)
        return max(0.0, need / self.rate)


@dataclass
class LinkPlan:
    """The settings a device gets once its budget is applied, and what the budget held down."""

    sampling_rate: float
    update_interval: float
    limits: tuple[tuple[str, str], ...] = ()  # (what: a LIMITED_* key, a message with figures)


LIMITED_RATE = "sampling-rate"
LIMITED_FRACTION = "update-fraction"
LIMITED_INTERVAL = "update-interval"


@dataclass
class LinkPlanner:
    """One device's budget bookkeeping on the trainer (see the module docstring)."""

    budget: LinkBudget
    num_params: int
    now: float
    bytes_per_frame: float | None = None  # measured on sample batches (a prior until then)
    bytes_per_coord: float = PRIOR_BYTES_PER_COORD  # measured on updates
    up: TokenBucket | None = field(init=False, default=None)
    down: TokenBucket | None = field(init=False, default=None)
    frames_measured: bool = False  # bytes_per_frame is measured, not the prior
    held_phases: int = 0
    last_fraction: float | None = None  # of the last update sent, when the budget chose it
    limits: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.budget.uplink_kbps is not None:
            rate = PLAN_UTILISATION * bytes_per_second(self.budget.uplink_kbps)
            self.up = TokenBucket(rate, rate * PLAN_BURST_SECONDS, self.now, tokens=0.0)
        if self.budget.downlink_kbps is not None:
            rate = PLAN_UTILISATION * bytes_per_second(self.budget.downlink_kbps)
            self.down = TokenBucket(rate, rate * PLAN_BURST_SECONDS, self.now, tokens=0.0)

    # -- measurements (bytes as written on the stream) ----------------------------------
    def uploaded(self, nbytes: int, frames: int, now: float) -> None:
        if self.up is not None:
            self.up.take(nbytes, now)
        if frames > 0:
            per_frame = nbytes / frames
            old = self.bytes_per_frame
            if old is None or not self.frames_measured:
                self.bytes_per_frame = per_frame
            else:
                self.bytes_per_frame = (1 - EWMA) * old + EWMA * per_frame
            self.frames_measured = True
        self.now = max(self.now, now)

    def downloaded(self, nbytes: int, now: float) -> None:
        if self.down is not None:
            self.down.take(nbytes, now)
        self.now = max(self.now, now)

    def update_sent(self, nbytes: int, coords: int) -> None:
        if coords > 0:
            per = nbytes / coords
            self.bytes_per_coord = (1 - EWMA) * self.bytes_per_coord + EWMA * per

    # -- decisions ----------------------------------------------------------------------
    def update_bytes(self, fraction: float) -> float:
        return fraction * self.num_params * self.bytes_per_coord

    def fraction(self, gamma: float, now: float) -> float | None:
        """The update fraction a phase may use now (None: hold this phase, the budget is spent).

        What the bucket holds is what the update may take; the bucket is charged with what the
        writer actually sends, so an update larger than planned delays the next ones.
        """
        if self.down is None:
            return gamma
        tokens = self.down.refill(now)
        fits = max(0.0, tokens) / max(1.0, self.num_params * self.bytes_per_coord)
        if fits >= gamma:
            return gamma
        if fits < MIN_FRACTION_OF_GAMMA * gamma:
            self.held_phases += 1
            return None
        return fits

    def plan(self, rate: float, interval: float, gamma: float, now: float) -> LinkPlan:
        """Cap AMS's (sampling rate, update interval) to the budget; say what was held down."""
        limits: list[tuple[str, str]] = []
        if self.down is not None:
            # The smallest useful update must fit one interval's refill.
            need = self.update_bytes(MIN_FRACTION_OF_GAMMA * gamma) / self.down.rate
            if need > interval:
                limits.append(
                    (
                        LIMITED_INTERVAL,
                        f"update interval {need:.1f} s (policy {interval:.1f} s) for the "
                        f"downlink budget of {self.budget.downlink_kbps:g} kbps",
                    )
                )
                interval = need
            per_interval = self.down.rate * interval / max(1.0, self.update_bytes(1.0))
            if per_interval < gamma:
                limits.append(
                    (
                        LIMITED_FRACTION,
                        f"update fraction {100 * per_interval:.2f} % (policy {100 * gamma:.2f} %)"
                        f" for the downlink budget of {self.budget.downlink_kbps:g} kbps",
                    )
                )
        if self.up is not None and self.bytes_per_frame:
            tokens = self.up.refill(now)
            # Next interval's uploads fit one interval's refill, less its share of any debt
            # already run up (paid back over DEBT_REPAY_S).
            debt = min(0.0, tokens) * min(1.0, interval / DEBT_REPAY_S)
            room = self.up.rate * interval + debt
            cap = max(RATE_FLOOR_FPS, room / (interval * self.bytes_per_frame))
            if cap < rate:
                limits.append(
                    (
                        LIMITED_RATE,
                        f"sampling rate {cap:.3f} fps (policy asks {rate:.3f}) for the uplink "
                        f"budget of {self.budget.uplink_kbps:g} kbps",
                    )
                )
                rate = cap
        self.limits = tuple(limits)
        return LinkPlan(rate, interval, self.limits)

    def part_bytes(self) -> int:
        """Largest part an update is split into on this link (see :class:`TokenBucket`)."""
        if self.budget.downlink_kbps is None:
            return 0
        return pacing_part_bytes(self.budget.downlink_kbps)


def prior_bytes_per_frame(input_size: tuple[int, int] | None) -> float | None:
    """What a sampled frame is assumed to cost before one was measured (None: unknown)."""
    return None if input_size is None else PRIOR_BYTES_PER_PIXEL * input_size[0] * input_size[1]


def pacing_bucket(downlink_kbps: float, now: float) -> TokenBucket:
    """The writer's bucket for a downlink budget."""
    rate = PACE_UTILISATION * bytes_per_second(downlink_kbps)
    return TokenBucket(rate, max(float(MIN_PART_BYTES), rate * BURST_SECONDS), now)


def pacing_part_bytes(downlink_kbps: float) -> int:
    rate = PACE_UTILISATION * bytes_per_second(downlink_kbps)
    return max(MIN_PART_BYTES, int(rate * BURST_SECONDS))
