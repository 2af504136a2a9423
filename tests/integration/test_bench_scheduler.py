"""One small end-to-end run of the scheduler benchmark, as a real process through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ["round-robin", "micro-window", "urgency"]


def test_a_negative_slice_is_refused() -> None:
    from edgeadapt.bench.scheduler import SchedulerBenchConfig

    assert SchedulerBenchConfig().slice_steps == 0  # 0: the K steps of --iterations
    refused = r"--slice-steps must be 0 \(--iterations\) or more, got -1"
    with pytest.raises(ValueError, match=refused):
        SchedulerBenchConfig(slice_steps=-1)


@pytest.mark.slow
def test_bench_scheduler_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    args = ["--profile", "tiny", "--devices", "2,3", "--capacity", "1", "--iterations", "4"]
    args += ["--duration", "30", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "edgeadapt", "bench", "scheduler", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["runs"]) == ["2", "3"]
    budget = report["budget_s_per_round"]
    for n, runs in report["runs"].items():
        assert list(runs) == POLICIES
        for policy, r in runs.items():
            assert 0 < r["miou_mean"] <= 100, (n, policy)
            assert r["miou_p10"] <= r["miou_mean"]
            # Over-subscribed (capacity 1): no round spends much beyond the shared budget.
            assert r["compute_s_per_round"] <= 1.5 * budget + 0.5, (n, policy)
            assert r["loss_vs_alone"] == pytest.approx(
                report["alone"]["miou_mean"][n] - r["miou_mean"], abs=0.02
            )
    assert set(report["devices_per_trainer"]) == set(POLICIES)
    # A slice is, by default, the time of the K steps round-robin gives a device in a round;
    # compute is counted in steps at the rate timed before the runs.
    assert report["slice_steps"] == 4
    assert report["clock"] == "steps"
    assert report["micro_window_s"] == pytest.approx(4 * report["seconds_per_step"], abs=2e-4)
    rt = report["real_time"]  # an interval's labelling and K steps per device, on this machine
    assert rt["seconds_per_device_round"] == pytest.approx(
        4 * rt["seconds_per_step"] + 10 * rt["label_s_per_frame"], rel=0.01
    )
    assert rt["devices_at_full_k"] == pytest.approx(10.0 / rt["seconds_per_device_round"], abs=1)
    for policy, n in report["devices_per_trainer"].items():
        assert (rt["devices_at_le_1_point_loss"][policy] == 0) == (n == 0), policy
    if report["torch_device"] == "cpu":
        assert report["gpu_telemetry"] == {"available": False, "reason": "training on CPU"}
    f = report["filter"]
    assert f["upload_fraction"] == 0.7
    # 10 samples per interval, 7 uploaded: the filter's uplink is measured from its own encoding.
    assert 0.1 < f["uplink_cut"] < 0.6
    assert set(report["targets"]) >= {"filter_cuts_uplink_ge_25pct", "urgency_ge_round_robin"}
    for role in ("teacher", "student"):  # the models the figures were measured on
        assert report["models"][role]["checkpoint"].startswith(f"{role}-tiny-")
        assert len(report["models"][role]["weights_sha256"]) == 16
    png = out.with_suffix(".png")
    assert png.read_bytes().startswith(b"\x89PNG"), "the figures are drawn beside the JSON"
