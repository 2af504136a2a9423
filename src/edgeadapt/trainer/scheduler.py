"""Who trains next, and for how long: time-sharing the trainer's GPU among devices' jobs.

The worker gathers every device with frames it has not trained on yet into one *round* and hands
their jobs to a scheduler. A job is one device's open training phase: its model stays resident
(GPU or CPU) between slices, so moving from one job to another costs no reload. A round's budget
is what round-robin would spend on those jobs (``iterations`` each, timed by the jobs' measured
seconds per iteration), capped at ``round_cap`` seconds of compute and scaled by the share of the
GPU this trainer may use (NVML: other processes' load shrinks it). Every policy spends at most the
same budget, so they differ only in who gets it:

- ``round-robin`` (AMS, thesis appendix C): every job ``iterations`` steps, in turn; an
  over-subscribed round gives every job the same smaller share (the steps whole shares leave
  over go one each to the jobs with the least compute so far); when steps ran slower than
  measured, the last jobs get the steps that still fit, and those no step fits are deferred.
  Before any step was ever timed, the first job's ``iterations`` steps time it; a job never
  timed is assumed as fast as the others (the trainer's jobs train the same student).
- ``micro-window`` (RECL Algorithm 1, recl.md §2.6): slices of at most ``micro_window`` seconds,
  always to the job with the largest accuracy gain per second of compute, the gain measured on the
  device's held-out frames before and after its slice (the after-score is reused as the next
  before-score). A job's first round gives it one slice to initialise, as Algorithm 1 does every
  window; ``micro_window`` then shrinks so that these slices take at most a third of the round
  (RECL leaves C·μ ≥ T open), a slice is at least one step, and jobs the budget cannot initialise
  are deferred to the next round, where they go first. A later round whose budget holds a whole
  slice for every job (``micro_window``, or the job's ``iterations`` steps' time if that is
  shorter: C·μ ≤ T) initialises every job again, as Algorithm 1 does every window, then goes on
  greedily with what is left. So a trainer that is not over-subscribed gives every job its steps,
  as round-robin does; guessing there instead skipped jobs and cost up to a point against
  round-robin on the benchmark. In a later round without room for a slice each, a job is not
  initialised again: one evaluation (free, as in RECL) gives its estimate, how far its held-out
  score fell since its last slice (the new frames it does worse on) per second of its
  ``iterations`` steps' time. Initialising every job in those rounds with shorter slices cost a
  third of each round in slices of one or two steps whose gains read as noise; carrying a job's
  last measured gain into the next round instead scored worse than either (the model and its frames
  have changed since). Ties go to the job with less compute this round, then to the job served
  longest ago. While no job's gain is positive (on a few held-out frames a small true gain reads as
  noise) the next slice goes to the job with the least compute this round that has not yet had the
  time of its ``iterations`` steps, as round-robin would give it; once every job has had that, the
  round ends early and the rest of the budget stays idle (RECL's loop would keep training the least
  bad job).
- ``urgency`` (EdgeSync's training manager, edgesync.md §2.2-2.3): jobs in order of drift (how
  far the device's recent accuracy fell below its older accuracy, Eq. 4-5 corrected); the most
  urgent trains in slices until its held-out score has not improved for ``patience`` slices
  (EdgeSync's early stopping) or it has had the time of its ``iterations`` steps (EdgeSync's
  training-time cap, whose value the paper does not give), then the next, while at least one of
  its steps fits in what is left of the budget (the last job gets what is left). Without the cap
  the most urgent job takes a whole round whenever timing noise makes the round a little short,
  and the other devices starve.

Micro-window and urgency score slices on held-out frames, which the trainer keeps out of training
for a while. That costs accuracy (half a point to a point on the benchmark), and it buys nothing
while the trainer is not over-subscribed: every job then gets its ``iterations`` steps whichever
policy runs. ``Scheduler.over_subscribed`` says whether the last round's jobs wanted more than its
budget (their ``iterations`` steps' measured time beyond the round's cap by more than ``SLACK``;
True before any round); the trainer holds frames out only while it is.

Compute time is measured by the jobs (CUDA events on a GPU, the process clock's wall time on a
CPU); the scheduler only adds it up.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

Policy = Literal["round-robin", "micro-window", "urgency"]
POLICIES: tuple[Policy, ...] = ("round-robin", "micro-window", "urgency")
SLACK = 1.05  # a round-robin round may overrun its budget by this factor before deferring jobs
INIT_SHARE = 1 / 3  # micro-window: the most of a round's budget its initial slices may take
EXACT = 1 + 1e-9  # a sum of times equal to the budget but for rounding fits it


@dataclass(frozen=True)
class Work:
    """What one slice did: training steps taken and the compute seconds they took."""

    iterations: int
    seconds: float


class Job(Protocol):
    """One device's training job, as the scheduler sees it."""

    @property
    def key(self) -> str: ...

    @property
    def urgency(self) -> float: ...

    def train(self, *, iterations: int | None = None, seconds: float | None = None) -> Work:
        """Train for ``iterations`` steps, or until ``seconds`` of compute have passed (at least
        one step); return what was done. No steps means the job cannot train: it gets no more
        slices this round."""
        ...

    def evaluate(self) -> float:
        """The model's score on the device's held-out frames (higher is better)."""
        ...


