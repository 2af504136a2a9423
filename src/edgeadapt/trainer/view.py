"""What the trainer's ``/status`` shows: per-device summaries and the scheduler's last round.

Everything here reads state and builds plain JSON-able dicts; nothing changes a device. The
operator reads these fields (``agent_in_step``, ``link.limited``, ``recl``, ``scheduler``) to
write EdgeDevice and AdaptationPolicy status, so their names are part of the trainer's interface.
"""

from __future__ import annotations

import time
from typing import Any

from edgeadapt.trainer.budget import LIMITED_FRACTION, LinkPlanner
from edgeadapt.trainer.device import Device, Score
from edgeadapt.trainer.scheduler import Round, Scheduler, drift

RATE_WINDOW_S = 60.0
RATE_SAMPLE_S = 5.0


def device_view(
    dev: Device,
    settings: tuple[float, float],
    gamma: float,
    scheduler: Scheduler,
    waiting: bool,
    history: int = 400,
) -> dict[str, Any]:
    """One device's summary (caller holds ``dev.lock``); ``settings`` are its current
    (sampling rate, update interval), ``waiting`` whether it has frames for the next round."""
    scores = list(dev.scores)
    recent_from = scores[-1].time - 60.0 if scores else 0.0
    recent = [s for s in scores if s.time >= recent_from]
    step = max(1, len(scores) // history)
    with dev.chain_lock:
        chain = list(dev.chain)
        acked = dev.acked_version
    checksums = {str(k.base_version): f"{k.base_checksum:08x}" for k in chain}
    checksums |= {str(k.version): f"{k.checksum:08x}" for k in chain}
    checksums[str(dev.version)] = f"{dev.checksum:08x}"
    up_kbps, down_kbps = link_rates(dev)
    return {
        "id": dev.device_id,
        "adapt": dev.adapt,
        "model_version": dev.version,
        "acked_version": acked,
        "model_checksum": f"{dev.checksum:08x}",
        "agent_model_version": dev.agent_version,
        "agent_model_checksum": None if dev.agent_checksum is None else f"{dev.agent_checksum:08x}",
        # The agent runs a version we produced (equal checksums) at most the update in flight
        # behind: what the operator shows as ModelDeployed.
        "agent_in_step": dev.agent_version is not None
        and dev.agent_checksum is not None
        and dev.version - dev.agent_version <= 1
        and checksums.get(str(dev.agent_version)) == f"{dev.agent_checksum:08x}",
        "last_update_time": dev.last_applied,
        "checksums": checksums,
        "frames": dev.frames,
        "batches": dev.batches,
        "miou_teacher": mean_miou(scores),
        "miou_teacher_no_adaptation": mean_miou(scores, base=True),
        "miou_teacher_last_60s": mean_miou(recent),
        "sampling_rate_fps": round(settings[0], 3),
        "update_interval_s": round(settings[1], 2),
        "updates_sent": dev.updates_sent,
        "snapshots_sent": dev.snapshots_sent,
        "uplink_bytes": dev.uplink_bytes,
        "downlink_bytes": dev.downlink_bytes,
        "uplink_kbps": up_kbps,
        "downlink_kbps": down_kbps,
        "link": link_view(dev.planner, gamma),
        "state_bytes": dev.state_bytes,
        "recl": dev.recl.view() if dev.recl is not None else None,
        "scheduler": {
            **scheduler.job_view(dev.device_id),
            "waiting": waiting,
            "held_out_frames": len(dev.holdout),
            "urgency": round(drift(dev.bank()), 4),
        },
        "history": [
            [
                round(s.time, 2),
                round(100 * s.miou / s.frames, 2),
                round(100 * s.miou_base / s.frames, 2),
            ]
            for s in scores[::step]
        ],
    }


def scheduler_view(scheduler: Scheduler, last: Round | None, share: float) -> dict[str, Any]:
    cfg = scheduler.config
    return {
        "policy": cfg.policy,
        "iterations": cfg.iterations,
        "micro_window_s": cfg.micro_window,
        "round_cap_s": cfg.round_cap,
        "share": round(share, 3),
        "rounds": scheduler.rounds,
        "over_subscribed": scheduler.over_subscribed,
        "last_round": None
        if last is None
        else {
            "budget_s": round(last.budget, 3),
            "spent_s": round(last.spent, 3),
            "slices": len(last.slices),
            "trained": last.trained,
            "deferred": last.deferred,
            "ended": last.ended,
        },
    }


def link_view(planner: LinkPlanner | None, gamma: float) -> dict[str, Any] | None:
    """The budget, what it holds below the policy's parameters, and the phases it held back.

    ``limited`` names what is held (stable keys, for conditions); ``limits`` says by how much.
    """
    if planner is None:
        return None
    fraction = planner.last_fraction
    limited = [key for key, _ in planner.limits]
    if fraction is not None and fraction < gamma and LIMITED_FRACTION not in limited:
        limited.append(LIMITED_FRACTION)
    return {
        "uplink_budget_kbps": planner.budget.uplink_kbps,
        "downlink_budget_kbps": planner.budget.downlink_kbps,
        "limited": sorted(limited),
        "limits": [message for _, message in planner.limits],
        "last_update_fraction": None if fraction is None else round(fraction, 5),
        "held_phases": planner.held_phases,
        "bytes_per_frame": None
        if planner.bytes_per_frame is None
        else round(planner.bytes_per_frame, 1),
        "bytes_per_coordinate": round(planner.bytes_per_coord, 3),
    }


def mean_miou(scores: list[Score], base: bool = False) -> float | None:
    """Per-frame mean mIoU (percent) of the device's model, or of the pretrained one."""
    n = sum(s.frames for s in scores)
    if not n:
        return None
    return round(100 * sum(s.miou_base if base else s.miou for s in scores) / n, 2)


def link_rates(dev: Device) -> tuple[float | None, float | None]:
    """The device's uplink and downlink use over about the last minute, kbps (None until a few
    seconds of it were seen)."""
    now = time.monotonic()
    samples = dev.rate_samples
    if not samples or now - samples[-1][0] >= RATE_SAMPLE_S:
        samples.append((now, dev.uplink_bytes, dev.downlink_bytes))
    while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
        samples.popleft()
    t0, up0, down0 = samples[0]
    if now - t0 < 1.0:
        return None, None
    seconds = now - t0
    return (
        round((dev.uplink_bytes - up0) * 8 / 1000 / seconds, 2),
        round((dev.downlink_bytes - down0) * 8 / 1000 / seconds, 2),
    )
