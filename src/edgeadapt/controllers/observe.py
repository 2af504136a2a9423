"""What the data plane reports: a trainer's ``/status``, read into what the statuses show.

The operator reads each ready trainer's ``/status`` once per interval (``edgeadapt.operator.
poller``) and keeps the last answer as a :class:`TrainerObservation`. The EdgeDevice controller
turns the device's entry into its ``AgentConnected`` and ``ModelDeployed`` conditions and its
figures; the AdaptationPolicy controller sums them per policy.

Figures change all the time (a new model version every update interval), and a fleet that wrote
each change would flood the API server. ``figures_due`` is the documented tolerance: a device's
figures are written when they first appear, when accuracy moves by 2 points or more, when a link
rate moves by 25 % or more (and at least 5 kbps), or, for any other change (a new version, a new
update time), once ``FIGURES_REFRESH_S`` has passed since they were last written. Conditions are
written whenever they change.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeadapt.api.conditions import Reason, Status, now_rfc3339

FIGURES_REFRESH_S = 60.0
ACCURACY_TOLERANCE = 0.02
RATE_TOLERANCE = 0.25
RATE_FLOOR_KBPS = 5.0


@dataclass(frozen=True)
class TrainerObservation:
    """One answer (or non-answer) of a trainer's ``/status``."""

    time: float  # wall clock of the request
    reachable: bool
    error: str = ""
    phase: str = ""
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: dict[str, dict[str, Any]] = field(default_factory=dict)
    gpu: dict[str, Any] = field(default_factory=dict)  # the trainer's NVML figures

    @classmethod
    def of(cls, body: Mapping[str, Any], time: float) -> TrainerObservation:
        return cls(
            time=time,
            reachable=True,
            phase=str(body.get("phase", "")),
            devices={
                str(d["id"]): dict(d) for d in body.get("devices") or [] if isinstance(d, dict)
            },
            refused={str(k): dict(v) for k, v in (body.get("refused") or {}).items()},
            gpu=dict(body["gpu"]) if isinstance(body.get("gpu"), dict) else {},
        )

    @property
    def memory_low(self) -> bool:
        """The trainer reports less free GPU memory than its headroom: no new devices."""
        return self.serving and bool(self.gpu.get("memory_low"))

    @property
    def serving(self) -> bool:
        return self.reachable and self.phase == "serving"


@dataclass(frozen=True)
class PolicyFigures:
    """Per policy: devices whose agent is connected, devices adapting, mean accuracy."""

    connected: int = 0
    adapting: int = 0
    mean_miou: float | None = None
    gpus: tuple[dict[str, Any], ...] = ()  # per trainer with GPU telemetry


MIB = 1 << 20


def trainer_gpus(observations: Mapping[str, TrainerObservation]) -> tuple[dict[str, Any], ...]:
    """Per trainer pod (by name) that reports NVML figures: utilisation and memory, rounded so
    the status moves only when they do (percent, MiB)."""
    out = []
    for pod, o in sorted(observations.items()):
        g = o.gpu
        if not o.serving or not g.get("available") or "utilization" not in g:
            continue
        out.append(
            {
                "trainer": pod,
                "utilizationPercent": round(100 * float(g["utilization"])),
                "memoryUsedMiB": int(g["memory_used_bytes"]) // MIB,
                "memoryTotalMiB": int(g["memory_total_bytes"]) // MIB,
                "memoryLow": bool(g.get("memory_low")),
            }
        )
    return tuple(out)


def connected(view: Mapping[str, Any] | None) -> bool:
    return bool(view and view.get("connected"))


def in_step(view: Mapping[str, Any] | None) -> bool:
    return bool(view and view.get("agent_in_step"))


def policy_figures(observations: list[TrainerObservation]) -> PolicyFigures:
    views = [v for o in observations if o.reachable for v in o.devices.values()]
    live = [v for v in views if connected(v)]
    adapting = [v for v in live if v.get("adapt") and in_step(v) and v.get("model_version", 0)]
    accuracies = [
        float(v["miou_teacher_last_60s"]) for v in live if _number(v, "miou_teacher_last_60s")
    ]
    return PolicyFigures(
        connected=len(live),
        adapting=len(adapting),
        mean_miou=round(sum(accuracies) / len(accuracies) / 100, 4) if accuracies else None,
    )


