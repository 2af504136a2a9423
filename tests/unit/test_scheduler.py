"""The trainer's schedulers on hand-made training curves (no models): which job gets which slice."""

from __future__ import annotations

import math

import pytest

from edgeadapt.trainer.scheduler import Scheduler, SchedulerConfig, Work, drift


class Curve:
    """A job whose held-out accuracy after ``t`` compute seconds is ``gain * (1 - exp(-t/tau))``
    (concave, like a training curve), or ``start - slope * t`` when ``slope`` is set (worsening)."""

    def __init__(
        self,
        key: str,
        gain: float = 0.5,
        tau: float = 4.0,
        per_iteration: float = 0.1,
        urgency: float = 0.0,
        slope: float | None = None,
    ) -> None:
        self.key, self.gain, self.tau, self.per_iteration = key, gain, tau, per_iteration
        self.urgency, self.slope = urgency, slope
        self.t = 0.0
        self.evaluations = 0
        self.fell = 0.0  # new frames it does worse on (between rounds)

    def accuracy(self, t: float) -> float:
        if self.slope is not None:
            return 0.5 - self.slope * t - self.fell
        return self.gain * (1 - math.exp(-t / self.tau)) - self.fell

    def train(self, *, iterations: int | None = None, seconds: float | None = None) -> Work:
        if iterations is None:
            assert seconds is not None
            iterations = max(1, round(seconds / self.per_iteration))
        spent = iterations * self.per_iteration
        self.t += spent
        return Work(iterations, spent)

    def evaluate(self) -> float:
        self.evaluations += 1
        return self.accuracy(self.t)


def reference_gpu_share(curves: list[Curve], mu: float, budget: float) -> list[str]:
    """recl.md §2.6's pseudo-code, on fresh copies of the curves; the picks in order."""
    t = {c.key: 0.0 for c in curves}
    picks: list[str] = []

    def process(c: Curve) -> float:
        nonlocal budget
        acc_i = c.accuracy(t[c.key])
        t[c.key] += mu
        budget -= mu
        picks.append(c.key)
        return (c.accuracy(t[c.key]) - acc_i) / mu

    gain = {c.key: process(c) for c in curves}
    by_key = {c.key: c for c in curves}
    while budget >= mu / 2:
        gain_key = max(gain, key=lambda k: gain[k])
        gain[gain_key] = process(by_key[gain_key])
    return picks


def micro(cap: float, mu: float = 1.0, iterations: int = 1000) -> Scheduler:
    return Scheduler(SchedulerConfig("micro-window", iterations, mu, cap))


def test_micro_window_picks_the_slices_algorithm_1_picks() -> None:
    def curves() -> list[Curve]:
        return [Curve("a", 0.6, 2.0), Curve("b", 0.4, 8.0), Curve("c", 0.2, 1.0)]

    result = micro(cap=12.0).run(curves())
    assert [s.key for s in result.slices] == reference_gpu_share(curves(), 1.0, 12.0)
    assert result.spent == pytest.approx(12.0)
    # The steep, high curve gets most of the round; every job got its initial slice.
    assert result.seconds("a") > result.seconds("b") > 0
    assert result.seconds("c") > 0
    assert result.ended == "budget"
    assert not result.deferred


def test_the_after_score_is_reused_as_the_next_before_score() -> None:
    a = Curve("a")
    micro(cap=5.0).run([a])
    assert a.evaluations == 6  # one before-score, then one per slice


def test_ties_go_to_the_job_with_less_compute_then_the_one_served_first() -> None:
    jobs = [Curve("x"), Curve("y")]
    result = micro(cap=6.0).run(jobs)
    assert [s.key for s in result.slices] == ["x", "y", "x", "y", "x", "y"]


def test_a_worsening_job_gets_only_its_first_slice() -> None:
    good, bad = Curve("good"), Curve("bad", slope=0.01)
    result = micro(cap=8.0).run([bad, good])
    assert [s.key for s in result.slices].count("bad") == 1
    assert result.seconds("good") == pytest.approx(7.0)


