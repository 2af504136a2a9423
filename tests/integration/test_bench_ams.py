"""One small end-to-end run of the AMS benchmark, as a real process through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeadapt.bench.ams import VARIANTS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_ams_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "ams.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeadapt",
            "bench",
            "ams",
            "--profile",
            "tiny",
            "--video",
            "synthetic:seed=2,duration=40",
            "--eval-stride",
            "2",
            "--jit-thresholds",
            "0.3,0.9",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert set(report["models"]) == {"teacher", "student"}
    assert report["models"]["student"]["checkpoint"].startswith("student-tiny-")

    assert report["video"] == {
        "spec": "synthetic:seed=2,duration=40,size=128x64,fps=30",
        "seconds": 40.0,
        "fps": 30.0,
    }
    assert set(report["variants"]) == set(VARIANTS)
    for name, v in report["variants"].items():
        assert set(v) == {
            "miou_teacher",
            "miou_truth",
            "uplink_kbps",
            "downlink_kbps",
            "updates",
        }, name
        assert 0.0 < v["miou_teacher"] <= 100.0
        assert 0.0 < v["miou_truth"] <= 100.0
    v = report["variants"]
    assert v["no_customization"]["uplink_kbps"] == 0
    assert v["no_customization"]["updates"] == 0
    assert v["one_time"]["updates"] == 1
    # 40 s at T_update 10 s (ATR may stretch one): an update per round, applied on the edge.
    assert 3 <= v["ams"]["updates"] <= 4
    assert v["ams_random"]["updates"] == v["ams"]["updates"]
    # Sparse updates cost a fraction of full-model ones; both carry real uplink bytes.
    assert 0 < v["ams"]["downlink_kbps"] < v["ams_full_model"]["downlink_kbps"] / 5
    assert v["ams"]["uplink_kbps"] == v["ams_full_model"]["uplink_kbps"] > 0
    assert v["just_in_time"]["updates"] >= 1
    assert "jit_downlink_ratio" in report["targets"]
    # One JIT run per threshold; the reported one is the sweep's closest to AMS in accuracy.
    sweep = report["jit_sweep"]
    assert [s["threshold"] for s in sweep] == [0.3, 0.9]
    gaps = [abs(s["miou_teacher"] - v["ams"]["miou_teacher"]) for s in sweep]
    chosen = sweep[gaps.index(min(gaps))]
    assert v["just_in_time"]["downlink_kbps"] == chosen["downlink_kbps"]
