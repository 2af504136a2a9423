"""``edgeadapt demo``: one trainer and N edge agents as separate processes on loopback.

    edgeadapt demo [--devices N] [--duration S] [--out FILE.json]

Starts a trainer (TLS on its gRPC port, per-device tokens), N adapting agents on different
synthetic videos and one agent that never adapts (the baseline, on the first device's video),
shows live progress per device and writes FILE.json and a PNG beside it. Everything crosses real
gRPC streams: the byte counts are what the agents sent and received on them. Accuracy is each
device's model scored by the trainer against the teacher's labels of the frames that device
uploaded, before training on them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeadapt.api.launch import AgentLaunch
from edgeadapt.procs import (
    Proc,
    dev_credentials,
    get_json,
    start_agent,
    start_trainer,
    stop,
    wait_ready,
)

log = logging.getLogger(__name__)

BASELINE_ID = "baseline"


class Progress:
    """Live per-device lines: redrawn in place on a terminal, printed periodically otherwise."""

    def __init__(self, stream: Any = sys.stdout, every: float = 15.0) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.every = every
        self._lines = 0
        self._last = 0.0

    def show(self, elapsed: float, total: float, rows: list[str]) -> None:
        now = time.monotonic()
        if not self.tty and now - self._last < self.every:
            return
        self._last = now
        header = f"edgeadapt demo  {elapsed:5.0f}/{total:.0f} s"
        lines = [header, *rows]
        if self.tty and self._lines:
            self.stream.write(f"\x1b[{self._lines}F")
        for line in lines:
            self.stream.write(("\x1b[K" if self.tty else "") + line + "\n")
        self.stream.flush()
        self._lines = len(lines)


def row(agent: dict[str, Any] | None, trainer: dict[str, Any] | None, name: str) -> str:
    if agent is None:
        return f"  {name:<9} starting"
    miou = trainer.get("miou_teacher") if trainer else None
    ref = trainer.get("miou_teacher_no_adaptation") if trainer else None
    miou_s = f"{miou:5.1f}" if miou is not None else "  -  "
    ref_s = f"{ref:5.1f}" if ref is not None else "  -  "
    return (
        f"  {name:<9} v{agent['model_version']:<4d} mIoU vs teacher {miou_s} "
        f"(pretrained {ref_s})  up {agent['uplink_kbps']:6.1f}  down {agent['downlink_kbps']:6.1f} "
        f"kbps  {agent['inference_fps_5s']:5.1f} fps  {agent['connection']}"
    )


def plot(path: Path, report: dict[str, Any], histories: dict[str, list[list[float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [2, 1]})
    t0 = min((h[0][0] for h in histories.values() if h), default=0.0)
    for name, hist in histories.items():
        if not hist:
            continue
        h = np.asarray(hist)
        t = h[:, 0] - t0
        n = np.arange(1, len(h) + 1)
        if name == BASELINE_ID:
            ax1.plot(t, np.cumsum(h[:, 1]) / n, "k--", lw=1.4, label="baseline (never adapts)")
            continue
        (line,) = ax1.plot(t, np.cumsum(h[:, 1]) / n, lw=1.6, label=f"{name}")
        ax1.plot(
            t,
            np.cumsum(h[:, 2]) / n,
            ":",
            color=line.get_color(),
            lw=1.2,
            label=f"{name}, pretrained student on the same frames",
        )
    ax1.set_xlabel("time (s)")
    ax1.set_ylabel("mIoU vs teacher (%), running mean")
    ax1.set_title("accuracy of each device's model on its uploaded frames")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    names = [d["id"] for d in report["devices"]]
    x = np.arange(len(names))
    ax2.bar(x - 0.2, [d["uplink_kbps"] for d in report["devices"]], 0.4, label="uplink")
    ax2.bar(x + 0.2, [d["downlink_kbps"] for d in report["devices"]], 0.4, label="downlink")
    ax2.axhline(250, color="grey", lw=0.8, ls=":")
    ax2.set_xticks(x, names)
    ax2.set_ylabel("kbps on the gRPC stream")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def targets(report: dict[str, Any], trainer_devices: dict[str, dict[str, Any]]) -> dict[str, Any]:
    devices = report["devices"]
    base = report["baseline"]["miou_teacher"]
    return {
        "every_device_above_baseline": all(
            d["miou_teacher"] is not None and base is not None and d["miou_teacher"] > base
            for d in devices
        ),
        "max_downlink_kbps": max(d["downlink_kbps"] for d in devices),
        "downlink_within_250_kbps": all(d["downlink_kbps"] <= 250 for d in devices),
        "max_uplink_kbps": max(d["uplink_kbps"] for d in devices),
        "uplink_within_300_kbps": all(d["uplink_kbps"] <= 300 for d in devices),
        "min_inference_fps_over_source": min(d["inference_fps"] / d["source_fps"] for d in devices),
        "inference_at_source_rate": all(
            d["inference_fps"] >= 0.98 * d["source_fps"] for d in devices
        ),
        # What the agent runs is bit-identical to the trainer's copy (so nothing corrupt was
        # applied): equal CRC32 of the parameter vectors at the same version.
        "models_identical_to_trainer": all(
            d["model_checksum"]
            == trainer_devices.get(d["id"], {}).get("checksums", {}).get(str(d["model_version"]))
            for d in devices
        ),
    }


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    from edgeadapt.models.cache import ensure_checkpoint

    t_start = time.monotonic()
    teacher = ensure_checkpoint("teacher", args.profile)
    student = ensure_checkpoint("student", args.profile)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="edgeadapt-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    creds = dev_credentials(workdir)
    state_dir = workdir / "trainer-state"
    if state_dir.exists():
        shutil.rmtree(state_dir)

    trainer = start_trainer(
        workdir,
        state_dir=state_dir,
        teacher=teacher,
        student=student,
        credentials=creds,
        extra=("--threads", str(args.trainer_threads)),
    )
    procs: dict[str, Proc] = {}
    try:
        wait_ready(trainer, 120)
        video_seconds = args.duration + 30
        specs = {
            f"cam-{i + 1}": (
                f"synthetic:seed={args.seed + i},duration={video_seconds:g},fps={args.fps:g}"
            )
            for i in range(args.devices)
        }
        specs[BASELINE_ID] = specs["cam-1"]
        for name, spec in specs.items():
            token = workdir / f"{name}.token"
            token.write_text(creds.token(name))
            procs[name] = start_agent(
                AgentLaunch(
                    device_id=name,
                    source=spec,
                    trainer=f"127.0.0.1:{trainer.grpc_port}",
                    ca_file=str(creds.pki.ca),
                    token_file=str(token),
                    student_file=str(student),
                    adapt=name != BASELINE_ID,
                    duration=args.duration,
                    http_listen="127.0.0.1:0",
                    state_dir=str(workdir / f"{name}-state"),
                    summary_out=str(workdir / f"{name}.summary.json"),
                ),
                workdir,
            )
        for p in procs.values():
            wait_ready(p, 120)
        progress = Progress(every=args.progress_every)
        t_run = time.monotonic()
        while any(p.popen.poll() is None for p in procs.values()):
            tstat = get_json(trainer.http_port, token=trainer.status_token) or {"devices": []}
            by_id = {d["id"]: d for d in tstat["devices"]}
            rows = [
                row(get_json(p.http_port) if p.popen.poll() is None else None, by_id.get(n), n)
                for n, p in procs.items()
            ]
            progress.show(time.monotonic() - t_run, args.duration, rows)
            time.sleep(1.0)
        failed = {n: p.popen.returncode for n, p in procs.items() if p.popen.returncode != 0}
        if failed:
            raise RuntimeError(f"agents failed: {failed}; logs in {workdir}")
        tstat = get_json(trainer.http_port, timeout=10, token=trainer.status_token) or {
            "devices": []
        }
        trainer_seconds = stop(trainer)
    finally:
        for p in [*procs.values(), trainer]:
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait()

    by_id = {d["id"]: d for d in tstat["devices"]}
    summaries = {n: json.loads((workdir / f"{n}.summary.json").read_text()) for n in procs}
    devices = []
    for name in procs:
        if name == BASELINE_ID:
            continue
        a, t = summaries[name], by_id.get(name, {})
        devices.append(
            {
                "id": name,
                "frames_inferred": a["frames_inferred"],
                "inference_fps": a["inference_fps"],
                "model_version": a["model_version"],
                "miou_teacher": t.get("miou_teacher"),
                "uplink_kbps": a["uplink_kbps"],
                "downlink_kbps": a["downlink_kbps"],
                "updates_applied": a["updates_applied"],
                "updates_rejected": a["updates_rejected"],
                # beyond the required shape
                "source": a["source"],
                "source_fps": a["source_fps"],
                "miou_teacher_no_adaptation": t.get("miou_teacher_no_adaptation"),
                "miou_teacher_last_60s": t.get("miou_teacher_last_60s"),
                "uplink_bytes": a["uplink_bytes"],
                "downlink_bytes": a["downlink_bytes"],
                "frames_uploaded": t.get("frames"),
                "late_frames": a["late_frames"],
                "model_checksum": a["model_checksum"],
                "sampling_rate_fps": t.get("sampling_rate_fps"),
                "update_interval_s": t.get("update_interval_s"),
                "batches_dropped": a["batches_dropped"],
            }
        )
    b, bt = summaries[BASELINE_ID], by_id.get(BASELINE_ID, {})
    report: dict[str, Any] = {
        "devices": devices,
        "baseline": {
            "miou_teacher": bt.get("miou_teacher"),
            "id": BASELINE_ID,
            "source": b["source"],
            "frames_inferred": b["frames_inferred"],
            "inference_fps": b["inference_fps"],
            "frames_uploaded": bt.get("frames"),
        },
    }
    report["targets"] = targets(report, by_id)
    report["run"] = {
        "duration_s": args.duration,
        "trainer_shutdown_s": round(trainer_seconds, 2),
        "total_s": round(time.monotonic() - t_start, 1),
        "workdir": str(workdir),
        "cpu_count": os.cpu_count(),
    }
    histories = {d["id"]: d.get("history", []) for d in tstat["devices"]}
    return {"report": report, "histories": histories}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--devices", type=int, default=2, help="adapting agents (default 2)")
    parser.add_argument("--duration", type=float, default=240.0, help="seconds of video per agent")
    parser.add_argument("--out", type=Path, default=Path("results/demo.json"), help="JSON report")
    parser.add_argument("--seed", type=int, default=1, help="first device's synthetic video seed")
    parser.add_argument("--fps", type=float, default=30.0, help="source frame rate")
    parser.add_argument("--profile", default="bench", help="model profile (bench, tiny)")
    parser.add_argument("--trainer-threads", type=int, default=1, help="trainer torch threads")
    parser.add_argument("--workdir", type=Path, help="keep logs, certificates and state here")
    parser.add_argument(
        "--progress-every", type=float, default=15.0, help="seconds between lines off a terminal"
    )


def run(args: argparse.Namespace) -> int:
    if args.devices < 1:
        raise SystemExit("--devices must be at least 1")
    result = run_demo(args)
    report = result["report"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    png = args.out.with_suffix(".png")
    plot(png, report, result["histories"])
    print(json.dumps({k: report[k] for k in ("devices", "baseline", "targets")}, indent=2))
    print(f"wrote {args.out} and {png}")
    return 0