def test_while_no_gain_is_positive_the_job_with_least_compute_gets_the_next_slice() -> None:
    # Both worsen; the round is their round-robin time (15 steps x 0.1 s each), which they share
    # as round-robin would instead of leaving it idle.
    p, q = Curve("p", slope=0.01), Curve("q", slope=0.02)
    result = micro(cap=10.0, mu=0.5, iterations=15).run([p, q])
    assert [s.key for s in result.slices] == ["p", "q"] * 3
    assert [s.seconds for s in result.slices] == pytest.approx([0.5] * 6)
    assert result.seconds("p") == result.seconds("q") == pytest.approx(1.5)
    assert result.spent == pytest.approx(3.0)


def test_a_job_that_gains_again_after_a_fill_slice_is_picked_greedily() -> None:
    flat = Curve("z-flat", slope=0.0)  # never gains
    late = Curve("late", gain=0.5, tau=4.0)
    late_start = late.accuracy
    late.accuracy = lambda t: late_start(max(t - 1.0, 0.0))  # type: ignore[method-assign]
    result = micro(cap=8.0, iterations=40).run([late, flat])  # its first second shows nothing
    keys = [s.key for s in result.slices]
    assert keys[:3] == ["late", "z-flat", "late"]  # no gain yet: least compute, then the tie order
    assert keys[3:] == ["late"] * 5  # its gain shows: greedy from then on
    assert result.spent == pytest.approx(8.0)


def test_an_over_subscribed_later_round_starts_with_the_job_whose_score_fell_most() -> None:
    # 8 jobs whose K steps take 2 s each, a 3.5 s round: no room for a 0.5 s slice each
    sched = micro(cap=3.5, mu=0.5, iterations=20)
    jobs = [Curve(k) for k in "abcdefgh"]
    first = sched.run(jobs)
    assert [s.key for s in first.slices[:8]] == list("abcdefgh")  # one slice each, to initialise
    jobs[1].fell, jobs[2].fell = 0.15, 0.2  # c's new frames cost it most
    evaluations = [j.evaluations for j in jobs]
    second = sched.run(jobs)
    # c's estimate is 0.2 over its 2 s, b's 0.15 over 2 s, the others' 0: no initial slices; c
    # until its measured gain falls below b's estimate, then b; the others, which lost nothing,
    # wait
    assert [s.key for s in second.slices] == ["c"] * 4 + ["b"] * 3
    # every job was scored once before the round (a free evaluation instead of a slice)
    assert all(j.evaluations >= e + 1 for j, e in zip(jobs, evaluations, strict=True))
    assert second.spent == pytest.approx(3.5)


def test_a_later_round_with_a_slice_for_every_job_initialises_every_job_again() -> None:
    # 3 jobs whose K steps take 2 s: the round is their 6 s, room for a 1 s slice each
    sched = micro(cap=10.0, mu=1.0, iterations=20)
    jobs = [Curve(k) for k in "abc"]
    sched.run(jobs)
    jobs[2].fell = 0.2  # only c fell: a fall-based guess would skip a and b
    second = sched.run(jobs)
    assert [s.key for s in second.slices[:3]] == ["a", "b", "c"]
    assert [s.seconds for s in second.slices[:3]] == pytest.approx([1.0] * 3)
    assert set(second.trained) == {"a", "b", "c"}
    assert second.spent == pytest.approx(6.0)
    # A slice longer than a job's K steps' time is cut to it: round-robin's share, each once.
    short = micro(cap=10.0, mu=5.0, iterations=20)
    short.run(jobs)
    third = short.run(jobs)
    assert [(s.key, s.seconds) for s in third.slices] == [("a", 2.0), ("b", 2.0), ("c", 2.0)]


def test_a_job_that_did_not_fall_gets_the_round_robin_fill_once_others_stop_gaining() -> None:
    # A job's K steps take 0.5 s; three jobs, a 1.2 s round: no room for a slice each.
    sched = micro(cap=1.2, mu=0.5, iterations=5)
    steady, worse, calm = Curve("steady"), Curve("worse", slope=0.01), Curve("x-calm")
    sched.run([steady, worse, calm])
    worse.fell = 0.1  # it fell, but training makes it worse still
    second = sched.run([steady, worse, calm])
    keys = [s.key for s in second.slices]
    assert keys[0] == "worse"  # its fall made it the first pick; its slice then lost accuracy
    assert "steady" in keys  # then none gains: the fill gives steady (served first) its K steps
    assert second.seconds("steady") == pytest.approx(0.5)


