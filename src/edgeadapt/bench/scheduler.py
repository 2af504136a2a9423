"""Sharing one trainer's compute among N devices: round-robin, micro-window and urgency.

    edgeadapt bench scheduler [--quick] [--devices 2,4,8,16] --out FILE.json

Every device watches its own synthetic video (segments drawn from a shared scene library, cut at
different times). Video time advances in AMS update intervals (10 s): each device uploads the
frames it sampled in the interval (1 fps, H.264, teacher-labelled on the trainer), and the
trainer runs one scheduling round over every device with the trainer's own ``Scheduler`` and
``PhaseJob`` (real training, the same AMS sessions the trainer runs). A round may spend the same
*compute budget* under every policy and device count: what round-robin needs for ``capacity``
devices (``iterations`` steps each, timed on this machine before the runs), so beyond
``capacity`` devices the trainer is over-subscribed and the policies differ in who gets it.
Micro-window and urgency train in slices of ``slice_steps`` steps' measured time, by default the
K steps round-robin gives a device in a round (what the trainer's 1 s default slice holds on a
2-core CPU). With shorter slices micro-window scored lower (README has the figures): the gain
of a few steps, measured on 6 held-out frames, is mostly noise. The device runs what its phase
committed from the next interval on; its mIoU against the teacher is scored every 2 s of video.

Compute is counted in steps by default (``--clock steps``): every step is charged the rate timed
before the runs, so a round holds the same steps in every run and policy, and the figures do not
move with the machine's load during a run (timed slices, ``--clock measured``, made the same
round-robin run differ by over a point between runs on a shared 2-core machine). The scheduler
still decides on seconds, as the trainer's does; only where they come from differs.

Per device count and policy: mean and p10 mIoU vs teacher, adaptation lag (median seconds after a
cut until the device's 10 s mean is within 2 points of the best 10 s mean it reaches in that
segment), uplink kbps per device, compute spent per round. "Devices per trainer at <= 1 point
loss": the largest device count whose mean mIoU is within 1 point of the same devices' accuracy
when each has the trainer to itself (every device its K steps every round: one uncapped
round-robin run). EdgeSync's sample filter (upload fraction 0.7) is compared against uploading
every sample under the urgency policy at one device count.
"""

from __future__ import annotations

import argparse
import collections
import copy
import functools
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeadapt.adapt.ams import AMSConfig, AMSSession, Teacher, freeze_batchnorm
from edgeadapt.bench.gpu import recorded
from edgeadapt.bench.recl import (
    DeviceData,
    library_video,
    prepare_device,
    recovery_seconds,
)
from edgeadapt.edge_agent.agent import upload_filter
from edgeadapt.models.zoo import SegmentationModel
from edgeadapt.recl.zoo import per_frame_miou
from edgeadapt.trainer.device import HoldOut, Sample
from edgeadapt.trainer.jobs import PhaseJob, StepTimer
from edgeadapt.trainer.scheduler import POLICIES, Scheduler, SchedulerConfig, Work
from edgeadapt.video.codec import encode_h264
from edgeadapt.video.synthetic import NUM_CLASSES

log = logging.getLogger(__name__)

BANK = 90  # EdgeSync's accuracy bank
CLOCKS = ("steps", "measured")


