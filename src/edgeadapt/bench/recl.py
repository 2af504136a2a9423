"""RECL against retraining alone on several devices whose scenes recur, within a link budget.

    edgeadapt bench recl [--quick] [--devices N] --out FILE.json

N devices (4) each watch their own synthetic video whose segments are drawn from a small shared
scene library (``library=6,types=3``), so scene types recur on a device and across devices.
Time advances in RECL's windows (30 s); every variant spends the same training compute per
device and window (``iterations`` Adam steps of ``batch_size`` frames), and every model a device
receives travels over its downlink budget (250 kbps): an update or a switch reaches the device
only once its bytes have (a paced link), and a switch to a model the device holds in its cache of
recent models costs a message.

- ``ams``: AMS alone (its sampling of the window at 1 fps, 10 s update phases, sparse updates);
- ``recl``: at each window's end the gating network's top-K experts, the device's model and its
  last retrained model are scored on the window's frames (none of them has trained on any, as
  in the trainer) against the teacher and the best is sent, an expert only when it beats the
  best of the device's own two by the switching margin (``--switch-margin-points``, 2, the
  trainer's default; 0 is the paper's checker); a retraining job warm-started from
  it (going on with the last job's Adam state when the device kept its own line, as the
  trainer's: ``continued``) trains on the training frames of the horizon
  (``--horizon-seconds``, AMS's 240 s: the window's and the ones before it, less every fifth,
  held out as in the trainer) and sends its sparse delta (the top ``gamma`` fraction of the
  change, ``trainer.recl.top_change``, as AMS's updates and the trainer's jobs) to the
  trainer's copy;
  models that beat the others by alpha are admitted to the shared zoo past gamma, and unused
  ones pruned. Within a window the device's model is scored on each frame as it arrives (one
  frame per upload); a scene change (``trainer.recl.scene_change``) selects at once on the frames
  since it and restarts the job from the winner, the two jobs sharing the window's steps pro
  rata to the frames each ran for, as the trainer's do;
- ``recl_no_reuse``: the same without the zoo (the device's model and its last retrained one);
- ``ams+recl``: ``recl`` with AMS's sparse streaming within windows, as the trainer's: every
  third of a window (AMS's 10 s update) the retraining job's progress so far (its top ``gamma``
  fraction of change) goes to the device as a sparse update, paced like AMS's; the window's end
  selects as ``recl`` does, the streamed model being the device's;
- ``oracle_reuse``: ``recl`` with the safety checker trying every expert (no gating);
- ``recl_unpruned``: ``recl`` with pruning off (the zoo-size comparison).

Reported per variant: mean and p10 mIoU against the teacher over every device's scored frames,
median and p90 seconds to recover after a cut (until within 2 points of the best 10 s mean the
variant reaches in that segment), over all cuts and over cuts to scene types seen before,
downlink and uplink kbps per device, zoo size over time, selection accuracy (the top-K holds the
expert the exhaustive check would pick, once the zoo holds more than K; on ``recl`` and
``recl_unpruned``) and seconds spent on selection, retraining and zoo updates: CPU time on the
CPU (``cpu_seconds``); on a GPU (``--device``, CUDA when present) wall-clock time with the GPU's
work finished (``gpu_seconds``), and NVML's view of the GPU while it ran (``gpu_telemetry``). The
models train and score on that device; the gating network, as the gating service's, on the CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeadapt.adapt.ams import AMSConfig, AMSSession, Teacher, freeze_batchnorm
from edgeadapt.adapt.metrics import frame_miou
from edgeadapt.adapt.update import ModelUpdate, encode_update
from edgeadapt.bench.gpu import recorded
from edgeadapt.models.data import to_tensor
from edgeadapt.models.zoo import SegmentationModel
from edgeadapt.recl.rules import ReclParams, safety_check
from edgeadapt.recl.store import ZooStore
from edgeadapt.recl.zoo import Candidate, Zoo, per_frame_miou
from edgeadapt.trainer.recl import (
    HOLDOUT_EVERY,
    SCENE_HISTORY,
    SELECT_FRAMES,
    ReclConfig,
    continued,
    held_out,
    scene_change,
    spaced,
    top_change,
)
from edgeadapt.video.codec import decode_h264, encode_h264
from edgeadapt.video.source import open_source
from edgeadapt.video.synthetic import (
    NUM_CLASSES,
    SEGMENT_S,
    SyntheticVideo,
    check_scene_seconds,
    parse_scene_seconds,
)

log = logging.getLogger(__name__)

VARIANTS = ("ams", "recl", "recl_no_reuse", "ams+recl", "oracle_reuse", "recl_unpruned")
# Besides K: how often the gating network's first k held the expert that scores best. The top-K
# target counts only once the zoo holds more than K, which a quick run's zoo may never do; the
# smaller k say how well the gating network ranks a smaller zoo.
RANKING_KS = (1, 3, 5)
SWITCH_MESSAGE_BYTES = 64  # a switch to a model the device holds: its id and checksum
BUDGET_SHARE = 0.85  # of a window's downlink budget one switch may take (as the trainer plans)


@dataclass(frozen=True)
class ReclBenchConfig:
    devices: int = 4
    duration: float = 480.0
    library: int = 6
    types: int = 3
    scene_s: tuple[float, float] = SEGMENT_S  # how long a scene lasts before a cut, seconds
    seed: int = 1
    window_s: float = 30.0
    sample_fps: float = 1.0
    eval_stride: float = 2.0
    iterations: int = 15  # Adam steps per device and window, every variant
    # Seconds of a device's recent frames training draws from, every variant (AMS's T_horizon;
    # RECL's retraining jobs, as the trainer's: whole windows, the one just ended and older).
    horizon_s: float = AMSConfig.t_horizon
    # recl's scene changes: the fall in the device's model's mIoU that selects at once (the
    # trainer's recl.sceneDropPoints / 100); 0, the default as the trainer's, waits for the
    # window's end, as the paper does (SCENE_DROP, 10 points, measured no gain over two seeds).
    scene_drop: float = 0.0
    # An expert wins only when it beats the device's own models by this much (the trainer's
    # recl.switchMarginPoints / 100 and its default; 0 is the paper's safety checker).
    switch_margin: float = ReclConfig.switch_margin
    batch_size: int = 8
    # Adam's learning rate, every variant's training (AMS's phases, RECL's retraining jobs): AMS's
    # 1e-3, the trainer's default (``--lr``).
    lr: float = AMSConfig.lr
    update_fraction: float = 0.05  # coordinates a retraining job or AMS phase changes
    downlink_kbps: float = 250.0
    cache_size: int = 8
    # The product's K (10). Pruning's q is scaled to the run: the paper's 3000 selections are
    # hours of a fleet; 16 are the last 4 windows of 4 devices, so an expert is judged (and its
    # grace period ends) within the quick run's 64 selections.
    recl: ReclParams = field(default_factory=lambda: ReclParams(top_k=10, gamma=2, eta=2, q=16))
    gating_fit_steps: int = 200  # the gating service's default (--fit-steps)
    variants: tuple[str, ...] = VARIANTS

    def __post_init__(self) -> None:
        n = self.iterations
        if n < 3 or n % 3:
            # AMS spends a third of them on each of a window's three 10 s updates: equal compute.
            raise ValueError(f"--iterations must be a positive multiple of 3, got {n}")
        if self.window_s * self.sample_fps < HOLDOUT_EVERY:
            raise ValueError(f"a window needs at least {HOLDOUT_EVERY} frames (one held out)")
        check_scene_seconds(self.scene_s, "--scene-seconds")
        if not 0 <= self.scene_drop <= 1:
            raise ValueError(
                f"--scene-drop-points must be between 0 and 100, got {self.scene_drop * 100:g}"
            )
        if not 0 <= self.switch_margin < 1:
            raise ValueError(
                "--switch-margin-points must be at least 0 and below 100,"
                f" got {self.switch_margin * 100:g}"
            )
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr:g}")
        if not self.downlink_kbps > 0:
            raise ValueError(f"--downlink-kbps must be positive, got {self.downlink_kbps:g}")
        if not self.window_s <= self.horizon_s <= self.duration:
            raise ValueError(
                f"--horizon-seconds must be between the window ({self.window_s:g} s) and the"
                f" video's length ({self.duration:g} s), got {self.horizon_s:g}"
            )


@dataclass
class Window:
    """One device's upload for one window: frames, the teacher's labels, bytes on the wire."""

    images: np.ndarray
    labels: torch.Tensor
    times: list[float]
    nbytes: int

    @property
    def held(self) -> list[int]:
        """The frames nothing trains on (as in the trainer)."""
        return [i for i in range(len(self.times)) if held_out(i)]

    @property
    def train(self) -> list[int]:
        held = set(self.held)
        return [i for i in range(len(self.times)) if i not in held]

    def selected(self, since: int = 0) -> list[int]:
        """The frames the trainer sends to Select: those since the last scene change (the
        window's start when there was none), at most ``SELECT_FRAMES``, evenly spaced."""
        return [since + i for i in spaced(len(self.times) - since, SELECT_FRAMES)]


@dataclass
class Job:
    """Strategy recl: a device's retraining job, warm-started from ``start`` at frame ``begun``
    of a window, on ``data`` (windows and their frame positions). As in the trainer, it trains
    while the window fills: its steps are the window's ``iterations`` pro rata to the frames it
    ran for, so a job restarted at a scene change splits one window's compute with the first."""

    id: str
    start: torch.Tensor
    data: list[tuple[Window, list[int]]]
    seed: int
    begun: int = 0
    # its own copy of the model, trained so far, and what training it goes on with
    steps: int = 0
    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    generator: torch.Generator | None = None
    frames: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    labels: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    # Adam's state to go on with (``continued``): the last job's, when the device kept its own line
    moments: dict[str, Any] | None = None


@dataclass
class DeviceData:
    video: SyntheticVideo
    windows: list[Window]
    eval_times: list[float]
    eval_images: np.ndarray
    eval_labels: torch.Tensor
    cuts: list[tuple[float, float, bool]]  # (start, end, recurring scene type)


def library_video(
    seed: int,
    device: int,
    duration: float,
    library: int,
    types: int,
    scene_s: tuple[float, float] = SEGMENT_S,
) -> str:
    """The synthetic video of a benchmark's ``device``: segments of ``scene_s`` seconds from a
    shared scene library."""
    spec = f"synthetic:seed={seed * 100 + device},duration={duration:g}"
    spec += f",library={library},types={types}"
    if scene_s != SEGMENT_S:
        spec += f",scene={scene_s[0]:g}-{scene_s[1]:g}"
    return spec


def prepare_device(
    spec: str,
    teacher: Teacher,
    windows: int,
    window_s: float,
    sample_fps: float,
    eval_stride: float,
) -> DeviceData:
    """A device's synthetic video as a benchmark sees it: per window the frames sampled at
    ``sample_fps``, through H.264 (their bytes are the uplink) and labelled by the teacher; frames
    every ``eval_stride`` seconds to score the device's model on; the scene cuts."""
    video = open_source(spec)
    assert isinstance(video, SyntheticVideo)
    out = []
    for w in range(windows):
        times = [w * window_s + i / sample_fps for i in range(int(window_s * sample_fps))]
        idx = [min(round(t * video.fps), video.num_frames - 1) for t in times]
        data = encode_h264([video.frame(i).image for i in idx])
        decoded = np.stack(decode_h264(data))
        out.append(Window(decoded, teacher.label(decoded), times, len(data)))
    eval_times = list(np.arange(0.0, windows * window_s, eval_stride))
    frames = [video.frame(min(round(t * video.fps), video.num_frames - 1)) for t in eval_times]
    eval_images = np.stack([f.image for f in frames])
    cuts = [(s.start, s.end, False) for s in video.segments[1:] if s.start < eval_times[-1]]
    return DeviceData(video, out, eval_times, eval_images, teacher.label(eval_images), cuts)


@dataclass
class Link:
    """A device's paced downlink and its cache of recent models."""

    bps: float
    cache_size: int
    busy_until: float = 0.0
    bytes: int = 0
    cache: OrderedDict[str, None] = field(default_factory=OrderedDict)
    pending: list[tuple[float, Callable[[], None]]] = field(default_factory=list)

    def send(self, now: float, nbytes: int, apply: Callable[[], None]) -> float:
        arrival = max(now, self.busy_until) + nbytes * 8 / self.bps
        self.busy_until = arrival
        self.bytes += nbytes
        self.pending.append((arrival, apply))
        return arrival

    def room(self, now: float, horizon: float) -> float:
        """Bytes that can still arrive by ``now + horizon`` after what is queued."""
        return max(0.0, now + horizon - max(now, self.busy_until)) * self.bps / 8

    def deliver(self, until: float) -> None:
        due = [p for p in self.pending if p[0] <= until]
        self.pending = [p for p in self.pending if p[0] > until]
        for _, apply in sorted(due, key=lambda p: p[0]):
            apply()

    def remember(self, model_id: str | None) -> None:
        if model_id is None:
            return
        self.cache[model_id] = None
        self.cache.move_to_end(model_id)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)


