"""RECL's rules, gating network, zoo store and live zoo (``edgeadapt.recl``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from edgeadapt.models.zoo import SegmentationModel
from edgeadapt.recl import gating
from edgeadapt.recl.rules import AdmissionQueue, ReclParams, SelectionLog, safety_check, top_k
from edgeadapt.recl.store import Blob, ZooCorruptError, ZooStore, ZooVersion
from edgeadapt.recl.zoo import Candidate, Zoo

# ----------------------------------------------------------------- rules


def test_the_safety_checker_picks_the_best_and_keeps_the_current_model_on_a_tie() -> None:
    v = safety_check({"e1": 0.5, "cur": 0.7, "e2": 0.7}, current="cur", retrained=None, alpha=0.02)
    assert v.winner == "cur"
    v = safety_check({"e1": 0.8, "cur": 0.7}, current="cur", retrained=None, alpha=0.02)
    assert v.winner == "e1"
    assert not v.promising
    with pytest.raises(ValueError, match="at least one"):
        safety_check({}, current=None, retrained=None, alpha=0.02)


def test_an_expert_wins_only_by_the_switching_margin_over_the_devices_own_models() -> None:
    def pick(scores: dict[str, float], margin: float = 0.0) -> tuple[str, str | None]:
        """The winner, and the expert the margin held back."""
        verdict = safety_check(
            scores, current="cur", retrained="new", alpha=0.02, experts={"e1", "e2"}, margin=margin
        )
        return verdict.winner, verdict.held

    scores = {"cur": 0.60, "new": 0.62, "e1": 0.635, "e2": 0.63}
    assert pick(scores) == ("e1", None), "no margin: the paper's pick"
    # e1 leads the best of the device's own (new) by 1.5 points: the retrained model wins.
    assert pick(scores, 0.02) == ("new", "e1")
    scores["e1"] = 0.64
    assert pick(scores, 0.02) == ("e1", None)
    # Ties among the device's own still go to the model it runs.
    assert pick({"cur": 0.60, "new": 0.60, "e1": 0.61}, 0.02) == ("cur", "e1")
    # An own model that scores best holds nothing back.
    assert pick({"cur": 0.60, "new": 0.65, "e1": 0.64}, 0.02) == ("new", None)
    # Only experts: the margin has nothing to weigh against.
    assert pick({"e1": 0.5, "e2": 0.6}, 0.02) == ("e2", None)
    # Admission is judged against every candidate, experts included.
    verdict = safety_check(
        {"cur": 0.60, "new": 0.63, "e1": 0.62},
        current="cur", retrained="new", alpha=0.02, experts={"e1"}, margin=0.02,
    )  # fmt: skip
    assert (verdict.winner, verdict.promising) == ("new", False)
    with pytest.raises(ValueError, match="switching margin"):
        pick(scores, 1.0)


def test_a_retrained_model_is_promising_only_by_alpha_over_every_other() -> None:
    scores = {"e1": 0.60, "cur": 0.55, "new": 0.615}
    assert not safety_check(scores, current="cur", retrained="new", alpha=0.02).promising
    scores["new"] = 0.62
    verdict = safety_check(scores, current="cur", retrained="new", alpha=0.02)
    assert verdict.promising
    assert verdict.winner == "new"


def test_top_k_is_best_first_and_stable() -> None:
    assert top_k([0.1, 0.9, 0.5, 0.9], ["a", "b", "c", "d"], 3) == ["b", "d", "c"]
    assert top_k([0.3], ["a"], 10) == ["a"]
    with pytest.raises(ValueError, match="2 experts"):
        top_k([0.1], ["a", "b"], 1)


def test_the_admission_queue_is_admitted_whole_past_gamma() -> None:
    queue = AdmissionQueue(gamma=2)
    for c in ("a", "b", "b"):
        queue.offer(c)
    assert (queue.due, queue.waiting) == (False, ["a", "b"])  # the repeat counts once
    queue.offer("c")
    assert queue.due
    assert queue.drain() == ["a", "b", "c"]
    assert (queue.due, queue.waiting) == (False, [])


def test_pruning_counts_picks_in_the_last_q_after_a_grace_period() -> None:
    log = SelectionLog(q=10)
    log.admit(["old", "busy"])
    for i in range(10):
        log.record("busy" if i % 2 else "cur-model")  # a pick that is no expert counts for none
    log.admit(["new"])
    assert log.counts() == {"busy": 5}
    assert log.prunable(eta=4) == ["old"]  # "new" has had no full look-back yet
    for _ in range(10):
        log.record("busy")
    assert log.prunable(eta=4) == ["new", "old"]
    log.remove(["old"])
    assert "old" not in log.admitted_at
    again = SelectionLog.from_json(json.loads(json.dumps(log.to_json())), q=10)
    assert (again.total, again.counts(), again.admitted_at) == (20, log.counts(), log.admitted_at)


def test_parameters_are_checked() -> None:
    assert ReclParams().top_k == 10
    with pytest.raises(ValueError, match="alpha"):
        ReclParams(alpha=1.5)
    with pytest.raises(ValueError, match="invalid"):
        ReclParams(top_k=0)


# ----------------------------------------------------------------- gating network


def test_growing_the_head_keeps_every_old_output() -> None:
    torch.manual_seed(0)
    net = gating.GatingNet(0).eval()
    frames = torch.rand(4, 3, 40, 60)
    assert net.window_scores(frames) == []  # cold start: nothing to score
    net.grow(1)
    one = net(frames)
    assert one.shape == (4, 1)
    net.grow(2)
    net.grow(3)
    six = net(frames)
    assert six.shape == (4, 6)
    torch.testing.assert_close(six[:, :1], one)
    assert six.min() >= 0
    assert six.max() <= 1
    net.keep([0, 2, 5])
    torch.testing.assert_close(net(frames), six[:, [0, 2, 5]])


def test_window_scores_average_the_frames() -> None:
    torch.manual_seed(1)
    net = gating.GatingNet(3).eval()
    frames = (torch.rand(5, 3, 32, 32) * 255).to(torch.uint8)
    per_frame = net(frames)
    assert net.window_scores(frames) == pytest.approx(per_frame.mean(0).tolist(), abs=1e-6)


def test_a_head_only_fit_learns_which_expert_suits_which_frames() -> None:
    torch.manual_seed(2)
    net = gating.GatingNet(2)
    frames, accuracy = _two_scene_types(32)
    gating.fit(net, frames, accuracy, head_only=True, steps=150, lr=0.05)
    red, green = net.window_scores(frames[:16]), net.window_scores(frames[16:])
    assert red[0] > red[1]
    assert green[1] > green[0]


def _two_scene_types(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reddish frames that expert 0 suits, greenish ones that expert 1 suits."""
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(n, 3, 48, 48, generator=g) * 0.3
    frames[: n // 2, 0] += 0.7
    frames[n // 2 :, 1] += 0.7
    accuracy = torch.zeros(n, 2)
    accuracy[: n // 2, 0] = 0.9
    accuracy[: n // 2, 1] = 0.2
    accuracy[n // 2 :, 0] = 0.1
    accuracy[n // 2 :, 1] = 0.8
    return frames, accuracy


# ----------------------------------------------------------------- store


def _version(store: ZooStore, n: int, *blobs: bytes) -> ZooVersion:
    return ZooVersion(n, float(n), "arch", gating=store.put(b"g%d" % n) if not blobs else
                      store.put(blobs[0]))  # fmt: skip


def test_the_store_commits_versions_and_survives_a_crash_before_current(tmp_path: Path) -> None:
    store = ZooStore(tmp_path)
    assert store.load() is None
    first = store.commit(_version(store, 1))
    assert store.load() == first
    # A crash after the blobs and manifest of version 2 but before CURRENT moved.
    second = _version(store, 2)
    body = json.dumps(second.to_json())
    (tmp_path / "manifests" / "00000002.json").write_text(body)
    assert store.load() == first
    # The next commit takes the number after the newest manifest? No: after CURRENT.
    third = store.commit(_version(store, 2, b"third"))
    assert store.load() == third
    assert ZooStore(tmp_path).load() == third  # a restart reads the same version


def test_a_damaged_version_falls_back_to_the_last_whole_one(tmp_path: Path) -> None:
    store = ZooStore(tmp_path)
    first = store.commit(_version(store, 1, b"one"))
    second = store.commit(_version(store, 2, b"two"))
    assert second.gating is not None
    (tmp_path / "blobs" / second.gating.sha256).write_bytes(b"tww")
    assert store.load() == first
    assert first.gating is not None
    (tmp_path / "blobs" / first.gating.sha256).unlink()
    with pytest.raises(ZooCorruptError):
        store.load()
    with pytest.raises(ZooCorruptError, match="missing"):
        store.get(Blob("0" * 64, 1))


def test_collecting_keeps_the_blobs_of_kept_versions(tmp_path: Path) -> None:
    store = ZooStore(tmp_path)
    versions = [store.commit(_version(store, i, b"v%d" % i)) for i in range(1, 6)]
    orphan = tmp_path / "blobs" / ("f" * 64)
    orphan.write_bytes(b"x")
    import os

    os.utime(orphan, (0, 0))
    for v in versions[:2]:
        assert v.gating is not None
        os.utime(tmp_path / "blobs" / v.gating.sha256, (0, 0))
    store.collect(keep=3)
    assert sorted(p.name for p in (tmp_path / "manifests").iterdir()) == [
        "00000003.json",
        "00000004.json",
        "00000005.json",
    ]
    assert not orphan.exists()
    for v in versions[2:]:
        assert v.gating is not None
        assert (tmp_path / "blobs" / v.gating.sha256).exists()
    assert versions[0].gating is not None
    assert not (tmp_path / "blobs" / versions[0].gating.sha256).exists()


# ----------------------------------------------------------------- the live zoo


CONFIG = {"num_classes": 2}


class _Constant(nn.Module):
    """A 'segmentation model' that labels every pixel with one class (its bias decides)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x)}


def _model(arch: str = "constant", config: dict[str, Any] | None = None) -> SegmentationModel:
    return SegmentationModel(_Constant(), arch, dict(config or {}))


def _expert(cls: int) -> dict[str, torch.Tensor]:
    net = _Constant()
    with torch.no_grad():
        net.conv.weight.zero_()
        net.conv.bias = nn.Parameter(torch.tensor([1.0, -1.0] if cls == 0 else [-1.0, 1.0]))
    return {f"net.{k}": v.clone() for k, v in net.state_dict().items()}


def _window(kind: int, n: int = 12) -> tuple[np.ndarray, torch.Tensor]:
    rng = np.random.default_rng(kind)
    images = rng.integers(0, 60, (n, 24, 32, 3), dtype=np.uint8)
    images[..., kind] += 180  # red scenes (class 0 everywhere), green scenes (class 1)
    return images, torch.full((n, 24, 32), kind, dtype=torch.uint8)


def _zoo(path: Path, params: ReclParams, fit_steps: int = 200) -> Zoo:
    return Zoo(ZooStore(path), arch="constant", params=params, new_model=_model,
               history_size=64, fit_steps=fit_steps)  # fmt: skip


def test_a_zoo_starts_empty_admits_selects_prunes_and_reopens(tmp_path: Path) -> None:
    torch.manual_seed(3)
    params = ReclParams(top_k=1, eta=1, q=4)
    zoo = _zoo(tmp_path, params, fit_steps=60)
    red, green = _window(0), _window(1)
    assert zoo.select(red[0]) == []  # cold start
    zoo.admit([Candidate("red", _expert(0), CONFIG, "cam-a", 1, *red)])
    assert [e for e, _ in zoo.select(green[0])] == ["red"]  # one expert: it is the choice
    with pytest.raises(ValueError, match="built as"):
        zoo.admit([Candidate("x", _expert(1), {"num_classes": 3}, "cam-b", 2, *green)])
    v2 = zoo.admit([Candidate("green", _expert(1), CONFIG, "cam-b", 2, *green)])
    assert v2.expert_ids() == ["red", "green"]
    assert v2.counters["admitted"] == 2
    assert zoo.snapshot.history.accuracy.shape == (24, 2)
    assert zoo.select(red[0])[0][0] == "red"
    assert zoo.select(green[0])[0][0] == "green"
    # Both experts have had their look-back (q = 4) and "green" was never picked.
    for _ in range(4):
        zoo.record("red")
    v3 = zoo.prune()
    assert v3 is not None
    assert v3.expert_ids() == ["red"]
    assert zoo.prune() is None
    again = _zoo(tmp_path, params)
    assert again.snapshot.version == v3
    assert [e for e, _ in again.select(green[0])] == ["red"]
    with pytest.raises(ValueError, match="constant"):
        Zoo(ZooStore(tmp_path), arch="other", new_model=_model, params=params)


def test_a_selection_during_an_admission_sees_one_whole_version(tmp_path: Path) -> None:
    zoo = _zoo(tmp_path, ReclParams(), fit_steps=5)
    zoo.admit([Candidate("red", _expert(0), CONFIG, "cam-a", 1, *_window(0))])
    before = zoo.snapshot
    zoo.admit([Candidate("green", _expert(1), CONFIG, "cam-b", 2, *_window(1))])
    # The old snapshot is untouched by the admission: its net scores one expert still.
    assert before.ids == ["red"]
    assert len(before.net.window_scores(torch.rand(2, 3, 24, 32))) == 1
    assert zoo.snapshot.ids == ["red", "green"]


def test_replicas_on_one_volume_build_on_each_others_versions_and_share_picks(
    tmp_path: Path,
) -> None:
    params = ReclParams(top_k=2, eta=2, q=4)
    a, b = _zoo(tmp_path, params, fit_steps=5), _zoo(tmp_path, params, fit_steps=5)
    red, green = _window(0), _window(1)
    v1 = a.admit([Candidate("red", _expert(0), CONFIG, "cam-a", 1, *red)])
    # b admits without having looked: it builds on a's version, not on the empty one it loaded.
    v2 = b.admit([Candidate("green", _expert(1), CONFIG, "cam-b", 2, *green)])
    assert v2.version == v1.version + 1
    assert v2.expert_ids() == ["red", "green"]
    assert a.snapshot.ids == ["red"]
    assert a.refresh(), "a sees the newer version"
    assert a.snapshot.ids == ["red", "green"]
    assert not a.refresh()
    # Picks recorded on either replica count for pruning: red is picked twice on each, green
    # never; the q = 4 look-back has passed once both replicas' picks are merged.
    for _ in range(2):
        a.record("red")
        b.record("red")
    a.save_log()
    pruned = b.prune()
    assert pruned is not None
    assert pruned.expert_ids() == ["red"], "four picks of red in the last q: green goes"
    assert b.log.total == 4
    assert a.refresh()
    assert a.snapshot.ids == ["red"]
    assert "green" not in a.log.admitted_at
