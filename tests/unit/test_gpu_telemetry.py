"""GPU telemetry: the NVML adapter against a fake backend (and the real one where a GPU is)."""

from __future__ import annotations

import logging
import time

import pytest
import torch
from prometheus_client import generate_latest

from edgeadapt.trainer.gpu import (
    MIN_SHARE,
    FakeBackend,
    GpuSample,
    GpuTelemetry,
    ProcessSample,
)
from edgeadapt.trainer.metrics import TrainerMetrics

GIB = 1 << 30
ME = 4242


def sample(
    others: float = 0.0, own: float = 30.0, used: int = 10 * GIB, per_process: bool = True
) -> GpuSample:
    return GpuSample(
        name="NVIDIA H100",
        utilization_percent=min(100.0, own + others),
        memory_used_bytes=used,
        memory_total_bytes=80 * GIB,
        power_watts=312.5,
        temperature_c=61.0,
        processes=(ProcessSample(ME, own, 6 * GIB), ProcessSample(7, others, 2 * GIB)),
        per_process=per_process,
    )


def telemetry(*samples: GpuSample, headroom: int = 4 * GIB) -> tuple[GpuTelemetry, TrainerMetrics]:
    metrics = TrainerMetrics()
    return GpuTelemetry(FakeBackend(list(samples)), metrics, headroom, pid=ME), metrics


def test_other_processes_load_shrinks_the_share_and_is_exported() -> None:
    t, metrics = telemetry(sample(others=0.0), sample(others=60.0), sample(others=100.0))
    view = t.poll()
    assert view is not None
    assert t.share == 1.0
    assert view.own_utilization == pytest.approx(0.3)
    assert view.own_memory_bytes == 6 * GIB
    t.poll()
    assert t.share == pytest.approx(0.4)
    t.poll()
    assert t.share == MIN_SHARE, "a trainer always plans some compute"
    text = generate_latest(metrics.registry).decode()
    assert "edgeadapt_trainer_gpu_share_ratio 0.1" in text
    assert 'edgeadapt_trainer_gpu_process_utilization_ratio{scope="others"} 1.0' in text
    assert "edgeadapt_trainer_gpu_power_watts 312.5" in text
    assert metrics.gpu_memory_total._value.get() == 80 * GIB


def test_memory_below_the_headroom_is_reported() -> None:
    t, metrics = telemetry(sample(used=70 * GIB), sample(used=77 * GIB))
    t.poll()
    assert not t.memory_low
    t.poll()
    assert t.view()["memory_low"]
    assert t.view()["memory_free_bytes"] == 3 * GIB
    assert "edgeadapt_trainer_gpu_memory_low 1.0" in generate_latest(metrics.registry).decode()


def test_without_per_process_samples_the_share_stays_whole() -> None:
    t, _ = telemetry(sample(others=90.0, per_process=False))
    view = t.poll()
    assert view is not None
    assert view.others_utilization is None
    assert t.share == 1.0


def test_a_failing_backend_is_counted_and_the_last_figures_stay() -> None:
    class Broken:
        def sample(self, since_us: int) -> GpuSample:
            raise RuntimeError("GPU is lost")

    t, _ = telemetry(sample(others=50.0))
    t.poll()
    t.backend = Broken()
    assert t.poll() is None
    assert t.errors == 1
    assert t.share == pytest.approx(0.5)
    assert t.view()["available"]


def test_on_cpu_there_is_no_telemetry_and_it_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        t = GpuTelemetry.open(torch.device("cpu"))
    assert t.poll() is None
    assert t.view() == {"available": False, "reason": "training on CPU"}
    assert t.share == 1.0
    assert not t.memory_low


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_real_nvml_backend_sees_this_process() -> None:
    x = torch.randn(4096, 4096, device="cuda")
    for _ in range(50):
        x = x @ x / 4096
    torch.cuda.synchronize()
    t = GpuTelemetry.open(torch.device("cuda"), TrainerMetrics())
    assert t.backend is not None, t.reason
    view = t.poll()
    assert view is not None
    assert view.memory_total_bytes > view.memory_used_bytes > 0
    assert 0.0 <= view.utilization <= 1.0
    assert view.own_memory_bytes is None or view.own_memory_bytes > 0
    assert 0.0 < t.share <= 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_step_timer_on_cuda_counts_the_gpu_s_work_not_the_launch() -> None:
    from edgeadapt.trainer.jobs import StepTimer

    x = torch.randn(8192, 8192, device="cuda")
    torch.cuda.synchronize()
    timer = StepTimer(torch.device("cuda"))
    t0 = time.perf_counter()
    timer.start()
    for _ in range(20):
        x = x @ x / 8192
    launched = time.perf_counter() - t0  # the launches return before the work is done
    seconds = timer.stop()
    wall = time.perf_counter() - t0
    assert launched < seconds <= wall + 1e-3
