"""GPU telemetry through NVML: what the trainer's GPU is doing, and how much of it is ours.

One adapter (:class:`GpuTelemetry`) over a backend: :class:`NvmlBackend` reads the driver through
``nvidia-ml-py`` (device utilisation, memory, per-process SM utilisation and memory, power,
temperature); :class:`FakeBackend` plays back samples for tests. Where there is no NVIDIA driver
(or no CUDA device) the trainer says so once and runs without telemetry.

Two figures steer the trainer:

- ``share``: the fraction of the GPU this trainer may plan to use, ``1 - others / 100`` where
  ``others`` is the SM utilisation of every other process on the GPU (NVML's per-process samples
  since the last poll), never below ``MIN_SHARE``. The scheduler scales each round's budget by it,
  so another tenant's load shortens our rounds instead of stretching them.
- ``memory_low``: free GPU memory below the headroom threshold. The trainer reports it in
  ``/status`` and the operator binds no new devices to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

MIN_SHARE = 0.1  # a trainer always plans some compute: it cannot measure progress without it


@dataclass(frozen=True)
class ProcessSample:
    pid: int
    sm_percent: float  # SM utilisation over the sampling period, 0-100
    memory_bytes: int | None = None


@dataclass(frozen=True)
class GpuSample:
    name: str
    utilization_percent: float  # whole device, 0-100
    memory_used_bytes: int
    memory_total_bytes: int
    power_watts: float | None = None
    temperature_c: float | None = None
    processes: tuple[ProcessSample, ...] = ()
    per_process: bool = True  # False where the driver gives no per-process utilisation


class Backend(Protocol):
    def sample(self, since_us: int) -> GpuSample:
        """The device's state; per-process utilisation averaged since ``since_us`` (NVML's
        microsecond timestamps)."""
        ...


class NvmlBackend:
    """The real thing: one NVIDIA GPU through NVML (``pynvml`` from ``nvidia-ml-py``)."""

    def __init__(self, index: int = 0, uuid: str | None = None) -> None:
        import pynvml

        self.nvml = pynvml
        pynvml.nvmlInit()
        if uuid:
            self.handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
        else:
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(self.handle)
        self.name = name.decode() if isinstance(name, bytes) else str(name)

    def sample(self, since_us: int) -> GpuSample:
        nv, h = self.nvml, self.handle
        util = nv.nvmlDeviceGetUtilizationRates(h)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        power = temperature = None
        with contextlib.suppress(nv.NVMLError):
            power = nv.nvmlDeviceGetPowerUsage(h) / 1000.0  # milliwatts
        with contextlib.suppress(nv.NVMLError):
            temperature = float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
        memory: dict[int, int | None] = {}
        with contextlib.suppress(nv.NVMLError):
            for p in nv.nvmlDeviceGetComputeRunningProcesses(h):
                memory[int(p.pid)] = p.usedGpuMemory  # None where the driver hides it
        sm: dict[int, float] = {}
        per_process = True
        try:
            for s in nv.nvmlDeviceGetProcessUtilization(h, since_us):
                sm[int(s.pid)] = max(sm.get(int(s.pid), 0.0), float(s.smUtil))
        except nv.NVMLError_NotFound:
            pass  # no process ran a kernel since then
        except nv.NVMLError:
            per_process = False  # not supported here (MIG, vGPU, old driver)
        pids = sorted(set(memory) | set(sm))
        return GpuSample(
            name=self.name,
            utilization_percent=float(util.gpu),
            memory_used_bytes=int(mem.used),
            memory_total_bytes=int(mem.total),
            power_watts=power,
            temperature_c=temperature,
            processes=tuple(ProcessSample(p, sm.get(p, 0.0), memory.get(p)) for p in pids),
            per_process=per_process,
        )


@dataclass
class FakeBackend:
    """Plays back ``samples`` (the last one repeats); for tests and for machines without GPUs."""

    samples: list[GpuSample] = field(default_factory=list)
    calls: int = 0

    def sample(self, since_us: int) -> GpuSample:
        self.calls += 1
        return self.samples[min(self.calls - 1, len(self.samples) - 1)]


@dataclass(frozen=True)
class GpuView:
    """One poll's figures, as ``/status`` shows them."""

    name: str
    utilization: float  # 0-1, whole device
    memory_used_bytes: int
    memory_total_bytes: int
    memory_free_bytes: int
    memory_low: bool
    own_utilization: float | None  # 0-1, this process's SM utilisation
    others_utilization: float | None  # 0-1, every other process's
    own_memory_bytes: int | None
    power_watts: float | None
    temperature_c: float | None
    share: float
    time: float


