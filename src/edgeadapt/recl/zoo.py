"""The live model zoo: one loaded zoo version to select from, admission and pruning.

``Zoo`` holds the current ``Snapshot`` (a committed ``ZooVersion`` with its gating network
loaded). ``select`` reads whatever snapshot is current when it starts, and ``admit`` and
``prune`` build the next version on copies, commit it to the store and only then swap the
snapshot, so a selection running during an admission sees one version or the other, never a
mix, and a crash mid-admission leaves the store at the previous version.

Several processes may serve one zoo (replicas of the gating service on a ReadWriteMany volume).
Every write (an admission, a pruning, merging the selection log) happens under the store's
file lock and starts from the newest committed version, so versions never fork; a replica picks
up another's commit within a couple of seconds (``refresh``), and pruning counts every
replica's picks (``selections.json`` is merged under the lock).

The gating history is the fixed-size set of teacher-labelled frames the gating net is trained
on, with the accuracy of every expert on each (recl.md §2.8): an admission evaluates the old
experts on the new experts' frames and the new experts on the history, keeps the history at its
size by subsampling the old part, grows the gating head and fine-tunes its last layer.
"""

from __future__ import annotations

import copy
import io
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import numpy as np
import torch

from edgeadapt.adapt.metrics import batch_miou
from edgeadapt.durable import write_atomically
from edgeadapt.models.data import to_tensor
from edgeadapt.models.zoo import SegmentationModel, build_model
from edgeadapt.recl import gating
from edgeadapt.recl.rules import ReclParams, SelectionLog, top_k
from edgeadapt.recl.store import Expert, ZooStore, ZooVersion

HISTORY_SIZE = 512
FRAMES_PER_CANDIDATE = 32  # of a candidate's window, kept in the history on admission
MODEL_CACHE = 16  # experts kept loaded
SELECTIONS_FILE = "selections.json"

ModelFactory = Callable[[str, dict[str, Any]], SegmentationModel]


@torch.no_grad()
def per_frame_miou(
    model: SegmentationModel, images: np.ndarray, labels: torch.Tensor, num_classes: int,
    batch: int = 16, device: torch.device | None = None,
) -> torch.Tensor:  # fmt: skip
    """The model's mIoU against the teacher's labels, per frame (uint8 N x H x W x 3 images;
    ``device``: where the model is)."""
    model.eval()
    out: list[float] = []
    for i in range(0, len(images), batch):
        pred = model(to_tensor(images[i : i + batch], device)).argmax(1).cpu()
        out += batch_miou(pred, labels[i : i + batch], num_classes)
    return torch.tensor(out, dtype=torch.float32)


@dataclass(frozen=True)
class History:
    images: np.ndarray  # uint8 N x H x W x 3
    labels: torch.Tensor  # uint8 N x H x W (teacher)
    accuracy: torch.Tensor  # float N x experts

    @classmethod
    def empty(cls) -> History:
        return cls(np.zeros((0, 1, 1, 3), np.uint8), torch.zeros(0, 1, 1, dtype=torch.uint8),
                   torch.zeros(0, 0))  # fmt: skip

    def __len__(self) -> int:
        return len(self.images)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"images": torch.from_numpy(self.images), "labels": self.labels,
                "accuracy": self.accuracy}  # fmt: skip

    @classmethod
    def from_tensors(cls, d: dict[str, torch.Tensor]) -> History:
        return cls(d["images"].numpy(), d["labels"], d["accuracy"])


@dataclass(frozen=True)
class Snapshot:
    """One committed zoo version, loaded: what a selection reads."""

    version: ZooVersion
    net: gating.GatingNet
    history: History

    @property
    def ids(self) -> list[str]:
        return self.version.expert_ids()


@dataclass(frozen=True)
class Candidate:
    """A retrained model the safety checker found promising, with the window it learned."""

    id: str
    state: dict[str, torch.Tensor]
    config: dict[str, Any]  # its builder config (a checkpoint's ids.config)
    source_device: str
    window: int
    images: np.ndarray
    labels: torch.Tensor


