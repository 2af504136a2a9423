"""The scheduler benchmark's step clock: a job charged per step trains as a timed job does."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from edgeadapt.adapt.ams import AMSConfig, AMSSession
from edgeadapt.adapt.update import parameter_vector
from edgeadapt.bench.scheduler import MeteredJob, SchedulerBenchConfig
from edgeadapt.models.zoo import SegmentationModel, build_student
from edgeadapt.trainer.jobs import PhaseJob
from edgeadapt.trainer.scheduler import Scheduler, SchedulerConfig, Work

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def student() -> SegmentationModel:
    torch.manual_seed(0)
    return build_student(7, width_mult=0.5).eval()


def session(student: SegmentationModel) -> AMSSession:
    s = AMSSession(student, AMSConfig(iterations=2, batch_size=2, t_update=2.0, seed=3), 7, CPU)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (4, 64, 128, 3), dtype=np.uint8)
    labels = torch.from_numpy(rng.integers(0, 7, (4, 64, 128))).long()
    s.ingest(images, labels, [0.0, 1.0, 2.0, 3.0])
    return s


def metered(s: AMSSession, key: str = "cam-1", per_step: float = 0.25) -> MeteredJob:
    return MeteredJob(key, s, threading.RLock(), 3.0, None, None, [], 7, CPU, per_step=per_step)


def test_a_step_costs_the_fixed_rate_and_a_slice_takes_the_steps_its_time_holds(
    student: SegmentationModel,
) -> None:
    job = metered(session(student))
    assert job.train(iterations=3) == Work(3, 0.75)
    assert job.train(seconds=0.6) == Work(3, 0.75)  # until 0.6 s have passed: 3 steps of 0.25
    assert job.train(seconds=4 * 0.25) == Work(4, 1.0)  # exactly 4 steps' time: 4, not 5
    assert job.train(seconds=0.01) == Work(1, 0.25)  # at least one step
    assert job.phase is not None
    assert job.phase.iterations == 11
    assert job.seconds == pytest.approx(2.75)
    with pytest.raises(ValueError, match="a step must cost some time"):
        metered(session(student), per_step=0.0)


def test_the_training_is_the_job_s_own(student: SegmentationModel) -> None:
    timed = PhaseJob("cam-1", session(student), threading.RLock(), 3.0, None, None, [], 7, CPU)
    counted = metered(session(student))
    timed.train(iterations=2)
    timed.train(iterations=1)
    counted.train(iterations=2)
    counted.train(seconds=0.2)
    a, b = timed.session.model, counted.session.model
    assert torch.equal(parameter_vector(a), parameter_vector(b))


def test_a_round_robin_round_spends_exactly_its_budget_in_steps(
    student: SegmentationModel,
) -> None:
    """Three jobs wanting 4 steps each in a round capped at 6 steps: 2 each, 6 steps' time."""
    sched = Scheduler(SchedulerConfig("round-robin", iterations=4, round_cap=6 * 0.25))
    jobs = [metered(session(student), f"cam-{n}") for n in range(3)]
    sched.run(jobs)  # the first round times the rate (the first job's 4 steps)
    jobs = [metered(session(student), f"cam-{n}") for n in range(3)]
    done = sched.run(jobs)
    assert [s.iterations for s in done.slices] == [2, 2, 2]
    assert done.spent == pytest.approx(1.5)
    assert sched.over_subscribed


def test_an_unknown_clock_is_refused() -> None:
    assert SchedulerBenchConfig().clock == "steps"
    with pytest.raises(ValueError, match="--clock must be one of steps, measured, got 'wall'"):
        SchedulerBenchConfig(clock="wall")
