"""The trainer's side of RECL: windows, the gating service client and the safety checker.

For a policy with ``strategy: recl`` or ``ams+recl`` the hub cuts each device's teacher-labelled
frames into windows of ``window_s`` seconds (capture time). Every ``HOLDOUT_EVERY``-th frame is
held out: never trained on, it is what the checks score on. At the end of a window (recl.md
§2.1 to 2.9):

1. the window's frames go to the zoo's gating service, which answers the top-K experts;
2. the safety checker scores those experts, the model the device runs and the model retrained
   for it during the window against the teacher's labels on the frames sent to the gating
   service (every frame of the window, or ``SELECT_FRAMES`` evenly spaced ones: no candidate
   has trained on any of them, as the retraining job's frames end where the window begins);
3. the device is switched to the winner: a zoo expert the agent holds in its expert cache costs
   one ``SwitchExpert`` message; any other model travels as one update (only the coordinates
   that differ, as float16, or every coordinate when that is smaller);
4. the retrained model is offered to the zoo (``Admit``) when it beats every other candidate by
   the zoo's alpha, and the pick is recorded (it decides pruning);
5. a retraining job starts from the winner (warm start) on the device's training frames of
   the last ``ams.t_horizon`` seconds (240 s), the window's and those before it: RECL's own
   horizon is one window, which overfits (recl.md §2.5), and AMS trains on this horizon too; the
   job runs while the next window fills (``iterations`` steps per processed batch), and its
   model, kept to the ``gamma`` fraction of its change that AMS's updates carry (the policy's
   ``ams.gammaFraction``, ``top_change``), is that window's "last retrained model" (its slices
   are scored on the window's held-out frames).

Under ``recl`` a window need not wait for its end when the scene changes (beyond the paper,
whose windows are fixed: recl.md §6): the device's model is scored on every frame as it
arrives, and when its median mIoU over the last ``SCENE_FRAMES`` frames falls ``scene_drop``
(the policy's ``recl.sceneDropPoints``; off by default) below its mean on the frames before them,
steps 1 to 3 run at once on the frames since the change (``scene_change``), and the retraining
job restarts from the winner on the horizon as it is then (the job the window began with has
none of the new scene's frames). The window and admission go on; the window's end selects on
the frames since the change.

``recl`` sends nothing else between window ends. ``ams+recl`` adds AMS's sparse streaming
within windows: every ``ams.t_update`` seconds of a window (10 s) what the retraining job has
learned so far, its ``gamma`` fraction of change, goes to the device as a sparse update (as
AMS's would), so the device runs the job's progress a window sooner; the window's end picks
among that (the device's model), the job's model and the experts as above. A switch there may
take the link until the next update rather than the next window's end, so the updates are not
held for a window behind it.

A gating service that cannot be reached costs reuse, never adaptation: the window ends with the
current and the retrained models only, and the failure is counted.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch

from edgeadapt._proto.gating.v1 import gating_pb2 as gpb
from edgeadapt._proto.gating.v1 import gating_pb2_grpc as gpb_grpc
from edgeadapt.adapt.update import parameter_vector
from edgeadapt.gating.server import encode_labels, parse_checkpoint
from edgeadapt.models.zoo import SegmentationModel
from edgeadapt.stream.auth import call_metadata
from edgeadapt.stream.tls import channel_credentials
from edgeadapt.video.codec import encode_h264

log = logging.getLogger(__name__)

STRATEGIES = ("recl", "ams+recl")
HOLDOUT_EVERY = 5  # every fifth frame of a window is held out for the safety checker
SELECT_FRAMES = 32  # frames of a window sent to Select (evenly spaced)
# A scene change (strategy recl): the device's model, scored on each frame as it arrives, falls
# by SCENE_DROP in mean mIoU over the last SCENE_FRAMES frames against the SCENE_BASELINE or more
# frames before them that it was scored on.
SCENE_FRAMES = 3
SCENE_BASELINE = 3
SCENE_DROP = 0.10  # a fall that is a change when the policy turns them on (measured with)
SCENE_HISTORY = 60  # frames of that record kept
RPC_TIMEOUT = 30.0
EXPERTS_KEPT = 32  # expert parameter vectors kept in the trainer's memory
MAX_EXPERT_BYTES = 256 << 20
CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]


def held_out(position: int) -> bool:
    """Whether a window's ``position``-th frame is held out for the safety checker."""
    return position % HOLDOUT_EVERY == HOLDOUT_EVERY - 1


def spaced(count: int, limit: int | None) -> list[int]:
    """Positions of at most ``limit`` of a window's ``count`` frames, evenly spaced."""
    if limit is None or count <= limit:
        return list(range(count))
    return [int(i) for i in np.linspace(0, count - 1, limit).round()]