def test_more_jobs_than_slices_get_shorter_slices_so_initialising_takes_a_third() -> None:
    jobs = [Curve(k, per_iteration=0.05) for k in "abcdefgh"]
    result = micro(cap=6.0).run(jobs)  # 8 slices of 1 s would take the whole round
    assert [s.seconds for s in result.slices[:8]] == pytest.approx([0.25] * 8)
    assert result.trained == list("abcdefgh")
    assert not result.deferred
    assert result.spent == pytest.approx(6.0)


def test_jobs_beyond_the_budget_are_deferred_and_go_first_next_round() -> None:
    sched = micro(cap=3.0)
    jobs = [Curve(k, per_iteration=1.0) for k in "abcde"]  # even one step each is too much
    first = sched.run(jobs)
    assert first.trained == ["a", "b", "c"]
    assert first.deferred == ["d", "e"]
    second = sched.run(jobs)
    assert second.trained[:2] == ["d", "e"]


def test_the_budget_is_what_round_robin_would_spend_when_that_is_less_than_the_cap() -> None:
    # 3 jobs x K=20 steps x 0.1 s = 6 s, under the 100 s cap.
    sched = Scheduler(SchedulerConfig("micro-window", 20, 1.0, 100.0))
    result = sched.run([Curve("a"), Curve("b"), Curve("c")])
    assert result.budget == pytest.approx(6.0)
    assert result.spent == pytest.approx(6.0)


def test_a_smaller_share_of_the_gpu_shrinks_the_round() -> None:
    result = micro(cap=10.0).run([Curve("a"), Curve("b")], share=0.4)
    assert result.spent == pytest.approx(4.0)


def over(sched: Scheduler) -> bool:
    return sched.over_subscribed


@pytest.mark.parametrize("policy", ["micro-window", "urgency"])
def test_over_subscribed_says_whether_the_last_round_s_jobs_wanted_more_than_its_budget(
    policy: str,
) -> None:
    # K = 20 steps x 0.1 s = 2 s per job: 2 jobs want 4 s.
    sched = Scheduler(SchedulerConfig(policy, 20, 1.0, 4.0))  # type: ignore[arg-type]
    assert over(sched)  # nothing measured yet: frames are held out
    sched.run([Curve("a"), Curve("b")])
    assert not over(sched)  # 4 s wanted, 4 s cap
    sched.run([Curve("a"), Curve("b"), Curve("c")])
    assert over(sched)  # 6 s wanted
    sched.run([Curve("a"), Curve("b")], share=0.5)
    assert over(sched)  # the GPU's other users leave 2 s
    sched.run([Curve("a", per_iteration=0.104), Curve("b", per_iteration=0.104)])
    assert not over(sched)  # steps a little slower than the cap's: within SLACK


def test_round_robin_gives_every_job_its_iterations() -> None:
    sched = Scheduler(SchedulerConfig("round-robin", 20, 1.0, 100.0))
    jobs = [Curve("a"), Curve("b", per_iteration=0.3)]
    result = sched.run(jobs)
    assert [(s.key, s.iterations) for s in result.slices] == [("a", 20), ("b", 20)]
    assert result.ended == "done"
    assert all(j.evaluations == 0 for j in jobs)  # round-robin measures nothing


def test_an_over_subscribed_round_robin_round_gives_every_job_the_same_smaller_share() -> None:
    sched = Scheduler(SchedulerConfig("round-robin", 20, 1.0, 4.0))
    jobs = [Curve(k) for k in "abcd"]  # 4 x 20 x 0.1 s = 8 s against a 4 s cap
    sched.run(jobs)  # first round: untimed jobs get K each
    result = sched.run(jobs)
    assert [s.iterations for s in result.slices] == [10, 10, 10, 10]
    assert result.spent == pytest.approx(4.0)