class MeteredJob(PhaseJob):
    """A ``PhaseJob`` whose compute is counted in steps, each charged ``per_step`` seconds (the
    rate the benchmark timed before its runs), instead of timed as it runs.

    The scheduler sees exactly what it sees from a timed job (steps and seconds per slice), but a
    step costs the same in every round, run and policy, so runs compare at equal steps whatever
    else the machine is doing. A slice of ``seconds`` takes the steps a timed slice at that rate
    takes: until ``seconds`` have passed, at least one. The training is the job's own."""

    def __init__(self, *args: Any, per_step: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not per_step > 0:
            raise ValueError(f"a step must cost some time, got {per_step!r} s")
        self.per_step = per_step

    def _train(self, iterations: int | None, seconds: float | None) -> Work:
        if iterations is None:  # the steps whose charge first reaches ``seconds``
            iterations = max(1, math.ceil((seconds or 0.0) / self.per_step - 1e-6))
        work = super()._train(iterations, None)
        return Work(work.iterations, work.iterations * self.per_step)


@dataclass(frozen=True)
class SchedulerBenchConfig:
    devices: tuple[int, ...] = (2, 4, 8, 16)
    duration: float = 300.0
    interval: float = 10.0  # AMS T_update: one round per interval
    sample_fps: float = 1.0
    eval_stride: float = 2.0
    library: int = 6
    types: int = 3
    seed: int = 1
    iterations: int = 20  # AMS K: what round-robin gives each device per round
    batch_size: int = 8
    lr: float = 1e-3
    gamma: float = 0.05
    capacity: int = 2  # devices the round's budget serves at K iterations each
    slice_steps: float = 0.0  # micro-window and urgency slices, in steps' time; 0: iterations
    upload_fraction: float = 0.7  # EdgeSync's k
    filter_devices: int = 4  # the device count the filter is compared at
    policies: tuple[str, ...] = POLICIES
    clock: str = "steps"  # steps: each step costs the rate timed at the start; measured: timed

    def __post_init__(self) -> None:
        if not self.slice_steps >= 0:
            raise ValueError(
                f"--slice-steps must be 0 (--iterations) or more, got {self.slice_steps:g}"
            )
        if self.clock not in CLOCKS:
            raise ValueError(f"--clock must be one of {', '.join(CLOCKS)}, got {self.clock!r}")


@dataclass
class RunResult:
    scores: list[list[tuple[float, float]]]  # per device: (video time, mIoU 0-1)
    uplink_bytes: list[int]
    spent: list[float] = field(default_factory=list)  # compute seconds per round
    budget: list[float] = field(default_factory=list)
    deferred: int = 0
    seconds: float = 0.0


class Harness:
    def __init__(
        self,
        cfg: SchedulerBenchConfig,
        teacher: SegmentationModel,
        student: SegmentationModel,
        device: torch.device | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = device or torch.device("cpu")
        self.teacher = Teacher(teacher, self.device)
        self.student = student.eval()
        self.rounds = int(cfg.duration // cfg.interval)
        self.data = [self._prepare(d) for d in range(max(cfg.devices))]
        self.per_iteration = self._time_iterations()
        self.label_per_frame = self._time_labelling()
        self.budget = cfg.capacity * cfg.iterations * self.per_iteration
        # A slice is the time of ``slice_steps`` steps as measured here: by default what
        # round-robin gives a device in a round, which is also what the trainer's 1 s default
        # slice holds on a 2-core CPU (about 0.05 s per step).
        self.slice_steps = cfg.slice_steps or cfg.iterations
        self.micro_window = self.slice_steps * self.per_iteration

    def _prepare(self, d: int) -> DeviceData:
        cfg = self.cfg
        spec = library_video(cfg.seed, d, cfg.duration, cfg.library, cfg.types)
        return prepare_device(
            spec, self.teacher, self.rounds, cfg.interval, cfg.sample_fps, cfg.eval_stride
        )

    def _session(self, seed: int) -> AMSSession:
        cfg = self.cfg
        ams = AMSConfig(
            iterations=cfg.iterations, batch_size=cfg.batch_size, lr=cfg.lr, gamma=cfg.gamma,
            t_update=cfg.interval, atr=False, seed=seed,
        )  # fmt: skip
        return AMSSession(self.student, ams, NUM_CLASSES, self.device)

    def _time_iterations(self) -> float:
        """Seconds per training step on this machine (the budget's unit), median of 3 phases."""
        session = self._session(0)
        first = self.data[0].windows[0]
        session.ingest(first.images, first.labels, [float(i) for i in range(len(first.images))])
        samples = []
        for _ in range(3):
            phase = session.begin_phase(len(first.images))
            assert phase is not None
            samples.append(self._timed(functools.partial(session.step, phase, self.cfg.iterations)))
            session.commit(phase)
        return float(np.median(samples)) / self.cfg.iterations

    def _time_labelling(self) -> float:
        """Seconds the teacher takes per uploaded frame (the trainer labels every upload),
        median of 3 intervals' uploads."""
        images = self.data[0].windows[0].images
        samples = [self._timed(lambda: self.teacher.label(images)) for _ in range(3)]
        return float(np.median(samples)) / len(images)

    def _timed(self, work: Callable[[], object]) -> float:
        """Compute seconds of ``work``, timed as the scheduler's slices are (``StepTimer``:
        CUDA events on a GPU)."""
        timer = StepTimer(self.device)
        timer.start()
        work()
        return timer.stop()

    @torch.no_grad()
    def _miou(self, model: SegmentationModel, images: np.ndarray, labels: torch.Tensor) -> Any:
        scores = per_frame_miou(
            model, images, labels.long(), NUM_CLASSES, batch=16, device=self.device
        )
        freeze_batchnorm(model)
        return scores

    def run(
        self, policy: str, devices: int, fraction: float = 1.0, capped: bool = True
    ) -> RunResult:
        """One policy on the first ``devices`` devices; ``capped=False``: every device its K
        steps every round, as if it had the trainer to itself (the reference)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        sessions = [self._session(d) for d in range(devices)]
        locks = [threading.RLock() for _ in range(devices)]
        holdout = [HoldOut() for _ in range(devices)]  # as the trainer (micro-window, urgency)
        banks: list[collections.deque[float]] = [collections.deque(maxlen=BANK)
                                                 for _ in range(devices)]  # fmt: skip
        sched = Scheduler(
            SchedulerConfig(
                policy, iterations=cfg.iterations, micro_window=self.micro_window,  # type: ignore[arg-type]
                round_cap=self.budget if capped else math.inf,
            )
        )  # fmt: skip
        result = RunResult([[] for _ in range(devices)], [0] * devices)
        self._score(sessions, result, 0.0)
        for r in range(self.rounds):
            now = (r + 1) * cfg.interval
            jobs = []
            for d in range(devices):
                iv = self.data[d].windows[r]
                images, labels = iv.images, iv.labels
                model = sessions[d].model
                if fraction < 1.0:  # the edge filters on its own model's uncertainty
                    with torch.no_grad():
                        entropy = _edge_entropy(model, images, self.device)
                    keep = upload_filter(entropy, fraction)
                    images, labels = images[keep], labels[keep]
                    result.uplink_bytes[d] += len(encode_h264(list(images)))
                else:
                    result.uplink_bytes[d] += iv.nbytes
                banks[d].extend(self._miou(model, images, labels).tolist())
                times = [r * cfg.interval + i * cfg.interval / len(images)
                         for i in range(len(images))]  # fmt: skip
                released: list[Sample] = []
                if policy != "round-robin":  # as the trainer: held only while there is a choice
                    hold = sched.over_subscribed
                    train, released = holdout[d].split(images, labels, times, hold=hold)
                    images, labels = images[train], labels[train]
                    times = [times[i] for i in train]
                if len(images):
                    sessions[d].ingest(images, labels, times)
                for image, label, t in released:
                    sessions[d].ingest(image[None], label[None], [t], observe=False)
                jobs.append(self._job(
                    f"dev-{d:02d}", sessions[d], locks[d], now, None, holdout[d].frames(),
                    list(banks[d]), NUM_CLASSES, self.device,
                ))  # fmt: skip
            done = sched.run(jobs)
            result.spent.append(done.spent)
            result.budget.append(done.budget)
            result.deferred += len(done.deferred)
            for d, job in enumerate(jobs):
                if job.phase is not None:
                    sessions[d].commit(job.phase)
            self._score(sessions, result, now)
        result.seconds = time.perf_counter() - t0
        return result

    def _job(self, *args: Any) -> PhaseJob:
        """A device's job for one round: timed as it runs (``clock`` measured), or charged the
        rate timed at the start per step (``clock`` steps)."""
        if self.cfg.clock == "measured":
            return PhaseJob(*args)
        return MeteredJob(*args, per_step=self.per_iteration)

    def _score(self, sessions: list[AMSSession], result: RunResult, start: float) -> None:
        """Each device's model on its eval frames of the interval it runs it for."""
        end = start + self.cfg.interval
        for d, session in enumerate(sessions):
            dd = self.data[d]
            sel = [i for i, t in enumerate(dd.eval_times) if start <= t < end]
            if not sel:
                continue
            scores = self._miou(session.model, dd.eval_images[sel], dd.eval_labels[sel])
            pairs = zip(sel, scores.tolist(), strict=True)
            result.scores[d] += [(dd.eval_times[i], float(s)) for i, s in pairs]


def _edge_entropy(
    model: SegmentationModel, images: np.ndarray, device: torch.device
) -> list[float]:
    """Mean per-pixel entropy of the model's softmax per image (what the agent computes)."""
    from edgeadapt.models.data import to_tensor

    model.eval()
    logp = torch.log_softmax(model(to_tensor(images, device)).float(), dim=1)
    freeze_batchnorm(model)
    return (-(logp.exp() * logp).sum(1).mean(dim=(1, 2))).tolist()


def summarize(harness: Harness, result: RunResult) -> dict[str, Any]:
    cfg = harness.cfg
    values = np.array([v for dev in result.scores for _, v in dev])
    lags = [
        s for d, dev in enumerate(result.scores)
        for s, _ in recovery_seconds(dev, harness.data[d].cuts)
    ]  # fmt: skip
    seconds = harness.rounds * cfg.interval
    return {
        "miou_mean": round(100 * float(values.mean()), 2),
        "miou_p10": round(100 * float(np.percentile(values, 10)), 2),
        "adaptation_lag_s": {
            "median": round(float(np.median(lags)), 1) if lags else None,
            "p90": round(float(np.percentile(lags, 90)), 1) if lags else None,
            "cuts": len(lags),
        },
        "uplink_kbps": round(float(np.mean(result.uplink_bytes)) * 8 / seconds / 1000, 1),
        "compute_s_per_round": round(float(np.mean(result.spent)), 3),
        "budget_s_per_round": round(float(np.mean(result.budget)), 3),
        "jobs_deferred": result.deferred,
        "seconds": round(result.seconds, 1),
    }


def targets(report: dict[str, Any]) -> dict[str, Any]:
    runs, out = report["runs"], {}
    at = max((n for n in report["config"]["devices"] if n <= 8), default=None)
    if at is not None:
        rr, mw, ur = (runs[str(at)].get(p) for p in POLICIES)
        out["devices_compared"] = at
        if rr and mw:
            out["micro_window_ge_round_robin_plus_1_5"] = mw["miou_mean"] >= rr["miou_mean"] + 1.5
        if rr and ur:
            out["urgency_ge_round_robin"] = ur["miou_mean"] >= rr["miou_mean"]
    per = report["devices_per_trainer"]
    if per.get("round-robin") and per.get("micro-window") is not None:
        out["micro_window_devices_ge_1_5x_round_robin"] = (
            per["micro-window"] >= 1.5 * per["round-robin"]
        )
    f = report.get("filter")
    if f:
        out["filter_cuts_uplink_ge_25pct"] = f["uplink_cut"] >= 0.25
        out["filter_costs_le_half_point"] = f["miou_loss"] <= 0.5
    return out


def real_time(harness: Harness, per_trainer: dict[str, int]) -> dict[str, Any]:
    """Devices one trainer on this machine serves in real time at <= 1 point loss, per policy.

    In real time the trainer has the whole update interval: it labels every device's uploads
    with the teacher, and trains with what is left. The runs above measured, per policy, how far
    the training budget can be over-subscribed (``r`` = devices / ``capacity``) at <= 1 point
    loss; n devices over-subscribe what is left the same way when
    ``n * K * step = r * (interval - n * frames * label)``."""
    cfg = harness.cfg
    frames = cfg.interval * cfg.sample_fps
    step, label = harness.per_iteration, harness.label_per_frame

    def devices(r: float) -> int:
        return math.floor(r * cfg.interval / (cfg.iterations * step + r * frames * label) + 1e-9)

    return {
        "interval_s": cfg.interval,
        "seconds_per_step": round(step, 5),
        "label_s_per_frame": round(label, 5),
        "seconds_per_device_round": round(cfg.iterations * step + frames * label, 4),
        "devices_at_full_k": devices(1.0),
        "devices_at_le_1_point_loss": {
            p: devices(n / cfg.capacity) if n else 0 for p, n in per_trainer.items()
        },
        "basis": "over-subscription at <= 1 point loss measured above, on this machine's step "
        "and labelling times",
        "ams_reference": "AMS: 7 devices per V100 at round-robin (9 with the adaptive interval)",
    }


def run_benchmark(
    cfg: SchedulerBenchConfig,
    teacher: SegmentationModel,
    student: SegmentationModel,
    device: torch.device | None = None,
) -> dict[str, Any]:
    dev = device or torch.device("cpu")
    return recorded(dev, lambda: _run_benchmark(cfg, teacher, student, dev))


def _run_benchmark(
    cfg: SchedulerBenchConfig,
    teacher: SegmentationModel,
    student: SegmentationModel,
    device: torch.device,
) -> dict[str, Any]:
    t0 = time.monotonic()
    harness = Harness(cfg, teacher, student, device)
    log.info(
        "prepared %d devices x %d intervals on %s in %.0fs; %.4f s per step, %.4f s per "
        "labelled frame, budget %.2f s per round",
        max(cfg.devices), harness.rounds, device, time.monotonic() - t0, harness.per_iteration,
        harness.label_per_frame, harness.budget,
    )  # fmt: skip
    # The reference: every device trained as if alone (round-robin, K steps each, no cap).
    # Devices are independent but for the budget, so one run gives each device's alone figure.
    alone = harness.run("round-robin", max(cfg.devices), capped=False)
    per_device = [float(np.mean([v for _, v in dev])) for dev in alone.scores]
    frames = [len(dev) for dev in alone.scores]

    def reference(n: int) -> float:
        return round(100 * float(np.average(per_device[:n], weights=frames[:n])), 2)

    runs: dict[str, dict[str, Any]] = {}
    for n in cfg.devices:
        runs[str(n)] = {}
        for policy in cfg.policies:
            s = summarize(harness, harness.run(policy, n))
            s["loss_vs_alone"] = round(reference(n) - s["miou_mean"], 2)
            runs[str(n)][policy] = s
            log.info("%2d devices %-12s mIoU %6.2f (alone %6.2f) p10 %6.2f lag %s (%.0fs)", n,
                     policy, s["miou_mean"], reference(n), s["miou_p10"],
                     s["adaptation_lag_s"]["median"], s["seconds"])  # fmt: skip
    per_trainer = {
        p: max([0] + [n for n in cfg.devices if runs[str(n)][p]["loss_vs_alone"] <= 1.0])
        for p in cfg.policies
    }
    report: dict[str, Any] = {
        "alone": {
            "miou_mean": {str(n): reference(n) for n in cfg.devices},
            "seconds": round(alone.seconds, 1),
        },
        "runs": runs,
        "devices_per_trainer": per_trainer,
        "real_time": real_time(harness, per_trainer),
        "seconds_per_step": round(harness.per_iteration, 5),
        "budget_s_per_round": round(harness.budget, 3),
        "micro_window_s": round(harness.micro_window, 4),
        "slice_steps": harness.slice_steps,
        "clock": cfg.clock,
        "torch_device": str(harness.device),
        "config": json.loads(json.dumps(asdict(cfg))),
    }
    n = cfg.filter_devices
    if n and "urgency" in cfg.policies and str(n) in runs:
        full = runs[str(n)]["urgency"]
        filtered = summarize(harness, harness.run("urgency", n, cfg.upload_fraction))
        log.info("filter at %d devices: mIoU %.2f uplink %.1f kbps", n,
                 filtered["miou_mean"], filtered["uplink_kbps"])  # fmt: skip
        report["filter"] = {
            "devices": n,
            "policy": "urgency",
            "upload_fraction": cfg.upload_fraction,
            "filtered": filtered,
            "uplink_cut": round(1 - filtered["uplink_kbps"] / full["uplink_kbps"], 3),
            "miou_loss": round(full["miou_mean"] - filtered["miou_mean"], 2),
        }
    report["targets"] = targets(report)
    report["seconds"] = round(time.monotonic() - t0, 1)
    return report


# -- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--quick", action="store_true", help="2, 4 and 8 devices, 3 min of video")
    parser.add_argument("--devices", help="comma-separated device counts (default 2,4,8,16)")
    parser.add_argument("--duration", type=float, help="seconds of video per device (override)")
    parser.add_argument("--capacity", type=int, default=2, help="devices a round's budget serves")
    parser.add_argument(
        "--iterations", type=int, default=20, help="AMS K: steps per device per round-robin round"
    )
    parser.add_argument(
        "--slice-steps", type=float, default=0.0,
        help="micro-window and urgency slices, in measured steps' time (default: --iterations)",
    )  # fmt: skip
    parser.add_argument(
        "--clock", choices=CLOCKS, default="steps",
        help="compute accounting: steps (each step costs the rate timed at the start, so runs "
        "compare at equal steps) or measured (each slice timed as it runs)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="JSON output; a .png beside it")
    parser.add_argument("--profile", default="bench", help="model training profile (bench, tiny)")
    parser.add_argument(
        "--device", default="auto", help="torch device: cpu, cuda or auto (CUDA when present)"
    )


def plot(path: Path, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [int(n) for n in report["runs"]]
    policies = list(next(iter(report["runs"].values())))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for p in policies:
        runs = [report["runs"][str(n)][p] for n in counts]
        axes[0].plot(counts, [r["miou_mean"] for r in runs], marker="o", label=p)
        axes[1].plot(counts, [r["adaptation_lag_s"]["median"] or 0 for r in runs], marker="o",
                     label=p)  # fmt: skip
    alone = [report["alone"]["miou_mean"][str(n)] - 1 for n in counts]
    axes[0].plot(counts, alone, color="grey", ls="--", lw=1, label="each device alone - 1 point")
    axes[0].set_ylabel("mean mIoU vs teacher (%)")
    axes[1].set_ylabel("median adaptation lag (s)")
    for ax in axes[:2]:
        ax.set_xlabel("devices per trainer")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    f = report.get("filter")
    if f:
        n = str(f["devices"])
        full = report["runs"][n]["urgency"]
        axes[2].bar(["all samples", f"filter k={f['upload_fraction']}"],
                    [full["uplink_kbps"], f["filtered"]["uplink_kbps"]])  # fmt: skip
        axes[2].set_ylabel("uplink per device (kbps)")
        axes[2].set_title(
            f"EdgeSync filter, {n} devices: mIoU {full['miou_mean']} -> "
            f"{f['filtered']['miou_mean']}",
            fontsize=9,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from edgeadapt.models.cache import bench_models
    from edgeadapt.models.train import pick_device

    counts: tuple[int, ...] = (2, 4, 8) if args.quick else (2, 4, 8, 16)
    if args.devices:
        counts = tuple(int(n) for n in args.devices.split(",") if n)
    cfg = SchedulerBenchConfig(
        devices=counts,
        duration=args.duration or (180.0 if args.quick else 300.0),
        capacity=args.capacity,
        iterations=args.iterations,
        slice_steps=args.slice_steps,
        seed=args.seed,
        filter_devices=4 if 4 in counts else counts[0],
        clock=args.clock,
    )
    models, identity = bench_models(args.profile)
    torch.manual_seed(cfg.seed)
    device = pick_device(args.device)
    report = run_benchmark(cfg, models["teacher"], copy.deepcopy(models["student"]), device)
    report["models"] = identity  # figures compare only between runs on the same models
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(args.out.with_suffix(".png"), report)
    print(
        json.dumps(
            {
                "mean_miou": {
                    n: {p: r["miou_mean"] for p, r in runs.items()}
                    for n, runs in report["runs"].items()
                },
                "alone_miou": report["alone"]["miou_mean"],
                "devices_per_trainer": report["devices_per_trainer"],
                "real_time_devices": report["real_time"]["devices_at_le_1_point_loss"],
                "torch_device": report["torch_device"],
                "models": report["models"],
                "filter": {
                    k: v for k, v in (report.get("filter") or {}).items() if k != "filtered"
                },
                "targets": report["targets"],
                "seconds": report["seconds"],
            },
            indent=2,
        )
    )
    return 0