def top_change(start: torch.Tensor, after: torch.Tensor, fraction: float) -> torch.Tensor:
    """``after`` with only the ``fraction`` of its coordinates that moved most from ``start``
    kept and the others back at ``start``: a retraining job's model as AMS's updates carry a
    phase's training (the top ``gamma`` of the change). Kept this sparse, the job's model stays
    near the one the device runs; on ``bench recl`` sending the whole job (in parts, as the link
    carries them) scored 1.3 to 2.0 points lower."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the fraction of a change kept must be in (0, 1], got {fraction}")
    if start.shape != after.shape:
        raise ValueError(f"a change of {after.numel()} coordinates from {start.numel()}")
    k = max(1, int(fraction * after.numel()))
    if k >= after.numel():
        return after.clone()
    keep = torch.topk((after - start).abs(), k).indices
    out = start.clone()
    out[keep] = after[keep]
    return out


def continued(optimizer: torch.optim.Optimizer | None, own: bool) -> dict[str, Any] | None:
    """The Adam state (a copy) a device's next retraining job goes on with: the last job's when
    the device kept its own line at the window's end (its model or the job's won), so the jobs
    of one line run as one optimisation, as AMS's session keeps its moments across updates;
    ``None``, a fresh start, when an expert won or there was no job (as AMS resets its moments
    after a switch). Fresh moments make each job's first steps about ``lr`` on every coordinate
    whatever its gradient's history, which a 15-step job spends much of its compute on."""
    if not own or optimizer is None:
        return None
    return copy.deepcopy(optimizer.state_dict())


def scene_change(accuracy: Sequence[float], drop: float = SCENE_DROP) -> int:
    """How many of the last frames show a new scene under the device's model (0: none).

    ``accuracy`` is that model's mIoU on each frame since it started running (NaN where a
    frame could not be scored); ``drop`` is the fall that counts (0: never). The scene changed
    when the median of the last ``SCENE_FRAMES`` frames is ``drop`` below the mean of the
    ``SCENE_BASELINE`` or more before them (one bad frame is not a change); it began with the
    first of those frames that fell."""
    if drop <= 0:
        return 0
    accuracy = accuracy[-SCENE_HISTORY:]
    before = [a for a in accuracy[:-SCENE_FRAMES] if not math.isnan(a)]
    recent = list(accuracy[-SCENE_FRAMES:])
    if len(before) < SCENE_BASELINE or len(recent) < SCENE_FRAMES or any(map(math.isnan, recent)):
        return 0
    floor = sum(before) / len(before) - drop
    if sorted(recent)[len(recent) // 2] >= floor:
        return 0
    return len(recent) - next(i for i, a in enumerate(recent) if a < floor)


class GatingError(Exception):
    """The gating service could not answer (unreachable, refused, or a malformed reply)."""


@dataclass(frozen=True)
class ReclConfig:
    strategy: str = "recl"
    window_s: float = 30.0
    iterations: int = 10  # retraining iterations per processed batch (strategy recl)
    lr: float = 1e-3
    batch_size: int = 8
    # Strategy recl: the fall in the device's model's mIoU (a fraction) that is a scene change
    # and selects at once rather than at the window's end; 0 (the default) waits for the
    # window's end, as RECL does (SCENE_DROP is the fall the benchmark measured: no gain).
    scene_drop: float = 0.0
    # A zoo expert replaces the device's own models (its current, retrained or window-start
    # one) only when it beats the best of them by this much (recl.rules.safety_check).
    switch_margin: float = 0.02

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r}: RECL strategies are {STRATEGIES}")
        if self.window_s <= 0:
            raise ValueError(f"window must be positive, got {self.window_s}")
        if not 0 <= self.scene_drop <= 1:
            raise ValueError(f"scene drop must be in [0, 1], got {self.scene_drop}")
        if not 0 <= self.switch_margin < 1:
            raise ValueError(f"switch margin must be in [0, 1), got {self.switch_margin}")

    @property
    def streams(self) -> bool:
        """AMS's sparse updates run within windows."""
        return self.strategy == "ams+recl"


@dataclass(frozen=True)
class Choice:
    """One expert the gating network proposed."""

    id: str
    score: float
    sha256: str
    source_device: str