@dataclass
class Device:
    """What one device runs (``weights``, as the device holds them) and what its trainer keeps."""

    weights: torch.Tensor  # what it runs now
    planned: torch.Tensor  # what it will run once its link has delivered what was sent
    planned_id: str | None  # that model's id; None for a streamed or partly switched one
    link: Link
    scores: list[tuple[float, float]] = field(default_factory=list)
    current: tuple[str, torch.Tensor] | None = None  # the trainer's view of the device's model
    job: Job | None = None  # recl: the retraining job running through this window
    session: AMSSession | None = None
    bytes_per_coordinate: float = 2.5  # of AMS updates, measured after the first
    # Strategy recl, as the trainer watches a window: the device's model's mIoU on each frame
    # since that model started running, and where the window's last scene change began.
    accuracy: list[float] = field(default_factory=list)
    since: int = 0


@dataclass
class VariantResult:
    scores: list[list[tuple[float, float]]]
    downlink_bytes: list[int]
    zoo_sizes: list[tuple[float, int]] = field(default_factory=list)
    selections: int = 0
    # k -> [selections whose gating top k held the best-scoring expert, selections checked]
    ranking: dict[int, list[int]] = field(default_factory=dict)
    switches: int = 0
    streamed: int = 0  # ams+recl: sparse updates of a job's progress within windows
    scene_selections: int = 0  # selections at a scene change, within a window
    cached_switches: int = 0
    partial_switches: int = 0
    compute: dict[str, float] = field(  # seconds per part (Harness.clock)
        default_factory=lambda: {"selection": 0.0, "retraining": 0.0, "zoo": 0.0}
    )
    seconds: float = 0.0