def test_round_robin_s_left_over_steps_go_to_the_jobs_with_the_least_compute() -> None:
    sched = Scheduler(SchedulerConfig("round-robin", 20, 1.0, 3.0))
    jobs = [Curve(k) for k in "abcd"]
    first = sched.run(jobs)  # untimed: a's 20 steps time the step; b, c, d share the 1 s left
    assert [s.iterations for s in first.slices] == [20, 4, 3, 3]  # b has the left-over step
    # 30 steps for 4 jobs: 7 each, and the 2 left over to the two with the least compute so far
    second = sched.run(jobs)
    assert [(s.key, s.iterations) for s in second.slices] == [
        ("a", 7),
        ("b", 7),
        ("c", 8),
        ("d", 8),
    ]
    assert second.spent == pytest.approx(3.0)
    third = sched.run(jobs)  # a, still the most served, again gets none of them
    assert sum(s.iterations for s in third.slices) == 30
    assert third.slices[0].iterations == 7


def test_round_robin_s_first_round_times_one_job_and_keeps_to_the_cap() -> None:
    sched = Scheduler(SchedulerConfig("round-robin", 20, 1.0, 4.0))
    jobs = [Curve(k) for k in "abcdefgh"]  # 8 x 20 x 0.1 s = 16 s against a 4 s cap
    result = sched.run(jobs)
    # a's 20 steps time the step; the 2 s left (20 steps) are shared by the 7 others: 2 steps
    # each, and the 6 steps left over go one each to the first six
    assert [(s.key, s.iterations) for s in result.slices] == (
        [("a", 20)] + [(k, 3) for k in "bcdefg"] + [("h", 2)]
    )
    assert result.spent == pytest.approx(4.0)
    assert result.ended == "done"
    # A job never timed is assumed as fast as the others: it gets the same share at once.
    assert [s.iterations for s in sched.run([Curve("new"), *jobs[3:6]]).slices] == [10] * 4


def test_round_robin_s_last_job_gets_the_steps_that_fit_when_steps_ran_slow() -> None:
    sched = Scheduler(SchedulerConfig("round-robin", 20, 1.0, 4.0))
    jobs = [Curve(k) for k in "abcd"]
    sched.run(jobs)
    jobs[0].per_iteration = 0.165  # a's 10 steps take 1.65 s instead of 1 s
    result = sched.run(jobs)
    # 0.55 s of the round's 4.2 s (with its 5 % slack) is left for d: 5 steps instead of 10
    assert [s.iterations for s in result.slices] == [10, 10, 10, 5]
    assert not result.deferred
    assert result.spent == pytest.approx(4.15)


def test_round_robin_defers_jobs_when_even_one_step_each_is_too_much() -> None:
    sched = Scheduler(SchedulerConfig("round-robin", 20, 1.0, 0.25))
    jobs = [Curve(k) for k in "abcd"]
    sched.run(jobs)
    result = sched.run(jobs)
    assert len(result.trained) == 2
    assert len(result.deferred) == 2
    assert sched.run(jobs).trained == result.deferred


def test_urgency_trains_the_most_urgent_job_until_it_stops_improving() -> None:
    sched = Scheduler(SchedulerConfig("urgency", 1000, 1.0, 20.0, patience=2))
    calm = Curve("calm", urgency=0.0)
    flat = Curve("flat", urgency=0.9, slope=0.0)  # no progress at all
    urgent = Curve("urgent", urgency=0.5)
    result = sched.run([calm, flat, urgent])
    keys = [s.key for s in result.slices]
    assert keys[:2] == ["flat", "flat"]  # two slices without improvement: early stop
    assert keys[2] == "urgent"
    assert "calm" not in keys[:3]
    assert result.spent <= 20.0 + 1e-9


@pytest.mark.parametrize("cap", [100.0, 4.0])
def test_urgency_gives_no_job_more_than_its_iterations(cap: float) -> None:
    """EdgeSync's training-time cap: the most urgent job, still improving, stops at its K steps,
    so it does not starve the other."""
    sched = Scheduler(SchedulerConfig("urgency", 20, 0.5, cap))
    jobs = [Curve("calm", urgency=0.1, tau=100.0), Curve("urgent", urgency=0.9, tau=100.0)]
    for _ in range(2):  # the first round times the steps as it goes
        result = sched.run(jobs)
        assert result.slices[0].key == "urgent"
        assert {
            k: sum(s.iterations for s in result.slices if s.key == k) for k in result.trained
        } == {"urgent": 20, "calm": 20}
        assert result.ended == "done"


