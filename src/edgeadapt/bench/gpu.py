"""NVML's view of the GPU while a benchmark runs (``gpu_telemetry`` in its JSON)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


class GpuRecorder:
    """Samples NVML once a second while the benchmark runs (on a CUDA device; said once and
    skipped elsewhere) and summarises what it saw."""

    def __init__(self, device: torch.device, every: float = 1.0) -> None:
        from edgeadapt.trainer.gpu import GpuTelemetry

        self.telemetry = GpuTelemetry.open(device)
        self.every = every
        self.views: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nvml", daemon=True)

    def __enter__(self) -> GpuRecorder:
        if self.telemetry.backend is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            view = self.telemetry.poll()
            if view is not None:
                self.views.append(view)

    def summary(self) -> dict[str, Any]:
        if self.telemetry.backend is None:
            return {"available": False, "reason": self.telemetry.reason}
        v = self.views

        def stat(values: list[float | None], fn: Any, scale: float = 1.0) -> float | None:
            xs = [x for x in values if x is not None]
            return round(float(fn(xs)) * scale, 2) if xs else None

        return {
            "available": True,
            "name": v[0].name if v else None,
            "samples": len(v),
            "errors": self.telemetry.errors,
            "utilization_pct": {"mean": stat([x.utilization for x in v], np.mean, 100),
                                "max": stat([x.utilization for x in v], np.max, 100)},
            "own_utilization_pct_mean": stat([x.own_utilization for x in v], np.mean, 100),
            "memory_used_gib_max": stat([x.memory_used_bytes for x in v], np.max, 2**-30),
            "own_memory_gib_max": stat([x.own_memory_bytes for x in v], np.max, 2**-30),
            "memory_total_gib": stat([x.memory_total_bytes for x in v], np.max, 2**-30),
            "power_w": {"mean": stat([x.power_watts for x in v], np.mean),
                        "max": stat([x.power_watts for x in v], np.max)},
            "temperature_c_max": stat([x.temperature_c for x in v], np.max),
        }  # fmt: skip


def recorded(device: torch.device, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``'s report with NVML's view of the GPU while it ran (``gpu_telemetry``)."""
    with GpuRecorder(device) as gpu:
        report = run()
    report["gpu_telemetry"] = gpu.summary()
    return report
