"""One small end-to-end run of the RECL benchmark, as a real process through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
            "--downlink-kbps",
            "200",
            "--switch-margin-points",
            "3",
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
    assert report["config"]["downlink_kbps"] == 200
    assert report["config"]["switch_margin"] == 0.03
    for name, v in report["variants"].items():
        assert 0 < v["miou_mean"] <= 100, name
        assert v["miou_p10"] <= v["miou_mean"]
        assert len(v["downlink_kbps"]) == len(v["uplink_kbps"]) == 2
        # Every model reached its device over the paced link.
        assert max(v["downlink_kbps"]) <= report["config"]["downlink_kbps"]
        seconds = "gpu_seconds" if report["torch_device"].startswith("cuda") else "cpu_seconds"
        assert set(v[seconds]) == {"selection", "retraining", "zoo"}
    assert report["variants"]["ams"]["switches"] == 0
    # ams+recl streams its retraining jobs' progress within windows; recl waits for their ends.
    assert report["variants"]["ams+recl"]["streamed_updates"] > 0
    assert report["variants"]["recl"]["streamed_updates"] == 0
    assert "zoo_size" in report["variants"]["recl"]
    assert report["targets"]["downlink_within_budget"] is True
    # The report names the models its figures were measured on: the checkpoints and their weights.
    from edgeadapt.models.cache import ensure_checkpoint
    from edgeadapt.models.zoo import load_checkpoint_model, weights_digest

    for role in ("teacher", "student"):
        path = ensure_checkpoint(role, "tiny")
        assert report["models"][role] == {
            "checkpoint": path.name,
            "weights_sha256": weights_digest(load_checkpoint_model(path)),
        }
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_models_train_on_the_gpu_and_the_figures_agree_with_the_cpu(
    tmp_path: Path,
) -> None:
    """The benchmark's CUDA path: the teacher, the students, AMS's sessions and the retraining
    jobs run on the GPU while what travels stays on the CPU; the same run on the CPU differs
    only by float rounding, so its figures agree closely."""
    import copy

    from edgeadapt.bench.recl import Harness, ReclBenchConfig, summarize
    from edgeadapt.models.cache import ensure_checkpoint, training_args
    from edgeadapt.models.train import make_model
    from edgeadapt.models.zoo import load_weights

    teacher, student = (
        load_weights(make_model(training_args(role, "bench")), ensure_checkpoint(role, "bench"))
        for role in ("teacher", "student")
    )
    cfg = ReclBenchConfig(
        devices=2, duration=120, iterations=9, scene_s=(30, 60), horizon_s=60, seed=3
    )
    figures = {}
    for name in ("cpu", "cuda"):
        device = torch.device(name)
        (tmp_path / name).mkdir()
        harness = Harness(cfg, teacher, copy.deepcopy(student), tmp_path / name, device)
        assert next(harness.work.parameters()).device.type == name
        assert next(harness.teacher.model.parameters()).device.type == name
        figures[name] = {v: summarize(harness, harness.run(v)) for v in ("recl", "ams+recl")}
    for variant, on_gpu in figures["cuda"].items():
        on_cpu = figures["cpu"][variant]
        assert set(on_gpu["gpu_seconds"]) == {"selection", "retraining", "zoo"}
        assert on_gpu["gpu_seconds"]["retraining"] > 0
        assert abs(on_gpu["miou_mean"] - on_cpu["miou_mean"]) <= 1.5, (variant, on_gpu, on_cpu)
        assert max(on_gpu["downlink_kbps"]) <= cfg.downlink_kbps