@dataclass(frozen=True)
class SchedulerConfig:
    policy: Policy = "round-robin"
    iterations: int = 20  # per job and round: AMS's K, what round-robin gives each job
    micro_window: float = 1.0  # seconds of compute per slice (micro-window, urgency)
    round_cap: float = 10.0  # most compute seconds a round may take, all jobs together
    patience: int = 5  # urgency: slices without improvement before a job stops

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"scheduler policy {self.policy!r}: one of {', '.join(POLICIES)}")
        if self.iterations < 1 or self.micro_window <= 0 or self.round_cap <= 0:
            raise ValueError("scheduler iterations, micro-window and round cap must be positive")
        if self.patience < 1:
            raise ValueError("scheduler patience must be at least 1")


@dataclass
class Slice:
    key: str
    iterations: int
    seconds: float
    gain: float | None  # accuracy gain per compute second, where it was measured


@dataclass
class Round:
    """What one round did."""

    policy: str
    budget: float  # compute seconds it could spend
    spent: float = 0.0
    slices: list[Slice] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)  # keys with at least one slice, in order
    deferred: list[str] = field(default_factory=list)  # keys the budget did not reach
    ended: str = "budget"  # budget | converged | done (every job had its share)

    def seconds(self, key: str) -> float:
        return sum(s.seconds for s in self.slices if s.key == key)


@dataclass
class _Stats:
    per_iteration: float | None = None  # measured compute seconds per step (moving average)
    last_round: int = -1  # the round that last trained this job
    seconds: float = 0.0  # compute seconds, all rounds
    slices: int = 0
    score: float | None = None  # micro-window: held-out score after the job's last slice