class Resident:
    """One model on the torch device that scores weight vectors kept elsewhere (the CPU).

    Scoring a device frame by frame loads the vector it runs once per frame; loading the vector
    the model already holds, unchanged since (a tensor's in-place changes bump its version),
    costs nothing, where it would copy every parameter (to the GPU, on CUDA)."""

    def __init__(self, model: SegmentationModel, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.loads = 0  # vectors copied into the model
        self._held: tuple[torch.Tensor, int] | None = None

    def load(self, weights: torch.Tensor) -> SegmentationModel:
        held = self._held
        if held is None or held[0] is not weights or held[1] != weights._version:
            nn.utils.vector_to_parameters(weights.to(self.device), self.model.parameters())
            self._held = (weights, weights._version)
            self.loads += 1
        return self.model


class Harness:
    def __init__(
        self,
        cfg: ReclBenchConfig,
        teacher: SegmentationModel,
        student: SegmentationModel,
        workdir: Path,
        device: torch.device | None = None,
    ) -> None:
        self.cfg = cfg
        # Where the models train and score. The weight vectors (what each device runs, what
        # travels, the zoo's experts) stay on the CPU: encoding an update is CPU work.
        self.device = device or torch.device("cpu")
        self.teacher = Teacher(teacher, self.device)
        self.student = student.eval()
        freeze_batchnorm(self.student)
        self.student.eval()
        self.workdir = workdir
        self.params = list(self.student.parameters())
        self.base = nn.utils.parameters_to_vector(self.params).detach().clone()
        self.num_windows = int(cfg.duration // cfg.window_s)
        self.horizon_windows = max(1, round(cfg.horizon_s / cfg.window_s))
        self.data = [self._prepare(d) for d in range(cfg.devices)]
        self._mark_recurring()
        self.resident = Resident(copy.deepcopy(self.student).to(self.device).eval(), self.device)
        self.work = self.resident.model

    def clock(self) -> float:
        """Seconds for the report's per-part figures: this process's CPU time on the CPU; on a
        GPU, wall-clock time once its queued work has finished (the part's GPU time with the
        CPU time around it)."""
        if self.device.type != "cuda":
            return time.process_time()
        torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # -- data ---------------------------------------------------------------------------------
    def _prepare(self, d: int) -> DeviceData:
        cfg = self.cfg
        spec = library_video(cfg.seed, d, cfg.duration, cfg.library, cfg.types, cfg.scene_s)
        return prepare_device(
            spec, self.teacher, self.num_windows, cfg.window_s, cfg.sample_fps, cfg.eval_stride
        )

    def _mark_recurring(self) -> None:
        """A cut is to a recurring scene when its type played before, on any device."""
        first_seen: dict[int, float] = {}
        for dd in self.data:
            for s in dd.video.segments:
                first_seen[s.style_index] = min(first_seen.get(s.style_index, math.inf), s.start)
        for dd in self.data:
            styles = {s.start: s.style_index for s in dd.video.segments}
            dd.cuts = [(a, b, first_seen[styles[a]] < a) for a, b, _ in dd.cuts]

    # -- models -------------------------------------------------------------------------------
    def load(self, weights: torch.Tensor) -> SegmentationModel:
        return self.resident.load(weights)

    def accuracy(self, weights: torch.Tensor, window: Window, frames: list[int]) -> float:
        """Mean mIoU on the window's ``frames``."""
        model = self.load(weights)
        images, labels = window.images[frames], window.labels[frames]
        return float(per_frame_miou(model, images, labels, NUM_CLASSES, device=self.device).mean())

    def retrain(self, job: Job, steps: int) -> torch.Tensor:
        """Train ``job`` on its frames until it has taken ``steps`` Adam steps in all (it keeps
        its model, optimiser and sampler between calls, as the trainer's job does between
        slices); returns its model with only the top fraction of the change from its start
        kept (rounded to float16, as it travels), the rest reverted."""
        cfg = self.cfg
        if job.model is None:
            job.model = copy.deepcopy(self.work).eval()
            nn.utils.vector_to_parameters(
                job.start.to(self.device, copy=True), job.model.parameters()
            )
            freeze_batchnorm(job.model)
            job.optimizer = torch.optim.Adam(job.model.parameters(), lr=cfg.lr)
            if job.moments is not None:
                job.optimizer.load_state_dict(job.moments)
                job.moments = None
            job.generator = torch.Generator().manual_seed(job.seed)
            if any(idx for _, idx in job.data):
                job.frames = torch.cat(
                    [to_tensor(x.images[idx], self.device) for x, idx in job.data if idx]
                )
                job.labels = torch.cat([x.labels[idx] for x, idx in job.data if idx]).to(
                    self.device
                )
        assert job.optimizer is not None
        criterion = nn.CrossEntropyLoss()
        while job.steps < steps and len(job.frames):
            pick = torch.randint(len(job.frames), (cfg.batch_size,), generator=job.generator)
            loss = criterion(job.model(job.frames[pick]), job.labels[pick])
            job.optimizer.zero_grad()
            loss.backward()
            job.optimizer.step()
            job.steps += 1
        start = job.start
        if job.steps == 0:
            return start.clone()
        after = nn.utils.parameters_to_vector(job.model.parameters()).detach().cpu()
        out = top_change(start, after, cfg.update_fraction)
        changed = out != start
        out[changed] = out[changed].half().float()
        return out

    def deploy(
        self,
        device: Device,
        now: float,
        target: torch.Tensor,
        target_id: str | None,
        result: VariantResult,
        horizon: float | None = None,
        streamed: bool = False,
    ) -> tuple[torch.Tensor, str | None]:
        """Send ``target`` to the device over its paced link; returns what the device will run.

        A model the device holds (its cache of recent models) costs a message. Otherwise the
        smaller of the difference from what the device will run and a snapshot travels, when it
        fits one window's (or ``horizon``'s) share of the budget; when it does not, the largest
        changes that fit do (as AMS's updates would), and the next windows carry the rest. A
        ``streamed`` one (ams+recl's progress) counts as an update, not a switch."""
        if target_id is not None and device.planned_id == target_id:
            return device.planned, target_id
        n = len(target)
        running: str | None
        if target_id is not None and target_id in device.link.cache:
            result.switches += 1
            result.cached_switches += 1
            nbytes, weights, running = SWITCH_MESSAGE_BYTES, target.clone(), target_id
        else:
            changed = torch.nonzero(target.half() != device.planned.half()).squeeze(1)
            if streamed and not len(changed):  # nothing new (as the trainer's: nothing sent)
                return device.planned, device.planned_id
            diff = ModelUpdate(1, 0, n, changed.numpy().astype(np.int64),
                               target[changed].half().numpy())  # fmt: skip
            full = ModelUpdate(1, 0, n, np.arange(n, dtype=np.int64), target.half().numpy())
            nbytes = min(len(encode_update(diff)), len(encode_update(full)))
            weights, running = target.half().float(), target_id
            # What the link can carry in the next window (or ``horizon``) after what is queued.
            budget = device.link.room(now, horizon or self.cfg.window_s) * BUDGET_SHARE
            if nbytes > budget and len(changed):
                per = len(encode_update(diff)) / len(changed)
                k = int(budget / per)
                if k == 0:  # the link is full: the device keeps its model this window
                    return device.planned, device.planned_id
                gap = (target - device.planned).abs()[changed]
                pick = changed[torch.topk(gap, min(k, len(changed))).indices].sort().values
                part = ModelUpdate(1, 0, n, pick.numpy().astype(np.int64),
                                   target[pick].half().numpy())  # fmt: skip
                nbytes = len(encode_update(part))
                weights = device.planned.clone()
                weights[pick] = target[pick].half().float()
                running = None
                result.partial_switches += not streamed
            if streamed:
                result.streamed += 1
            else:
                result.switches += 1
        device.planned, device.planned_id = weights, running

        def apply() -> None:
            device.weights = weights
            device.link.remember(running)

        device.link.send(now, nbytes, apply)
        return weights, running

    def score(self, d: int, device: Device, start: float, end: float) -> None:
        dd = self.data[d]
        for k, t in enumerate(dd.eval_times):
            if start <= t < end:
                device.link.deliver(t)
                with torch.no_grad():
                    model = self.load(device.weights)
                    pred = model(to_tensor(dd.eval_images[k : k + 1], self.device))
                device.scores.append(
                    (t, frame_miou(pred.argmax(1)[0].cpu(), dd.eval_labels[k], NUM_CLASSES))
                )

    # -- variants -----------------------------------------------------------------------------
    def run(self, variant: str) -> VariantResult:
        cfg = self.cfg
        started = time.monotonic()
        devices = [
            Device(
                self.base.clone(),
                self.base.clone(),
                "base",
                Link(cfg.downlink_kbps * 1000, cfg.cache_size),
            )
            for _ in range(cfg.devices)
        ]
        for dev in devices:
            dev.link.remember("base")
            dev.current = ("base", self.base.clone())
        result = VariantResult([], [])
        uses_zoo = variant in ("recl", "ams+recl", "oracle_reuse", "recl_unpruned")
        zoo = None
        if uses_zoo:
            params = cfg.recl if variant != "recl_unpruned" else replace(cfg.recl, eta=0)
            zoo = Zoo(
                ZooStore(
                    tempfile.mkdtemp(prefix=f"zoo-{variant.replace('+', '-')}-", dir=self.workdir)
                ),
                arch=self.student.arch,
                params=params,
                history_size=256,
                fit_steps=cfg.gating_fit_steps,
                seed=cfg.seed,
            )
        if variant == "ams":
            ams = AMSConfig(
                t_horizon=cfg.horizon_s,
                t_update=10.0,
                iterations=cfg.iterations // 3,
                gamma=cfg.update_fraction,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                atr=False,
            )
            for dev in devices:
                dev.session = AMSSession(self.student, ams, NUM_CLASSES, self.device)
        queue: list[Candidate] = []
        for w in range(self.num_windows):
            t0, t1 = w * cfg.window_s, (w + 1) * cfg.window_s
            for d, dev in enumerate(devices):
                window = self.data[d].windows[w]
                if dev.session is not None:
                    self._ams_window(d, dev, window, t0, t1, result)
                else:
                    self._watch(variant, zoo, d, w, dev, window, t0, t1, result)
                if variant == "ams":
                    continue
                self._select(variant, zoo, d, w, dev, window, t1, result, queue)
            if zoo is not None:
                c0 = self.clock()
                if len(queue) > zoo.params.gamma:
                    zoo.admit(queue)
                    queue = []
                zoo.prune()
                result.compute["zoo"] += self.clock() - c0
                result.zoo_sizes.append((t1, len(zoo.snapshot.ids)))
        result.scores = [dev.scores for dev in devices]
        result.downlink_bytes = [dev.link.bytes for dev in devices]
        result.seconds = time.monotonic() - started
        return result

    def _ams_window(
        self,
        d: int,
        dev: Device,
        window: Window,
        t0: float,
        t1: float,
        result: VariantResult,
    ) -> None:
        """Three AMS phases over the window: ingest 10 s of frames, train, send the update."""
        assert dev.session is not None
        phase = (t1 - t0) / 3
        for p in range(3):
            a, b = t0 + p * phase, t0 + (p + 1) * phase
            sel = [i for i, t in enumerate(window.times) if a <= t < b]
            self.score(d, dev, a, b)
            if sel:
                dev.session.ingest(
                    window.images[sel], window.labels[sel], [window.times[i] for i in sel]
                )
            # The update fraction the link can carry by the next phase's end (as the trainer's
            # link planner does); below a tenth of it the phase waits, its frames kept.
            n = dev.session.num_params
            room = dev.link.room(b, phase) * BUDGET_SHARE
            fraction = min(self.cfg.update_fraction, room / (dev.bytes_per_coordinate * n))
            if fraction < self.cfg.update_fraction / 10:
                continue
            c0 = self.clock()
            update = dev.session.train_phase(b, gamma=fraction)
            result.compute["retraining"] += self.clock() - c0
            if update is None:
                continue
            data = encode_update(update)
            dev.bytes_per_coordinate = len(data) / max(len(update.indices), 1)
            idx = torch.from_numpy(update.indices)
            vals = torch.from_numpy(update.values.astype(np.float32))

            def apply(idx: torch.Tensor = idx, vals: torch.Tensor = vals) -> None:
                weights = dev.weights.clone()
                weights[idx] = vals
                dev.weights = weights

            dev.planned = dev.planned.clone()
            dev.planned[idx] = vals
            dev.planned_id = None
            dev.link.send(b, len(data), apply)
        flat = dev.session.optimizer.flat_params().detach().to("cpu", copy=True)
        dev.current = (f"d{d}-ams", flat)

    def _watch(
        self,
        variant: str,
        zoo: Zoo | None,
        d: int,
        w: int,
        dev: Device,
        window: Window,
        t0: float,
        t1: float,
        result: VariantResult,
    ) -> None:
        """Strategy recl within a window, as the trainer: the device's model is scored on each
        frame as it arrives, and a scene change selects at once on the frames after it. Under
        ams+recl the job's progress streams every third of the window instead (``_stream``)."""
        dev.since, at = 0, t0
        streams = variant == "ams+recl"
        phase = (t1 - t0) / 3
        due = [t0 + phase, t0 + 2 * phase] if streams else []
        for i, t in enumerate(window.times):
            while due and t >= due[0]:
                b = due.pop(0)
                self.score(d, dev, at, b)
                at = b
                self._stream(dev, window, i, b, phase, result)
            self.score(d, dev, at, t)
            at = t
            if streams:
                continue
            assert dev.current is not None
            dev.accuracy.append(self.accuracy(dev.current[1], window, [i]))
            del dev.accuracy[:-SCENE_HISTORY]
            fell = scene_change(dev.accuracy, self.cfg.scene_drop)
            if fell:
                self._scene_select(variant, zoo, d, w, dev, window, i + 1 - fell, i, t, result)
        self.score(d, dev, at, t1)

    def _stream(
        self,
        dev: Device,
        window: Window,
        upto: int,
        now: float,
        phase: float,
        result: VariantResult,
    ) -> None:
        """ams+recl, as the trainer's: the retraining job's model by frame ``upto`` goes to the
        device as a sparse update (what differs from what it will run), paced over ``phase``."""
        if dev.job is None:
            return
        _, model = self._job_model(dev.job, window, upto, result)
        self.deploy(dev, now, model, None, result, horizon=phase, streamed=True)

    def _scene_select(
        self,
        variant: str,
        zoo: Zoo | None,
        d: int,
        w: int,
        dev: Device,
        window: Window,
        first: int,
        last: int,
        now: float,
        result: VariantResult,
    ) -> None:
        """A scene change seen at frame ``last``, begun at ``first``: the safety checker picks
        among the device's model, its last retrained one and the zoo's top-K on the frames
        since it began; the window goes on, and its end selects on those frames and later
        ones."""
        assert dev.current is not None
        c0 = self.clock()
        dev.since = max(dev.since, first, 0)
        frames = [dev.since + i for i in spaced(last + 1 - dev.since, SELECT_FRAMES)]
        candidates: dict[str, torch.Tensor] = {dev.current[0]: dev.current[1]}
        added: list[str] = []
        if zoo is not None and zoo.snapshot.ids:
            _, added = self._experts(variant, zoo, window.images[frames], candidates)
        result.compute["selection"] += self.clock() - c0
        if dev.job is not None:  # what the job has done so far
            retrained = self._job_model(dev.job, window, last + 1, result)
            candidates.setdefault(retrained[0], retrained[1])
        c0 = self.clock()
        scores = {c: self.accuracy(v, window, frames) for c, v in candidates.items()}
        verdict = safety_check(
            scores,
            current=dev.current[0],
            retrained=None,
            alpha=0.0,
            experts=added,
            margin=self.cfg.switch_margin,
        )
        result.compute["selection"] += self.clock() - c0
        result.scene_selections += 1
        if zoo is not None:
            zoo.record(verdict.winner)
        if verdict.winner != dev.current[0]:
            weights, running = self.deploy(
                dev, now, candidates[verdict.winner], verdict.winner, result
            )
            self._running(dev, (running or f"d{d}-w{w}-scene-partial", weights))
        dev.accuracy = []  # no second check until the model has a new baseline
        # The job restarts from the device's model on the horizon as it is now, which holds
        # the new scene's training frames so far (the job the window began with had none).
        horizon = self.data[d].windows[max(0, w + 1 - self.horizon_windows) : w]
        so_far = [i for i in window.train if i <= last]
        dev.job = Job(
            f"d{d}-w{w}-s{last}",
            dev.current[1].clone(),
            [(x, x.train) for x in horizon] + [(window, so_far)],
            seed=w * 100 + d + 1000 * (last + 1),
            begun=last + 1,
        )

    def _job_model(
        self, job: Job, window: Window, upto: int, result: VariantResult
    ) -> tuple[str, torch.Tensor]:
        """The model ``job`` has trained by frame ``upto`` of ``window``."""
        c0 = self.clock()
        steps = round(self.cfg.iterations * (upto - job.begun) / len(window.times))
        model = self.retrain(job, steps)
        result.compute["retraining"] += self.clock() - c0
        return job.id, model

    @staticmethod
    def _running(dev: Device, model: tuple[str, torch.Tensor]) -> None:
        """The trainer's view of the device's model is now ``model``; a changed model starts
        its own record of per-frame accuracy."""
        if dev.current is None or not torch.equal(dev.current[1], model[1]):
            dev.accuracy = []
        dev.current = model

    def _experts(
        self,
        variant: str,
        zoo: Zoo,
        images: np.ndarray,
        candidates: dict[str, torch.Tensor],
    ) -> tuple[list[str], list[str]]:
        """Add the zoo's top-K for ``images`` (every expert for oracle_reuse) to ``candidates``;
        returns the gating network's order of every expert (none for oracle_reuse, which does
        not ask it) and the experts added."""
        ids = zoo.snapshot.ids
        ranked = [] if variant == "oracle_reuse" else [e for e, _ in zoo.select(images, len(ids))]
        chosen = ids if variant == "oracle_reuse" else ranked[: zoo.params.top_k]
        added = [e for e in chosen if e not in candidates]
        for e in added:
            candidates[e] = (
                nn.utils.parameters_to_vector(zoo.model(e).parameters()).detach().clone()
            )
        return ranked, added

    def _select(
        self,
        variant: str,
        zoo: Zoo | None,
        d: int,
        w: int,
        dev: Device,
        window: Window,
        now: float,
        result: VariantResult,
        queue: list[Candidate],
    ) -> None:
        """The window's end: the safety checker picks the device's next model."""
        assert dev.current is not None
        c0 = self.clock()
        candidates: dict[str, torch.Tensor] = {dev.current[0]: dev.current[1]}
        retrained = None
        if dev.job is not None:
            result.compute["selection"] += self.clock() - c0
            retrained = self._job_model(dev.job, window, len(window.times), result)
            c0 = self.clock()
            candidates[retrained[0]] = retrained[1]
        # The frames sent to Select, which the candidates are scored on: none trained on any.
        scored = window.selected(dev.since)
        ranked: list[str] = []
        added: list[str] = []
        if zoo is not None and zoo.snapshot.ids:
            ranked, added = self._experts(variant, zoo, window.images[scored], candidates)
        scores = {c: self.accuracy(v, window, scored) for c, v in candidates.items()}
        retrained_id = retrained[0] if retrained is not None else None
        verdict = safety_check(
            scores,
            current=dev.current[0],
            retrained=retrained_id,
            alpha=zoo.params.alpha if zoo else 0.02,
            experts=added,
            margin=self.cfg.switch_margin,
        )
        result.compute["selection"] += self.clock() - c0
        result.selections += 1
        if zoo is not None:
            zoo.record(verdict.winner)
            if variant in ("recl", "recl_unpruned") and len(zoo.snapshot.ids) > 1:
                known = {e: scores[e] for e in added}  # the top-K, scored as candidates
                self._check_ranking(zoo, window, scored, ranked, known, result)
            if verdict.promising and retrained is not None and w > 0:
                queue.append(self._candidate(retrained, d, w - 1, self.data[d].windows[w - 1]))
        winner = candidates[verdict.winner]
        previous, own = dev.job, verdict.winner in (dev.current[0], retrained_id)
        # Under ams+recl a switch may take the link until the next streamed update (a window's
        # third), as the trainer's.
        horizon = self.cfg.window_s / 3 if variant == "ams+recl" else None
        weights, running = self.deploy(dev, now, winner, verdict.winner, result, horizon)
        self._running(dev, (running or f"d{d}-w{w}-partial", weights))
        # The next window's job starts from the model the device will run (as the trainer's,
        # the winner or the part of it the link carries) on the horizon: this window's training
        # frames and older ones; it goes on with the last job's Adam state when the device
        # kept its own line (``continued``).
        recent = self.data[d].windows[max(0, w + 1 - self.horizon_windows) : w + 1]
        dev.job = Job(f"d{d}-w{w}", weights.clone(), [(x, x.train) for x in recent], w * 100 + d)
        dev.job.moments = continued(previous.optimizer if previous else None, own)

    def _check_ranking(
        self,
        zoo: Zoo,
        window: Window,
        scored: list[int],
        ranked: list[str],
        known: dict[str, float],
        result: VariantResult,
    ) -> None:
        """Score the experts not yet scored (``known``) on the frames the safety checker scored
        and note whether the gating network's first k (``ranked``, every expert) held the best
        (a measurement: not counted as selection time)."""
        everyone = {
            e: known[e]
            if e in known
            else self.accuracy(
                nn.utils.parameters_to_vector(zoo.model(e).parameters()).detach(), window, scored
            )
            for e in ranked
        }
        for k, hit in ranking_hits(ranked, everyone, (*RANKING_KS, zoo.params.top_k)).items():
            tally = result.ranking.setdefault(k, [0, 0])
            tally[0] += hit
            tally[1] += 1

    def _candidate(
        self, model: tuple[str, torch.Tensor], d: int, w: int, window: Window
    ) -> Candidate:
        state = {
            k: v.detach().to("cpu", copy=True) for k, v in self.load(model[1]).state_dict().items()
        }
        return Candidate(
            model[0],
            state,
            dict(self.student.config),
            f"device-{d}",
            w,
            window.images,
            window.labels.to(torch.uint8),
        )


# -- figures -------------------------------------------------------------------------------------


def ranking_hits(
    ranked: list[str], scores: dict[str, float], ks: tuple[int, ...]
) -> dict[int, bool]:
    """For each k below the zoo's size, whether the first k of ``ranked`` (the gating network's
    order) hold an expert that scores as well as the best (ties count as hits). A k that is the
    whole zoo or more says nothing and is left out."""
    best = max(scores.values())
    return {
        k: any(scores[e] >= best for e in ranked[:k]) for k in sorted(set(ks)) if k < len(ranked)
    }


def recovery_seconds(
    scores: list[tuple[float, float]], cuts: list[tuple[float, float, bool]], smooth_s: float = 10.0
) -> list[tuple[float, bool]]:
    """Per cut: seconds until the 10 s mean comes within 2 points of the best 10 s mean the
    variant reaches in that segment (the segment's length when it never does)."""
    times = np.array([t for t, _ in scores])
    values = np.array([v for _, v in scores])
    out = []
    for start, end, recurring in cuts:
        sel = (times >= start) & (times < end)
        if sel.sum() < 2:
            continue
        t, v = times[sel], values[sel]
        rolling = np.array([v[(t >= x) & (t < x + smooth_s)].mean() for x in t])
        target = rolling.max() - 0.02
        reached = t[np.argmax(rolling >= target)]
        out.append((float(reached - start), recurring))
    return out


def summarize(harness: Harness, result: VariantResult) -> dict[str, Any]:
    cfg = harness.cfg
    seconds = harness.num_windows * cfg.window_s
    values = np.array([v for dev in result.scores for _, v in dev])
    recoveries = [
        r
        for d, dev in enumerate(result.scores)
        for r in recovery_seconds(dev, harness.data[d].cuts)
    ]
    all_cuts = [s for s, _ in recoveries]
    recurring = [s for s, rec in recoveries if rec]
    uplink = [sum(w.nbytes for w in dd.windows) for dd in harness.data]

    def pct(xs: list[float], q: float) -> float | None:
        return round(float(np.percentile(xs, q)), 1) if xs else None

    out: dict[str, Any] = {
        "miou_mean": round(100 * float(values.mean()), 2),
        "miou_p10": round(100 * float(np.percentile(values, 10)), 2),
        "recovery_s": {
            "median": pct(all_cuts, 50),
            "p90": pct(all_cuts, 90),
            "cuts": len(all_cuts),
        },
        "recovery_recurring_s": {
            "median": pct(recurring, 50),
            "p90": pct(recurring, 90),
            "cuts": len(recurring),
        },
        "downlink_kbps": [round(b * 8 / seconds / 1000, 1) for b in result.downlink_bytes],
        "uplink_kbps": [round(b * 8 / seconds / 1000, 1) for b in uplink],
        "switches": result.switches,
        "scene_selections": result.scene_selections,
        "cached_switches": result.cached_switches,
        "partial_switches": result.partial_switches,
        "streamed_updates": result.streamed,
        # CPU time on the CPU; on a GPU wall-clock time with the GPU's work finished
        f"{'gpu' if harness.device.type == 'cuda' else 'cpu'}_seconds": {
            k: round(v, 1) for k, v in result.compute.items()
        },
        "seconds": round(result.seconds, 1),
    }
    if result.zoo_sizes:
        out["zoo_size"] = {
            "final": result.zoo_sizes[-1][1],
            "max": max(n for _, n in result.zoo_sizes),
            "over_time": result.zoo_sizes,
        }
    top_k = cfg.recl.top_k
    if top_k in result.ranking:
        hits, checks = result.ranking[top_k]
        out["selection_accuracy"] = round(hits / checks, 3)
        out["selection_checks"] = checks
    if result.ranking:
        out["ranking"] = {
            str(k): {"hits": hits, "checks": checks, "accuracy": round(hits / checks, 3)}
            for k, (hits, checks) in sorted(result.ranking.items())
        }
    return out


def targets(variants: dict[str, dict[str, Any]], budget: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ams, recl = variants.get("ams"), variants.get("recl")
    if ams and recl:
        a, r = ams["recovery_recurring_s"]["median"], recl["recovery_recurring_s"]["median"]
        out["recl_recovery_le_third_of_ams"] = None if a is None or r is None else r <= a / 3
        out["recl_miou_ge_ams_plus_2"] = recl["miou_mean"] >= ams["miou_mean"] + 2
        both = variants.get("ams+recl")
        if both:
            out["ams+recl_ge_both"] = both["miou_mean"] >= max(ams["miou_mean"], recl["miou_mean"])
    # Selection accuracy counts once the zoo holds more than K experts, which a pruned zoo may
    # never do; the unpruned one then measures it.
    for name in ("recl", "recl_unpruned"):
        v = variants.get(name)
        if v and "selection_accuracy" in v:
            out["topk_holds_oracle_ge_80pct"] = v["selection_accuracy"] >= 0.8
            out["topk_measured_on"] = name
            break
    pruned, unpruned = variants.get("recl"), variants.get("recl_unpruned")
    if pruned and unpruned and "zoo_size" in pruned and "zoo_size" in unpruned:
        out["pruned_zoo_le_third"] = pruned["zoo_size"]["final"] * 3 <= max(
            unpruned["zoo_size"]["final"], 1
        )
        out["pruning_costs_le_half_point"] = unpruned["miou_mean"] - pruned["miou_mean"] <= 0.5
    out["downlink_within_budget"] = all(
        max(v["downlink_kbps"]) <= budget for v in variants.values()
    )
    return out


def run_benchmark(
    cfg: ReclBenchConfig,
    teacher: SegmentationModel,
    student: SegmentationModel,
    workdir: Path,
    device: torch.device | None = None,
) -> dict[str, Any]:
    dev = device or torch.device("cpu")
    return recorded(dev, lambda: _run_benchmark(cfg, teacher, student, workdir, dev))


def _run_benchmark(
    cfg: ReclBenchConfig,
    teacher: SegmentationModel,
    student: SegmentationModel,
    workdir: Path,
    device: torch.device,
) -> dict[str, Any]:
    t0 = time.monotonic()
    harness = Harness(cfg, teacher, student, workdir, device)
    log.info(
        "prepared %d devices x %d windows on %s in %.0fs",
        cfg.devices,
        harness.num_windows,
        device,
        time.monotonic() - t0,
    )
    variants: dict[str, dict[str, Any]] = {}
    for name in cfg.variants:
        result = harness.run(name)
        variants[name] = summarize(harness, result)
        s = variants[name]
        log.info(
            "%-14s mIoU %6.2f p10 %6.2f recovery(recurring) %s down %s kbps (%.0fs)",
            name,
            s["miou_mean"],
            s["miou_p10"],
            s["recovery_recurring_s"]["median"],
            s["downlink_kbps"],
            result.seconds,
        )
    return {
        "devices": [
            {
                "video": dd.video.spec,
                "cuts": len(dd.cuts),
                "recurring_cuts": sum(1 for c in dd.cuts if c[2]),
            }
            for dd in harness.data
        ],
        "variants": variants,
        "targets": targets(variants, cfg.downlink_kbps),
        "student_parameters": int(harness.base.numel()),
        "torch_device": str(device),
        "seconds": round(time.monotonic() - t0, 1),
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
    }


# -- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--quick", action="store_true", help="8 minutes of video instead of 20")
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--duration", type=float, help="seconds of video per device (override)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--iterations",
        type=int,
        default=ReclBenchConfig.iterations,
        help="Adam steps per device and window, every variant; a multiple of 3 (%(default)s)",
    )
    parser.add_argument(
        "--horizon-seconds",
        type=float,
        default=ReclBenchConfig.horizon_s,
        help="seconds of recent frames training draws from, every variant (%(default)g)",
    )
    parser.add_argument(
        "--scene-seconds",
        default="{:g}-{:g}".format(*SEGMENT_S),
        help="LO-HI: how long a scene lasts before a cut, drawn uniformly (%(default)s)",
    )
    parser.add_argument(
        "--scene-drop-points",
        type=float,
        default=0.0,
        help="recl: a fall of this many mIoU points is a scene change and selects at once"
        " (0, the default: only at window ends, as published; 10 was measured)",
    )
    parser.add_argument(
        "--switch-margin-points",
        type=float,
        default=ReclBenchConfig.switch_margin * 100,
        help="an expert must beat the device's own models by this many mIoU points to win"
        " (%(default)g, the trainer's default; 0: the paper's safety checker)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=ReclBenchConfig.lr,
        help="Adam's learning rate, every variant (%(default)g, AMS's and the trainer's default)",
    )
    parser.add_argument(
        "--downlink-kbps",
        type=float,
        default=ReclBenchConfig.downlink_kbps,
        help="each device's downlink budget, every variant (%(default)g; an EdgeDevice's default)",
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON output; a .png beside it")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--profile", default="bench", help="model training profile (bench, tiny)")
    parser.add_argument(
        "--device", default="auto", help="torch device: cpu, cuda or auto (CUDA when present)"
    )


def plot(path: Path, report: dict[str, Any]) -> None:
    """The report's figures per variant: accuracy, recovery, downlink, and the zoo over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = report["variants"]
    names = list(variants)
    x = np.arange(len(names))
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    ax = axes[0][0]
    ax.bar(x - 0.2, [variants[n]["miou_mean"] for n in names], 0.4, label="mean")
    ax.bar(x + 0.2, [variants[n]["miou_p10"] for n in names], 0.4, label="p10")
    ax.set_ylabel("mIoU vs teacher (%)")
    ax.set_title("accuracy")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    bars = ((-0.2, "recovery_s", "all cuts"), (0.2, "recovery_recurring_s", "recurring scenes"))
    for offset, key, label in bars:
        ax.bar(x + offset, [variants[n][key]["median"] or 0 for n in names], 0.4, label=label)
    ax.set_ylabel("median seconds to recover")
    ax.set_title("recovery after a cut")
    ax.legend(fontsize=8)
    ax = axes[1][0]
    ax.bar(x, [float(np.mean(variants[n]["downlink_kbps"])) for n in names])
    budget = report.get("config", {}).get("downlink_kbps")
    if budget:
        ax.axhline(float(budget), color="red", lw=1, ls="--", label="budget")
        ax.legend(fontsize=8)
    ax.set_ylabel("downlink per device (kbps)")
    ax.set_title("downlink")
    for ax in (axes[0][0], axes[0][1], axes[1][0]):
        ax.set_xticks(x, names, rotation=20, fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    ax = axes[1][1]
    for n in names:
        sizes = (variants[n].get("zoo_size") or {}).get("over_time") or []
        if sizes:
            ax.step([t for t, _ in sizes], [k for _, k in sizes], where="post", label=n)
    ax.set_xlabel("video time (s)")
    ax.set_ylabel("experts in the zoo")
    ax.set_title("zoo size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from edgeadapt.models.cache import bench_models
    from edgeadapt.models.train import pick_device

    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    try:
        cfg = ReclBenchConfig(
            devices=args.devices,
            duration=args.duration or (480.0 if args.quick else 1200.0),
            seed=args.seed,
            iterations=args.iterations,
            horizon_s=args.horizon_seconds,
            scene_drop=args.scene_drop_points / 100,
            switch_margin=args.switch_margin_points / 100,
            scene_s=parse_scene_seconds(args.scene_seconds, "--scene-seconds"),
            downlink_kbps=args.downlink_kbps,
            lr=args.lr,
            variants=variants,
        )
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    models, identity = bench_models(args.profile)
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory(prefix="edgeadapt-bench-recl-") as tmp:
        report = run_benchmark(
            cfg, models["teacher"], models["student"], Path(tmp), pick_device(args.device)
        )
    report["models"] = identity  # figures compare only between runs on the same models
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(args.out.with_suffix(".png"), report)
    print(
        json.dumps(
            {
                "variants": {
                    k: {
                        m: v[m]
                        for m in ("miou_mean", "miou_p10", "recovery_recurring_s", "downlink_kbps")
                    }
                    for k, v in report["variants"].items()
                },
                "targets": report["targets"],
                "torch_device": report["torch_device"],
                "models": report["models"],
            },
            indent=2,
        )
    )
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0