class GpuTelemetry:
    """Polls a backend, exports gauges, and keeps the share and memory headroom the trainer uses."""

    def __init__(
        self,
        backend: Backend | None,
        metrics: Any | None = None,
        headroom_bytes: int = 1 << 30,
        pid: int | None = None,
        reason: str = "",
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.headroom_bytes = headroom_bytes
        self.pid = os.getpid() if pid is None else pid
        self.reason = reason  # why there is no backend
        self.last: GpuView | None = None
        self.errors = 0
        self._since_us = int(time.time() * 1e6)

    @classmethod
    def open(
        cls, device: Any, metrics: Any | None = None, headroom_bytes: int = 1 << 30
    ) -> GpuTelemetry:
        """Telemetry for a torch device: NVML for a CUDA device, none otherwise (said once)."""
        if getattr(device, "type", "cpu") != "cuda":
            return cls(None, metrics, headroom_bytes, reason="training on CPU")
        try:
            import torch

            index = device.index if device.index is not None else torch.cuda.current_device()
            uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
            backend = NvmlBackend(index, f"GPU-{uuid}" if uuid is not None else None)
        except Exception as exc:  # no driver, no library, no permission
            log.warning("no GPU telemetry: NVML is not available (%s)", exc)
            return cls(None, metrics, headroom_bytes, reason=f"NVML unavailable: {exc}")
        log.info("GPU telemetry through NVML on %s", backend.name)
        return cls(backend, metrics, headroom_bytes)

    @property
    def share(self) -> float:
        return self.last.share if self.last is not None else 1.0

    @property
    def memory_low(self) -> bool:
        return self.last is not None and self.last.memory_low

    def poll(self) -> GpuView | None:
        """Sample the GPU; None without a backend, or when the sample fails (counted)."""
        if self.backend is None:
            return None
        now_us = int(time.time() * 1e6)
        try:
            s = self.backend.sample(self._since_us)
        except Exception as exc:
            self.errors += 1
            if self.errors == 1 or self.errors % 100 == 0:
                log.warning("cannot read GPU telemetry (%d failures): %s", self.errors, exc)
            return None
        self._since_us = now_us
        own = [p for p in s.processes if p.pid == self.pid]
        others = [p for p in s.processes if p.pid != self.pid]
        own_util = others_util = None
        if s.per_process:
            own_util = min(1.0, sum(p.sm_percent for p in own) / 100)
            others_util = min(1.0, sum(p.sm_percent for p in others) / 100)
        own_memory = None
        if own and all(p.memory_bytes is not None for p in own):
            own_memory = sum(p.memory_bytes or 0 for p in own)
        free = max(0, s.memory_total_bytes - s.memory_used_bytes)
        view = GpuView(
            name=s.name,
            utilization=min(1.0, s.utilization_percent / 100),
            memory_used_bytes=s.memory_used_bytes,
            memory_total_bytes=s.memory_total_bytes,
            memory_free_bytes=free,
            memory_low=free < self.headroom_bytes,
            own_utilization=own_util,
            others_utilization=others_util,
            own_memory_bytes=own_memory,
            power_watts=s.power_watts,
            temperature_c=s.temperature_c,
            share=max(MIN_SHARE, 1.0 - (others_util or 0.0)),
            time=time.time(),
        )
        self.last = view
        self._export(view)
        return view

    def _export(self, v: GpuView) -> None:
        m = self.metrics
        if m is None:
            return
        m.gpu_utilization.set(v.utilization)
        m.gpu_memory_used.set(v.memory_used_bytes)
        m.gpu_memory_total.set(v.memory_total_bytes)
        m.gpu_memory_low.set(1 if v.memory_low else 0)
        m.gpu_share.set(v.share)
        if v.own_utilization is not None:
            m.gpu_process_utilization.labels("self").set(v.own_utilization)
        if v.others_utilization is not None:
            m.gpu_process_utilization.labels("others").set(v.others_utilization)
        if v.power_watts is not None:
            m.gpu_power.set(v.power_watts)
        if v.temperature_c is not None:
            m.gpu_temperature.set(v.temperature_c)

    def view(self) -> dict[str, Any]:
        if self.backend is None:
            return {"available": False, "reason": self.reason}
        out: dict[str, Any] = {"available": True, "errors": self.errors}
        if self.last is not None:
            out |= asdict(self.last)
            out["share"] = round(self.last.share, 3)
        return out