class Scheduler:
    """Runs rounds under one policy; keeps what it measured of each job between rounds."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.rounds = 0
        self._stats: dict[str, _Stats] = {}
        # Whether the last round's jobs wanted more than its budget: only then do the policies
        # that score slices need held-out frames (True until a round has measured it).
        self.over_subscribed = True

    # -- what the hub shows --------------------------------------------------------------
    def job_view(self, key: str) -> dict[str, float | int | None]:
        s = self._stats.get(key)
        if s is None:
            return {"compute_seconds": 0.0, "slices": 0, "seconds_per_iteration": None}
        return {
            "compute_seconds": round(s.seconds, 3),
            "slices": s.slices,
            "seconds_per_iteration": None if s.per_iteration is None else round(s.per_iteration, 5),
        }

    def forget(self, key: str) -> None:
        self._stats.pop(key, None)

    # -- a round -------------------------------------------------------------------------
    def order(self, jobs: Sequence[Job]) -> list[Job]:
        """Jobs served longest ago first (never served: first of all), then by key."""
        return sorted(jobs, key=lambda j: (self._stat(j.key).last_round, j.key))

    def run(self, jobs: Sequence[Job], share: float = 1.0) -> Round:
        """One round over ``jobs`` with ``share`` (0-1] of the compute."""
        share = min(1.0, max(share, 0.0))
        ordered = self.order(jobs)
        self.rounds += 1
        policy = self.config.policy
        if policy == "round-robin":
            result = self._round_robin(ordered, share)
        elif policy == "micro-window":
            result = self._micro_window(ordered, share)
        else:
            result = self._urgency(ordered, share)
        for key in result.trained:
            self._stats[key].last_round = self.rounds
        demand = self._demand(jobs)
        self.over_subscribed = demand is None or demand > self.config.round_cap * share * SLACK
        return result

    def _stat(self, key: str) -> _Stats:
        return self._stats.setdefault(key, _Stats())

    def _record(self, result: Round, job: Job, work: Work, gain: float | None) -> None:
        s = self._stat(job.key)
        if work.iterations > 0:
            rate = work.seconds / work.iterations
            s.per_iteration = (
                rate if s.per_iteration is None else 0.7 * s.per_iteration + 0.3 * rate
            )
        s.seconds += work.seconds
        s.slices += 1
        result.slices.append(Slice(job.key, work.iterations, work.seconds, gain))
        result.spent += work.seconds
        if job.key not in result.trained:
            result.trained.append(job.key)

    def _rate(self, key: str) -> float | None:
        """Measured seconds per step of a job; for a job never timed, the mean of the others'
        (the trainer's jobs train the same student); None while no job was ever timed."""
        rate = self._stat(key).per_iteration
        if rate is not None:
            return rate
        known = [s.per_iteration for s in self._stats.values() if s.per_iteration is not None]
        return sum(known) / len(known) if known else None

    def _demand(self, jobs: Sequence[Job]) -> float | None:
        """Seconds round-robin would spend on ``jobs``; None while no job was ever timed."""
        rates = [self._rate(j.key) for j in jobs]
        if any(r is None for r in rates):
            return None
        return sum(self.config.iterations * r for r in rates if r is not None)

    def _round_robin(self, jobs: list[Job], share: float) -> Round:
        k, cap = self.config.iterations, self.config.round_cap * share
        result = Round("round-robin", cap)
        rest = list(jobs)
        while rest and self._demand(rest) is None:  # no step timed yet: the first job times it
            job = rest.pop(0)
            work = job.train(iterations=k)
            if work.iterations:
                self._record(result, job, work, None)
        demand = self._demand(jobs) or 0.0
        budget = result.budget = min(demand, cap)
        left, wanted = budget - result.spent, self._demand(rest) or 0.0
        # Over-subscribed: every job the same share of its K steps; the steps that whole shares
        # leave over go one each to the jobs with the least compute so far, so the round spends
        # its budget and no job gets the extra step every round.
        each = k if wanted <= left else k * max(left, 0.0) / wanted
        base = max(1, int(each))
        extra = round((each - base) * len(rest)) if each > base else 0
        least = sorted(range(len(rest)), key=lambda n: (self._stat(rest[n].key).seconds, n))
        plus = set(least[:extra])
        for n, job in enumerate(rest):
            steps = base + (n in plus)
            rate = self._rate(job.key) or 0.0
            if result.trained and rate > 0:  # slower steps than measured: fewer, or none
                fit = int((budget * SLACK - result.spent) / rate)
                if fit < 1:
                    result.deferred.append(job.key)
                    continue
                steps = min(steps, fit)
            work = job.train(iterations=steps)
            if work.iterations:
                self._record(result, job, work, None)
        result.ended = "budget" if result.deferred else "done"
        return result

    def _micro_window(self, jobs: list[Job], share: float) -> Round:
        cap = self.config.round_cap * share
        demand = self._demand(jobs)
        result = Round("micro-window", cap if demand is None else min(cap, demand))
        gains: dict[str, float] = {}
        score: dict[str, float] = {}
        spent: dict[str, float] = {}
        by_key = {j.key: j for j in jobs}
        # A round whose budget holds a whole slice for every job (at most its K steps' time)
        # initialises every job again, as Algorithm 1 does every window: none is guessed.
        every = demand is not None and sum(self._first(j) for j in jobs) <= result.budget * EXACT
        fresh: list[Job] = []  # one slice each, to initialise
        for job in jobs:  # a job scored before: how far it fell since, over its K steps' time
            last = self._stat(job.key).score
            if last is None or every:
                fresh.append(job)
                continue
            score[job.key] = before = job.evaluate()
            cap_s = self._time_cap(job)
            gains[job.key] = max(0.0, last - before) / cap_s if math.isfinite(cap_s) else 0.0
            spent[job.key] = 0.0
        mu = self.config.micro_window
        if not every:
            mu = min(mu, INIT_SHARE * result.budget / max(len(fresh), 1))

        def process(job: Job, longest: float) -> None:
            before = score[job.key] if job.key in score else job.evaluate()
            work = job.train(seconds=min(longest, max(result.budget - result.spent, mu / 2)))
            if work.iterations == 0:  # the job cannot train (failed, or nothing to learn)
                gains.pop(job.key, None)
                return
            after = job.evaluate()  # reused as the next slice's before-score
            gain = (after - before) / max(work.seconds, 1e-9)
            score[job.key], gains[job.key] = after, gain
            self._stat(job.key).score = after
            spent[job.key] = spent.get(job.key, 0.0) + work.seconds
            self._record(result, job, work, gain)

        for job in fresh:  # one slice each, to initialise
            longest = self._first(job) if every else mu
            if result.trained and result.budget - result.spent < longest / 2:
                result.deferred.append(job.key)
                continue
            process(job, longest)
        demand = self._demand(jobs)
        if demand is not None and not result.deferred:
            result.budget = min(cap, max(demand, result.spent))

        order = {j.key: n for n, j in enumerate(jobs)}

        def tie(key: str) -> tuple[float, int]:  # less compute this round, then served first
            return spent[key], order[key]

        while result.budget - result.spent >= mu / 2 and gains:
            best = max(gains.values())
            if best > 0:
                candidates = [k for k, g in gains.items() if g == best]
            else:  # no job measurably gains: the rest goes as round-robin would give it
                candidates = [k for k in gains if spent[k] < self._time_cap(by_key[k])]
                if not candidates:
                    result.ended = "converged"
                    break
            process(by_key[min(candidates, key=tie)], self.config.micro_window)
        if result.deferred:
            result.ended = "budget"
        return result

    def _urgency(self, jobs: list[Job], share: float) -> Round:
        mu, cap = self.config.micro_window, self.config.round_cap * share
        demand = self._demand(jobs)
        result = Round("urgency", cap if demand is None else min(demand, cap))
        ranked = sorted(jobs, key=lambda j: -j.urgency)  # stable: ties keep the served order
        for n, job in enumerate(ranked):
            step = self._step(job)
            if result.trained and result.budget - result.spent < step:
                result.deferred += [j.key for j in ranked[n:]]
                break
            best = job.evaluate()
            stale = 0
            start = result.spent
            while True:
                left = self._time_cap(job) - (result.spent - start)  # its own cap's rest
                if job.key in result.trained and (
                    stale >= self.config.patience
                    or result.budget - result.spent < step
                    or left <= 0
                ):
                    break
                work = job.train(seconds=min(mu, max(result.budget - result.spent, step), left))
                if work.iterations == 0:  # the job cannot train (failed, or nothing to learn)
                    break
                after = job.evaluate()
                self._record(result, job, work, (after - best) / max(work.seconds, 1e-9))
                best, stale = (after, 0) if after > best else (best, stale + 1)
                if demand is None:  # the first timing of every job fixes the budget
                    demand = self._demand(jobs)
                    if demand is not None:
                        result.budget = min(cap, max(demand, result.spent))
        result.ended = "budget" if result.deferred else "done"
        return result

    def _first(self, job: Job) -> float:
        """Micro-window: a job's initial slice when the round holds one for every job."""
        return min(self.config.micro_window, self._time_cap(job))

    def _step(self, job: Job) -> float:
        """Urgency's shortest slice: one of the job's measured steps (half a slice while no step
        was ever timed). Jobs are capped at their ``iterations`` steps' time, so a round whose
        steps ran faster than measured ends with less than a slice left; it still goes to the
        next job rather than stay idle."""
        half = self.config.micro_window / 2
        rate = self._rate(job.key)
        return half if rate is None else min(rate, half)

    def _time_cap(self, job: Job) -> float:
        """The time of the ``iterations`` steps round-robin gives a job (unbounded while no step
        was ever timed): urgency's per-job cap (EdgeSync's training-time cap, whose value the
        paper does not give), and micro-window's share when no job measurably gains."""
        rate = self._rate(job.key)
        return math.inf if rate is None else self.config.iterations * rate


def drift(bank: Sequence[float], groups: int = 10) -> float:
    """EdgeSync's urgency d (Eq. 4-5 as corrected in edgesync.md §2.2): how far the newer part
    of a device's accuracy history fell below its oldest part.

    ``bank`` holds per-frame accuracies, oldest first (EdgeSync keeps the last 90). It is cut into
    ``groups`` consecutive groups; ``wa_i`` is the mean accuracy of group ``i`` (group 0 the
    oldest), and ``d = sum_{i>=1} (wa_0 - wa_i) * sigmoid(i / groups)``, which weighs the newest
    groups most. Positive when recent frames score worse; 0 for fewer than two groups of data.
    """
    n = len(bank)
    m = min(groups, n)
    if m < 2:
        return 0.0
    bounds = [round(i * n / m) for i in range(m + 1)]
    wa = [sum(bank[a:b]) / (b - a) for a, b in itertools.pairwise(bounds)]
    return float(sum((wa[0] - wa[i]) / (1.0 + math.exp(-i / m)) for i in range(1, m)))
