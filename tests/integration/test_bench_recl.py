"""One small end-to-end run of the RECL benchmark, as a real process through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_recl_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "recl.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    variants = ["ams", "recl", "ams+recl"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeadapt",
            "bench",
            "recl",
            "--profile",
            "tiny",
            "--devices",
            "2",
            "--duration",
            "90",
            "--iterations",
            "9",
            "--scene-seconds",
            "30-60",
            "--horizon-seconds",
            "60",
            "--variants",
            ",".join(variants),
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["variants"]) == variants
    assert report["config"]["iterations"] == 9
    assert report["config"]["scene_s"] == [30, 60]
    assert report["config"]["horizon_s"] == 60
    for name, v in report["variants"].items():
        assert 0 < v["miou_mean"] <= 100, name
        assert v["miou_p10"] <= v["miou_mean"]
        assert len(v["downlink_kbps"]) == len(v["uplink_kbps"]) == 2
        # Every model reached its device over the paced link.
        assert max(v["downlink_kbps"]) <= report["config"]["downlink_kbps"]
        assert set(v["cpu_seconds"]) == {"selection", "retraining", "zoo"}
    assert report["variants"]["ams"]["switches"] == 0
    assert "zoo_size" in report["variants"]["recl"]
    assert report["targets"]["downlink_within_budget"] is True
    png = out.with_suffix(".png")
    assert png.read_bytes().startswith(b"\x89PNG"), "the figures are drawn beside the JSON"


def test_bench_recl_refuses_iterations_that_are_not_a_multiple_of_3(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "edgeadapt", "bench", "recl", "--iterations", "10",
         "--out", str(tmp_path / "recl.json")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "--iterations must be a positive multiple of 3, got 10" in proc.stderr
    assert not (tmp_path / "recl.json").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [("90", "--scene-seconds takes LO-HI seconds, got '90'"),
     ("120-60", "--scene-seconds needs 1 <= LO <= HI, got 120-60")],
)  # fmt: skip
def test_bench_recl_refuses_bad_scene_seconds(tmp_path: Path, value: str, message: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "edgeadapt", "bench", "recl", "--scene-seconds", value,
         "--out", str(tmp_path / "recl.json")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (tmp_path / "recl.json").exists()