class GatingClient:
    """A trainer's connection to its ModelZoo's gating service (TLS and token unless insecure)."""

    def __init__(
        self,
        target: str,
        *,
        caller: str,
        token: str = "",
        ca_file: Path | None = None,
        server_name: str | None = None,
        timeout: float = RPC_TIMEOUT,
    ) -> None:
        options: list[tuple[str, int | str]] = list(CHANNEL_OPTIONS)
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if ca_file is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            self.channel = grpc.secure_channel(
                target, channel_credentials(ca_file), options=options
            )
        self.stub = gpb_grpc.GatingServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.metadata = call_metadata(caller, token)
        self.timeout = timeout
        self.target = target
        self._experts: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.params: tuple[int, float] | None = None  # the zoo's (top K, alpha), once known

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise GatingError(f"{getattr(code, 'name', code)}: {details}") from exc

    def zoo_params(self) -> tuple[int, float]:
        """The zoo's top K and alpha (asked once; they come from the ModelZoo spec)."""
        if self.params is None:
            status = self._call(self.stub.Status, gpb.StatusRequest())
            self.params = (int(status.top_k) or 10, float(status.alpha))
        return self.params

    def status(self) -> gpb.ZooStatus:
        status: gpb.ZooStatus = self._call(self.stub.Status, gpb.StatusRequest())
        return status

    def select(self, images: np.ndarray, k: int) -> tuple[int, list[Choice]]:
        """(zoo version, the top-``k`` experts best first) for a window's frames."""
        reply = self._call(self.stub.Select, gpb.SelectRequest(frames=_frames(images), k=k))
        return int(reply.zoo_version), [
            Choice(e.id, float(e.score), e.sha256, e.source_device) for e in reply.experts
        ]

    def expert(self, choice: Choice, arch: str, template: SegmentationModel) -> torch.Tensor:
        """The expert's trainable parameters as one float32 vector (kept in memory by digest)."""
        with self._lock:
            flat = self._experts.get(choice.sha256)
            if flat is not None:
                self._experts.move_to_end(choice.sha256)
                return flat
        chunks: list[bytes] = []
        size = 0
        digest = ""
        try:
            for chunk in self.stub.GetExpert(
                gpb.ExpertRequest(id=choice.id), metadata=self.metadata, timeout=self.timeout
            ):
                if chunk.sha256:
                    digest = chunk.sha256
                size += len(chunk.data)
                if size > MAX_EXPERT_BYTES:
                    raise GatingError(f"expert {choice.id!r} is larger than {MAX_EXPERT_BYTES}")
                chunks.append(chunk.data)
        except grpc.RpcError as exc:
            raise GatingError(f"expert {choice.id!r}: {exc.details()}") from exc
        data = b"".join(chunks)
        if hashlib.sha256(data).hexdigest() != digest:
            raise GatingError(f"expert {choice.id!r} does not match its SHA-256")
        try:
            state, _ = parse_checkpoint(data, arch)
            model = copy.deepcopy(template)
            model.load_state_dict(state)
        except Exception as exc:
            raise GatingError(f"expert {choice.id!r} does not load: {exc}") from exc
        flat = parameter_vector(model).detach().cpu().clone()
        with self._lock:
            self._experts[choice.sha256] = flat
            while len(self._experts) > EXPERTS_KEPT:
                self._experts.popitem(last=False)
        return flat

    def record(self, picks: Sequence[str]) -> None:
        self._call(self.stub.Record, gpb.RecordRequest(picks=list(picks)))

    def admit(
        self,
        candidate_id: str,
        checkpoint: bytes,
        source_device: str,
        window: int,
        images: np.ndarray,
        labels: torch.Tensor,
    ) -> gpb.AdmitResponse:
        request = gpb.AdmitRequest(
            candidate_id=candidate_id,
            checkpoint=checkpoint,
            source_device=source_device,
            window=window,
            frames=_frames(images),
            labels=encode_labels(labels),
        )
        reply: gpb.AdmitResponse = self._call(self.stub.Admit, request)
        return reply


def _frames(images: np.ndarray) -> gpb.Frames:
    """A window's frames as the gating service takes them: one H.264 batch."""
    return gpb.Frames(h264=encode_h264(list(images), crf=18), count=len(images))