class Zoo:
    def __init__(
        self,
        store: ZooStore,
        *,
        arch: str,
        params: ReclParams,
        new_model: ModelFactory = build_model,
        history_size: int = HISTORY_SIZE,
        fit_steps: int = 200,
        seed: int = 0,
    ) -> None:
        self.store = store
        self.arch = arch
        self.new_model = new_model
        self.params = params
        self.history_size = history_size
        self.fit_steps = fit_steps
        self.seed = seed
        self.log = self._load_log()
        self._models: OrderedDict[str, SegmentationModel] = OrderedDict()
        self._write = threading.Lock()  # one admission or prune at a time
        self._pending: list[str] = []  # picks recorded here and not merged into the shared log
        version = store.load()
        if version is None:
            version = store.commit(ZooVersion(0, time.time(), arch))
        elif version.arch != arch:
            raise ValueError(f"the zoo holds {version.arch} experts, not {arch}")
        self._snapshot = self._load(version)
        self.log.admit(self._snapshot.ids)

    def _load_log(self) -> SelectionLog:
        path = self.store.root / SELECTIONS_FILE
        try:
            return SelectionLog.from_json(json.loads(path.read_text()), self.params.q)
        except (OSError, ValueError, TypeError, AttributeError):
            return SelectionLog(self.params.q)  # none yet, or unreadable: counting starts again

    def save_log(self) -> None:
        """Merge the picks recorded here into the zoo's selection log on its volume (a bounded
        file: the last q picks), which every replica of the service shares and pruning reads."""
        with self.store.lock():
            self._merge_log()

    def _merge_log(self) -> None:
        """Caller holds the store's lock: the shared log, plus this process's new picks."""
        shared = self._load_log()
        ids = set(self._snapshot.ids)
        shared.remove([e for e in shared.admitted_at if e not in ids])  # pruned meanwhile
        shared.admit(self._snapshot.ids)  # (its grace period starts now if it is new here)
        for pick in self._pending:
            shared.record(pick)
        self._pending.clear()
        self.log = shared
        body = json.dumps(shared.to_json()).encode()
        write_atomically(self.store.root / SELECTIONS_FILE, lambda f: _write(f, body))

    def refresh(self) -> bool:
        """Load the zoo's current version if another process committed a newer one (replicas
        of the service share the volume); whether it moved."""
        if self.store.current_number() == self._snapshot.version.version:
            return False
        version = self.store.load()
        if version is None or version.version == self._snapshot.version.version:
            return False
        if version.arch != self.arch:
            raise ValueError(f"the zoo holds {version.arch} experts, not {self.arch}")
        self._snapshot = self._load(version)
        ids = set(self._snapshot.ids)
        for gone in [e for e in self._models if e not in ids]:
            del self._models[gone]
        self.log.remove([e for e in self.log.admitted_at if e not in ids])
        self.log.admit(self._snapshot.ids)
        return True

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def _load(self, version: ZooVersion) -> Snapshot:
        net = gating.GatingNet(len(version.experts))
        if version.gating is not None:
            net.load_state_dict(self.store.get_tensors(version.gating))
        net.eval()
        history = (
            History.from_tensors(self.store.get_tensors(version.history))
            if version.history is not None
            else History.empty()
        )
        return Snapshot(version, net, history)

    # ----------------------------------------------------------------- selection

    def select(self, images: np.ndarray, k: int | None = None) -> list[tuple[str, float]]:
        """The top-k experts for a window's frames, best first, with their gating scores."""
        snap = self._snapshot
        if not snap.ids:
            return []
        scores = snap.net.window_scores(to_tensor(images))
        chosen = top_k(scores, snap.ids, k or self.params.top_k)
        by_id = dict(zip(snap.ids, scores, strict=True))
        return [(e, by_id[e]) for e in chosen]

    def model(self, expert_id: str, snapshot: Snapshot | None = None) -> SegmentationModel:
        """An expert as a model (kept loaded for the next selections)."""
        if expert_id in self._models:
            self._models.move_to_end(expert_id)
            return self._models[expert_id]
        snap = snapshot or self._snapshot
        expert = next((e for e in snap.version.experts if e.id == expert_id), None)
        if expert is None:
            raise KeyError(f"no expert {expert_id} in zoo version {snap.version.version}")
        model = self.new_model(self.arch, dict(snap.version.config))
        model.load_state_dict(self.store.get_tensors(expert.blob))
        model.eval()
        self._models[expert_id] = model
        while len(self._models) > MODEL_CACHE:
            self._models.popitem(last=False)
        return model

    def record(self, pick: str) -> None:
        """The safety checker's pick for one device and window (feeds pruning)."""
        self.log.record(pick)
        self._pending.append(pick)

    # ----------------------------------------------------------------- admission, pruning

    def admit(self, candidates: Sequence[Candidate]) -> ZooVersion:
        """Admit promising models together (recl.md §2.8) and make that the current version."""
        if not candidates:
            raise ValueError("nothing to admit")
        with self._write, self.store.lock():
            self.refresh()  # build on the newest version, whichever replica committed it
            snap = self._snapshot
            old_ids = snap.ids
            config = dict(snap.version.config) or dict(candidates[0].config)
            for c in candidates:
                if c.id in old_ids:
                    raise ValueError(f"expert {c.id} is in the zoo already")
                if dict(c.config) != config:
                    raise ValueError(f"candidate {c.id} is built as {c.config}, the zoo's {config}")
            if int(config.get("num_classes") or 0) < 2:
                raise ValueError(f"the experts' config {config} names no num_classes")
            self._classes = int(config["num_classes"])
            rng = np.random.default_rng([self.seed, snap.version.version])
            new_images, new_labels = [], []
            for c in candidates:
                keep = np.sort(rng.permutation(len(c.images))[:FRAMES_PER_CANDIDATE])
                new_images.append(c.images[keep])
                new_labels.append(c.labels[keep].to(torch.uint8))
            f_images = np.concatenate(new_images)
            f_labels = torch.cat(new_labels)
            models = [self._from_state(c.state, config) for c in candidates]
            hist = snap.history
            # A[F_new, old], A[H, new], A[F_new, new]
            a_new_old = torch.stack(
                [self._acc(self.model(e, snap), f_images, f_labels) for e in old_ids], 1
            ) if old_ids else torch.zeros(len(f_images), 0)  # fmt: skip
            a_h_new = torch.stack(
                [self._acc(m, hist.images, hist.labels) for m in models], 1
            ) if len(hist) else torch.zeros(0, len(models))  # fmt: skip
            a_new_new = torch.stack([self._acc(m, f_images, f_labels) for m in models], 1)
            old_acc = hist.accuracy if len(hist) else torch.zeros(0, len(old_ids))
            acc_h = torch.cat([old_acc, a_h_new], 1)
            acc_f = torch.cat([a_new_old, a_new_new], 1)
            room = max(self.history_size - len(f_images), 0)
            keep_h = np.sort(rng.permutation(len(hist))[:room])
            if len(hist):
                images = np.concatenate([hist.images[keep_h], f_images])
                labels = torch.cat([hist.labels[keep_h], f_labels])
                accuracy = torch.cat([acc_h[keep_h], acc_f])
            else:
                images, labels, accuracy = f_images, f_labels, acc_f
            history = History(images, labels, accuracy)
            net = copy.deepcopy(snap.net)
            net.grow(len(candidates), torch.Generator().manual_seed(self.seed + len(old_ids)))
            frames = to_tensor(history.images)
            # The first fit trains the whole net; later admissions fine-tune the last layer.
            full = len(old_ids) < 2
            gating.fit(
                net, frames, history.accuracy, head_only=not full, steps=self.fit_steps,
                seed=self.seed,
            )  # fmt: skip
            experts = list(snap.version.experts)
            now = time.time()
            for c in candidates:
                blob = self.store.put_tensors(c.state)
                experts.append(Expert(c.id, blob, c.source_device, c.window, now))
            counters = dict(snap.version.counters)
            counters["admitted"] = counters.get("admitted", 0) + len(candidates)
            version = self.store.commit(
                replace(
                    snap.version,
                    version=snap.version.version + 1,
                    created=now,
                    config=config,
                    experts=tuple(experts),
                    gating=self.store.put_tensors(net.state_dict()),
                    history=self.store.put_tensors(history.to_tensors()),
                    counters=counters,
                )
            )
            self._snapshot = Snapshot(version, net.eval(), history)
            self.log.admit(c.id for c in candidates)
            for c, m in zip(candidates, models, strict=True):
                self._models[c.id] = m
            self._merge_log()  # the new experts' grace periods start at this count
            return version

    def prune(self) -> ZooVersion | None:
        """Remove experts picked fewer than eta times in the last q selections (past their
        grace period); None when none is due."""
        with self._write, self.store.lock():
            self.refresh()
            self._merge_log()  # every replica's picks decide
            gone = set(self.log.prunable(self.params.eta))
            if not gone:
                return None
            snap = self._snapshot
            keep = [i for i, e in enumerate(snap.ids) if e not in gone]
            net = copy.deepcopy(snap.net)
            net.keep(keep)
            hist = snap.history
            history = History(hist.images, hist.labels, hist.accuracy[:, keep]) if len(hist) \
                else hist  # fmt: skip
            counters = dict(snap.version.counters)
            counters["pruned"] = counters.get("pruned", 0) + len(gone)
            version = self.store.commit(
                replace(
                    snap.version,
                    version=snap.version.version + 1,
                    created=time.time(),
                    experts=tuple(e for e in snap.version.experts if e.id not in gone),
                    gating=self.store.put_tensors(net.state_dict()),
                    history=self.store.put_tensors(history.to_tensors()),
                    counters=counters,
                )
            )
            self._snapshot = Snapshot(version, net.eval(), history)
            self.log.remove(gone)
            for e in gone:
                self._models.pop(e, None)
            self._merge_log()
            return version

    def _from_state(self, state: dict[str, Any], config: dict[str, Any]) -> SegmentationModel:
        model = self.new_model(self.arch, config)
        buf = io.BytesIO()  # a copy: the candidate's tensors stay the trainer's
        torch.save(state, buf)
        buf.seek(0)
        model.load_state_dict(torch.load(buf, weights_only=True))
        return model.eval()

    def _acc(
        self, model: SegmentationModel, images: np.ndarray, labels: torch.Tensor
    ) -> torch.Tensor:
        return per_frame_miou(model, images, labels.long(), self._classes)


def _write(f: BinaryIO, data: bytes) -> None:
    f.write(data)
