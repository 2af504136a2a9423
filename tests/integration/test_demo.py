"""``edgeadapt demo`` end to end as a real process, on the small test models and a short run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.processes


def test_demo_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run(
        [
            sys.executable, "-m", "edgeadapt", "demo",
            "--profile", "tiny",
            "--devices", "1",
            "--duration", "25",
            "--fps", "15",
            "--out", str(out),
            "--workdir", str(tmp_path / "work"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 10_000
    (dev,) = report["devices"]
    required = {
        "id": str,
        "frames_inferred": int,
        "inference_fps": float,
        "model_version": int,
        "miou_teacher": float,
        "uplink_kbps": float,
        "downlink_kbps": float,
        "updates_applied": int,
        "updates_rejected": int,
    }
    for key, kind in required.items():
        assert isinstance(dev[key], kind), (key, dev[key])
    assert isinstance(report["baseline"]["miou_teacher"], float)
    assert dev["id"] == "cam-1"
    assert dev["frames_inferred"] >= 25 * 15 * 0.9
    assert dev["model_version"] >= 1
    assert dev["updates_applied"] == dev["model_version"]
    assert dev["updates_rejected"] == 0
    # Bytes are counted on the streams: the uplink carries H.264 batches, the downlink updates.
    assert dev["uplink_bytes"] > 1000
    assert dev["downlink_bytes"] > 1000
    assert report["targets"]["models_identical_to_trainer"] is True
    assert report["run"]["trainer_shutdown_s"] < 15
    assert "cam-1" in proc.stdout


def test_bench_stream_reports_lag_and_capacity(tmp_path: Path) -> None:
    out = tmp_path / "stream.json"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run(
        [
            sys.executable, "-m", "edgeadapt", "bench", "stream",
            "--profile", "tiny",
            "--devices", "2",
            "--duration", "25",
            "--out", str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    assert run["devices"] == 2
    assert run["errors"] == []
    # Every batch sent got its update back, and the lag is measured, not assumed.
    assert run["updates_per_device"] == run["batches_per_device"] > 0
    assert 0 < run["lag_median_s"] <= run["lag_p95_s"] <= run["lag_max_s"]
    assert run["train_phase_mean_s"] > 0
    assert report["capacity"] in (0, 2)
    assert report["capacity"] == (2 if run["keeps_up"] else 0)