@dataclass
class Window:
    """One device's current window: its frames, split into training and held-out ones."""

    index: int = 0
    start: float | None = None  # capture time of its first frame
    images: list[np.ndarray] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)
    holdout: list[int] = field(default_factory=list)  # positions in images/labels
    seen: int = 0  # frames of the window so far (the held-out choice counts them)
    since: int = 0  # where the window's last scene change began (a position)
    streamed: int = 0  # ams+recl: the job's progress sent within the window so far

    def stream_due(self, now: float, every: float) -> bool:
        """ams+recl: another ``every`` seconds of the window have passed since the last time its
        retraining job's progress was due to go out."""
        return self.start is not None and now - self.start >= every * (self.streamed + 1)

    def add(self, images: np.ndarray, labels: torch.Tensor, times: Sequence[float]) -> list[int]:
        """Keep a batch's frames; the positions (in the batch) that are for training."""
        train = []
        for i in range(len(images)):
            if self.start is None:
                self.start = float(times[i])
            if held_out(self.seen):
                self.holdout.append(len(self.images))
            else:
                train.append(i)
            self.images.append(images[i])
            self.labels.append(labels[i])
            self.seen += 1
        return train

    def due(self, now: float, length: float) -> bool:
        return self.start is not None and now - self.start >= length and bool(self.holdout)

    def held_out(self) -> tuple[np.ndarray, torch.Tensor]:
        return (
            np.stack([self.images[i] for i in self.holdout]),
            torch.stack([self.labels[i] for i in self.holdout]),
        )

    def held_out_since(self, since: int) -> tuple[np.ndarray, torch.Tensor] | None:
        """The held-out frames from position ``since`` on; None while there are none."""
        idx = [i for i in self.holdout if i >= since]
        if not idx:
            return None
        return np.stack([self.images[i] for i in idx]), torch.stack([self.labels[i] for i in idx])

    def all_frames(self, limit: int | None = None) -> tuple[np.ndarray, torch.Tensor]:
        idx = spaced(len(self.images), limit)
        return np.stack([self.images[i] for i in idx]), torch.stack([self.labels[i] for i in idx])

    def recent(self, limit: int | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """The frames since the window's last scene change (all of them when there was none),
        at most ``limit``, evenly spaced: what selection looks at."""
        idx = [self.since + i for i in spaced(len(self.images) - self.since, limit)]
        return np.stack([self.images[i] for i in idx]), torch.stack([self.labels[i] for i in idx])

    def next(self) -> Window:
        return Window(index=self.index + 1)


@dataclass
class DeviceRecl:
    """A device's RECL state in the trainer (kept in memory: a restart starts a new window)."""

    window: Window = field(default_factory=Window)
    # The retraining job started at the last window's end, warm-started from that window's
    # winner and trained on the horizon's frames while the next one fills.
    retrain: SegmentationModel | None = None
    optimizer: torch.optim.Optimizer | None = None
    job: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # the frames it trains on
    job_holdout: tuple[np.ndarray, torch.Tensor] | None = None  # and scores its slices on
    job_steps: int = 0
    job_start: torch.Tensor | None = None  # the model the job started from (a flat vector)
    # Strategy recl: the mIoU of the model the device runs on each frame since it began to run
    # it (NaN where a frame could not be scored); a fall is a scene change (``scene_change``).
    accuracy: list[float] = field(default_factory=list)
    scene_changes: int = 0
    expert: str = ""  # the zoo expert the device runs, if it runs one unchanged
    cache_size: int = 0  # the agent's expert cache: its size, and what it holds (LRU order)
    cached: collections.OrderedDict[str, int] = field(default_factory=collections.OrderedDict)
    switch_pending: str = ""  # a SwitchExpert sent and not acknowledged
    windows: int = 0
    switches: int = 0
    streamed: int = 0  # ams+recl: sparse updates of the job's progress within windows
    switches_cached: int = 0
    partial_switches: int = 0  # cut to the downlink budget: the largest changes only
    switches_held: int = 0  # the link was still busy with the last one
    # An expert that scored best but not by the switching margin (a fraction) over the device's
    # own models: how often one lost that way (the expert is in the selection's history).
    switch_margin: float = 0.0
    margin_holds: int = 0
    switch_bytes: int = 0
    offered: int = 0
    gating_errors: int = 0
    last_pick: str = ""
    last_scores: dict[str, float] = field(default_factory=dict)
    picks: collections.Counter[str] = field(default_factory=collections.Counter)
    # the last selections (window ends and scene changes): window, event, capture-time span,
    # winner, the expert run after it, the expert the margin held back, every candidate's score
    history: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=16)
    )

    def remember(self, expert_id: str, checksum: int) -> None:
        """The agent now caches ``expert_id`` (as its LRU does: most recent last, then trim)."""
        if not self.cache_size or not expert_id:
            return
        self.cached[expert_id] = checksum
        self.cached.move_to_end(expert_id)
        while len(self.cached) > self.cache_size:
            self.cached.popitem(last=False)

    def view(self) -> dict[str, Any]:
        return {
            "window": self.window.index,
            "windows": self.windows,
            "scene_changes": self.scene_changes,
            "expert": self.expert or None,
            "switches": self.switches,
            "streamed_updates": self.streamed,
            "switches_cached": self.switches_cached,
            "partial_switches": self.partial_switches,
            "switches_held": self.switches_held,
            "switch_margin_points": round(100 * self.switch_margin, 2),
            "margin_holds": self.margin_holds,
            "switch_bytes": self.switch_bytes,
            "offered": self.offered,
            "gating_errors": self.gating_errors,
            "last_pick": self.last_pick,
            "last_scores": {k: round(100 * v, 2) for k, v in self.last_scores.items()},
            "agent_cache": list(self.cached),
            "recent_windows": list(self.history),
        }
