"""The RECL benchmark's figures: recovery after a cut and the issue's targets."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from edgeadapt.bench.recl import (
    ReclBenchConfig,
    Resident,
    Window,
    ranking_hits,
    recovery_seconds,
    targets,
)
from edgeadapt.models.zoo import SegmentationModel
from edgeadapt.trainer.recl import SELECT_FRAMES
from edgeadapt.trainer.recl import Window as TrainerWindow


def variant(miou: float, recovery: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "miou_mean": miou,
        "recovery_recurring_s": {"median": recovery},
        "downlink_kbps": [100.0, 120.0],
        **extra,
    }


def test_recovery_ends_where_the_10s_mean_comes_within_2_points_of_the_segments_best() -> None:
    # Scored every 2 s: 0.5 until 20 s into the segment, then 0.8.
    scores = [(float(t), 0.5 if t < 20 else 0.8) for t in range(0, 60, 2)]
    cuts = [(0.0, 60.0, True), (58.0, 70.0, False)]  # the second has one scored frame: skipped
    assert recovery_seconds(scores, cuts) == [(20.0, True)]


def test_selection_accuracy_comes_from_the_unpruned_zoo_when_the_pruned_one_stays_small() -> None:
    variants = {
        "ams": variant(60.0, 9.0),
        "recl": variant(62.5, 2.0, zoo_size={"final": 4}),
        "recl_unpruned": variant(62.8, 2.5, zoo_size={"final": 18}, selection_accuracy=0.85),
    }
    out = targets(variants, budget=250.0)
    assert out["recl_recovery_le_third_of_ams"] is True
    assert out["recl_miou_ge_ams_plus_2"] is True
    assert out["topk_holds_oracle_ge_80pct"] is True
    assert out["topk_measured_on"] == "recl_unpruned"
    assert out["pruned_zoo_le_third"] is True, "4 x 3 <= 18"
    assert out["pruning_costs_le_half_point"] is True
    assert out["downlink_within_budget"] is True

    variants["recl"]["selection_accuracy"] = 0.6  # the pruned zoo's own figure comes first
    variants["recl"]["zoo_size"] = {"final": 7}
    variants["recl_unpruned"]["miou_mean"] = 63.1
    variants["ams"]["downlink_kbps"] = [260.0]
    out = targets(variants, budget=250.0)
    assert out["topk_holds_oracle_ge_80pct"] is False
    assert out["topk_measured_on"] == "recl"
    assert out["pruned_zoo_le_third"] is False, "7 x 3 > 18"
    assert out["pruning_costs_le_half_point"] is False, "63.1 - 62.5 > 0.5"
    assert out["downlink_within_budget"] is False


def test_the_gating_rank_of_the_best_expert_is_checked_for_each_k_below_the_zoos_size() -> None:
    scores = {"a": 0.5, "b": 0.7, "c": 0.9, "d": 0.9}
    # c and d tie for best; the gating network put them third and fourth.
    assert ranking_hits(["a", "b", "c", "d"], scores, (1, 3, 5, 10)) == {1: False, 3: True}
    assert ranking_hits(["d", "a", "b", "c"], scores, (3, 1)) == {1: True, 3: True}, "a tie hits"
    assert ranking_hits(["b", "a", "c", "d"], scores, (1, 2)) == {1: False, 2: False}
    assert ranking_hits(["a", "b"], {"a": 0.1, "b": 0.2}, (10,)) == {}, "K >= the zoo: no check"


@pytest.mark.parametrize("batches", [[30], [2] * 15, [7, 7, 7, 9]])
def test_the_benchmark_holds_out_the_frames_the_trainer_holds_out(batches: list[int]) -> None:
    n = sum(batches)
    images = np.zeros((n, 4, 4, 3), dtype=np.uint8)
    labels = torch.zeros((n, 4, 4), dtype=torch.long)
    trainer = TrainerWindow()
    trained: list[int] = []
    at = 0
    for size in batches:  # the agent's batches, however the window's frames arrive
        part = slice(at, at + size)
        trained += [
            at + i for i in trainer.add(images[part], labels[part], list(range(at, at + size)))
        ]
        at += size
    bench = Window(images, labels, [float(t) for t in range(n)], 0)
    assert bench.held == trainer.holdout
    assert bench.train == trained
    assert not set(bench.held) & set(bench.train)


def test_the_benchmark_scores_candidates_on_the_frames_the_trainer_scores_them_on() -> None:
    n = 30
    window = Window(
        np.zeros((n, 4, 4, 3), dtype=np.uint8),
        torch.zeros((n, 4, 4), dtype=torch.long),
        [float(t) for t in range(n)],
        0,
    )
    assert window.selected() == list(range(n)), "every frame: none trained on any"
    assert len(window.held) == 6
    assert sorted(window.held + window.train) == list(range(n))


def test_a_long_window_is_scored_on_the_evenly_spaced_frames_the_trainer_sends_to_select() -> None:
    n = 48
    images = np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(4, 2)
    images = images.repeat(3, 3)
    labels = torch.zeros((n, 4, 4), dtype=torch.long)
    trainer = TrainerWindow()
    trainer.add(images, labels, [float(t) for t in range(n)])
    sent = trainer.recent(SELECT_FRAMES)[0]
    bench = Window(images, labels, [float(t) for t in range(n)], 0)
    picks = bench.selected()
    assert len(picks) == SELECT_FRAMES < n
    assert [int(images[i, 0, 0, 0]) for i in picks] == [int(x[0, 0, 0]) for x in sent]
    assert picks[0] == 0
    assert picks[-1] == n - 1
    # After a scene change at frame 20, both look only at the frames since it.
    trainer.since = 20
    picks = bench.selected(since=20)
    assert picks == list(range(20, n))
    assert [int(images[i, 0, 0, 0]) for i in picks] == [
        int(x[0, 0, 0]) for x in trainer.recent(SELECT_FRAMES)[0]
    ]


def test_a_window_too_short_to_hold_a_frame_out_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 5 frames"):
        ReclBenchConfig(window_s=4.0, sample_fps=1.0)


@pytest.mark.parametrize("horizon", [20.0, 600.0])
def test_a_horizon_shorter_than_a_window_or_longer_than_the_video_is_refused(
    horizon: float,
) -> None:
    with pytest.raises(ValueError, match="--horizon-seconds must be between the window"):
        ReclBenchConfig(duration=480.0, horizon_s=horizon)
    assert ReclBenchConfig(duration=480.0, horizon_s=30.0).horizon_s == 30.0


def test_a_scene_drop_outside_0_to_100_points_is_refused() -> None:
    with pytest.raises(ValueError, match="--scene-drop-points must be between 0 and 100, got 150"):
        ReclBenchConfig(scene_drop=1.5)
    assert ReclBenchConfig(scene_drop=0.0).scene_drop == 0.0, "0: only at window ends"


@pytest.mark.parametrize("margin", [-0.01, 1.0])
def test_a_switching_margin_outside_0_to_100_points_is_refused(margin: float) -> None:
    with pytest.raises(ValueError, match="--switch-margin-points must be at least 0 and below 100"):
        ReclBenchConfig(switch_margin=margin)
    assert ReclBenchConfig(switch_margin=0.0).switch_margin == 0.0, "0: the paper's checker"


@pytest.mark.parametrize("lr", [0.0, -1e-3])
def test_a_learning_rate_that_is_not_positive_is_refused(lr: float) -> None:
    with pytest.raises(ValueError, match="--lr must be positive"):
        ReclBenchConfig(lr=lr)
    assert ReclBenchConfig(lr=5e-4).lr == 5e-4


def test_a_downlink_budget_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="--downlink-kbps must be positive, got 0"):
        ReclBenchConfig(downlink_kbps=0.0)
    assert ReclBenchConfig(downlink_kbps=1000.0).downlink_kbps == 1000.0


def test_the_scoring_model_copies_a_vector_in_only_when_it_does_not_hold_it_unchanged() -> None:
    resident = Resident(SegmentationModel(nn.Linear(3, 2), "linear", {}), torch.device("cpu"))
    a = torch.arange(8, dtype=torch.float32)
    b = a.clone()

    def held() -> torch.Tensor:
        return nn.utils.parameters_to_vector(resident.model.parameters()).detach()

    assert resident.load(a) is resident.model
    assert resident.loads == 1
    assert resident.load(a) is resident.model
    assert resident.loads == 1, "the same vector, unchanged: no copy"
    assert torch.equal(held(), a)
    resident.load(b)
    assert resident.loads == 2, "another vector, equal or not, is copied in"
    b.mul_(2)  # changed in place: its version moves on
    resident.load(b)
    assert resident.loads == 3
    assert torch.equal(held(), torch.arange(8, dtype=torch.float32) * 2)
    resident.load(a)
    assert resident.loads == 4
    assert torch.equal(held(), a)