def test_an_over_subscribed_urgency_round_serves_the_most_urgent_first_and_defers_the_least() -> (
    None
):
    sched = Scheduler(SchedulerConfig("urgency", 20, 0.5, 3.5))  # 35 steps for 60 wanted
    jobs = [
        Curve("calm", urgency=0.1, tau=100.0),
        Curve("urgent", urgency=0.9, tau=100.0),
        Curve("mild", urgency=0.5, tau=100.0),
    ]
    result = sched.run(jobs)
    assert result.trained == ["urgent", "mild"]
    steps = {k: sum(s.iterations for s in result.slices if s.key == k) for k in result.trained}
    assert steps == {"urgent": 20, "mild": 15}
    assert result.deferred == ["calm"]


def test_an_urgency_round_s_last_short_rest_still_trains_the_next_job() -> None:
    """Every job stops at its K steps' time (1 s) while slices are 2 s long: the round's last
    0.5 s, a quarter of a slice, goes to the third job instead of staying idle."""
    sched = Scheduler(SchedulerConfig("urgency", 10, 2.0, 2.5))
    jobs = [
        Curve("a", urgency=0.9, tau=100.0),
        Curve("b", urgency=0.5, tau=100.0),
        Curve("c", urgency=0.1, tau=100.0),
    ]
    sched.run(jobs)  # the first round times the steps
    result = sched.run(jobs)
    steps = {k: sum(s.iterations for s in result.slices if s.key == k) for k in result.trained}
    assert steps == {"a": 10, "b": 10, "c": 5}
    assert not result.deferred
    assert result.spent == pytest.approx(2.5)


def test_urgency_with_a_budget_for_one_job_defers_the_rest() -> None:
    sched = Scheduler(SchedulerConfig("urgency", 1000, 1.0, 1.0))
    result = sched.run([Curve("low", urgency=0.1), Curve("high", urgency=0.3)])
    assert result.trained == ["high"]
    assert result.deferred == ["low"]


def test_drift_is_positive_when_recent_frames_score_worse() -> None:
    steady = [0.8] * 90
    dropped = [0.8] * 45 + [0.4] * 45
    recovered = [0.4] * 45 + [0.8] * 45
    assert drift(steady) == pytest.approx(0.0)
    assert drift(dropped) > 0 > drift(recovered)
    assert drift([0.5]) == 0.0
    # The newest groups weigh most: a late drop outranks an equally deep early one.
    late = [0.8] * 80 + [0.4] * 10
    early = [0.8] * 10 + [0.4] * 10 + [0.8] * 70
    assert drift(late) > drift(early)


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="scheduler policy"):
        SchedulerConfig("fifo")  # type: ignore[arg-type]


class Failing(Curve):
    def train(self, *, iterations: int | None = None, seconds: float | None = None) -> Work:
        return Work(0, 0.0)


@pytest.mark.parametrize("policy", ["round-robin", "micro-window", "urgency"])
def test_a_job_that_cannot_train_gets_no_more_slices_and_the_others_go_on(policy: str) -> None:
    sched = Scheduler(SchedulerConfig(policy, 10, 1.0, 4.0))  # type: ignore[arg-type]
    result = sched.run([Failing("broken", urgency=1.0), Curve("ok")])
    assert "broken" not in result.trained
    assert result.trained == ["ok"]
    assert result.spent > 0


def test_real_time_devices_share_the_interval_between_labelling_and_training() -> None:
    from types import SimpleNamespace

    from edgeadapt.bench.scheduler import SchedulerBenchConfig, real_time

    cfg = SchedulerBenchConfig(interval=10.0, sample_fps=1.0, iterations=20, capacity=2)
    harness = SimpleNamespace(cfg=cfg, per_iteration=0.02, label_per_frame=0.001)
    rt = real_time(harness, {"round-robin": 2, "micro-window": 4, "urgency": 0})  # type: ignore[arg-type]
    # 20 steps of 20 ms and 10 frames of 1 ms: 0.41 s per device, 24 devices in 10 s.
    assert rt["seconds_per_device_round"] == 0.41
    assert rt["devices_at_full_k"] == 24
    # Twice over-subscribed at <= 1 point: n * 0.4 = 2 * (10 - n * 0.01) -> n = 47.6.
    assert rt["devices_at_le_1_point_loss"] == {"round-robin": 24, "micro-window": 47, "urgency": 0}