def _number(view: Mapping[str, Any], key: str) -> bool:
    return isinstance(view.get(key), int | float)


def bandwidth_limited(view: Mapping[str, Any] | None) -> tuple[Status, str, str] | None:
    """The ``BandwidthLimited`` condition (status, reason, message) of a connected device whose
    trainer applies a link budget; None otherwise. The message names what the budget holds
    (stable keys), not the figures, which move every interval and are in the trainer's
    ``/status``."""
    link = (view or {}).get("link")
    if not connected(view) or not isinstance(link, Mapping):
        return None
    budget = ", ".join(
        f"{way} {link[key]:g} kbps"
        for way, key in (("uplink", "uplink_budget_kbps"), ("downlink", "downlink_budget_kbps"))
        if isinstance(link.get(key), int | float)
    )
    limited = [str(x) for x in link.get("limited") or []]
    if limited:
        return (
            "True",
            Reason.BUDGET_BELOW_POLICY,
            f"the link budget ({budget}) holds the {', '.join(limited)} below the policy's "
            "parameters",
        )
    return ("False", Reason.WITHIN_BUDGET, f"the stream fits the link budget ({budget})")


def device_figures(view: Mapping[str, Any], observed_at: float) -> dict[str, Any]:
    """The EdgeDevice status fields a trainer's view of the device gives."""
    out: dict[str, Any] = {"modelVersion": int(view.get("agent_model_version") or 0)}
    if _number(view, "miou_teacher_last_60s"):
        out["accuracy"] = {"miouVsTeacher": round(float(view["miou_teacher_last_60s"]) / 100, 4)}
    if _number(view, "uplink_kbps") and _number(view, "downlink_kbps"):
        out["bandwidth"] = {
            "uplinkKbps": round(float(view["uplink_kbps"]), 1),
            "downlinkKbps": round(float(view["downlink_kbps"]), 1),
        }
    if _number(view, "sampling_rate_fps"):
        out["samplingRateFps"] = round(float(view["sampling_rate_fps"]), 3)
    if _number(view, "last_update_time"):
        out["lastUpdateTime"] = rfc3339(float(view["last_update_time"]))
    out["lastObservedTime"] = rfc3339(observed_at)
    return out


FIGURE_KEYS = (
    "modelVersion",
    "accuracy",
    "bandwidth",
    "samplingRateFps",
    "lastUpdateTime",
    "lastObservedTime",
)


def figures_due(current: Mapping[str, Any], new: Mapping[str, Any], now: float) -> bool:
    """Whether ``new`` figures are worth a status write over ``current`` (see the module)."""
    if "lastObservedTime" not in current:
        return True
    old_acc = (current.get("accuracy") or {}).get("miouVsTeacher")
    new_acc = (new.get("accuracy") or {}).get("miouVsTeacher")
    if old_acc is None or new_acc is None:
        if (old_acc is None) != (new_acc is None):
            return True
    elif abs(float(new_acc) - float(old_acc)) >= ACCURACY_TOLERANCE:
        return True
    for key in ("uplinkKbps", "downlinkKbps"):
        old = (current.get("bandwidth") or {}).get(key)
        rate = (new.get("bandwidth") or {}).get(key)
        if (old is None) != (rate is None):
            return True
        if old is not None and abs(rate - old) >= max(RATE_FLOOR_KBPS, RATE_TOLERANCE * old):
            return True
    changed = any(current.get(k) != new.get(k) for k in FIGURE_KEYS if k != "lastObservedTime")
    age = now - parse_rfc3339(str(current["lastObservedTime"]))
    return changed and age >= FIGURES_REFRESH_S


def rfc3339(t: float) -> str:
    return now_rfc3339(datetime.datetime.fromtimestamp(t, datetime.UTC))


def parse_rfc3339(text: str) -> float:
    try:
        return (
            datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
            .replace(tzinfo=datetime.UTC)
            .timestamp()
        )
    except ValueError:
        return 0.0
