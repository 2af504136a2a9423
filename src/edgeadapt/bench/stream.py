"""How many devices one trainer process serves in real time.

    edgeadapt bench stream [--devices 1,2,4,8] [--duration 90] --out FILE.json

For each device count N, a real trainer process (TLS, tokens, its own state directory) serves N
simulated agents from this process. A simulated agent is the agent's network side only: it
registers, and every T_update (as the trainer sets it) uploads one H.264 batch of frames sampled
at the trainer's rate from its own synthetic video, acknowledges updates and follows Settings;
it runs no student, so the trainer's CPU is not shared with N inference loops. Devices start
staggered over one T_update, as unsynchronised cameras would.

Per N the JSON reports the update lag (batch sent -> its update received), updates per device
against the rounds the duration allows, the trainer's CPU use, its mean training-phase and
labelling times, and each device's mIoU against the teacher; ``keeps_up`` holds when the 95th
percentile lag is below T_update, so every update lands before the next batch is due.
``capacity`` is the largest N that keeps up.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from edgeadapt.procs import dev_credentials, get_json, start_trainer, stop, wait_ready

log = logging.getLogger(__name__)

T_UPDATE = 10.0  # AMS's shortest update interval: an update must land before the next batch


class SimulatedAgent(threading.Thread):
    def __init__(
        self,
        device_id: str,
        target: str,
        credentials: grpc.ChannelCredentials,
        token: str,
        register: Any,
        video: str,
        start_at: float,
        stop_at: float,
    ) -> None:
        super().__init__(name=device_id, daemon=True)
        self.device_id, self.target, self.credentials = device_id, target, credentials
        self.token, self.register, self.video = token, register, video
        self.start_at, self.stop_at = start_at, stop_at
        self.rate, self.interval = 1.0, T_UPDATE
        self.sent_at: dict[int, float] = {}
        self.lags: list[float] = []
        self.updates = 0
        self.batches = 0
        self.up_bytes = 0
        self.down_bytes = 0
        self.error = ""
        self._out: queue.Queue[Any] = queue.Queue()
        self._last_acked_seq = 0

    def _requests(self) -> Iterator[Any]:
        from edgeadapt.stream.messages import wire_size

        while True:
            item = self._out.get()
            if item is None:
                return
            self.up_bytes += wire_size(item)
            yield item

    def _uploader(self) -> None:
        from edgeadapt._proto.stream.v1 import stream_pb2 as pb
        from edgeadapt.video.codec import encode_h264
        from edgeadapt.video.synthetic import SyntheticVideo

        video = SyntheticVideo.from_spec(self.video)
        time.sleep(max(0.0, self.start_at - time.time()))
        seq, t_video = 0, 0.0
        prev = time.time()
        next_at = prev + self.interval
        while next_at < self.stop_at:
            time.sleep(max(0.0, next_at - time.time()))
            now = time.time()
            span, rate = now - prev, self.rate  # the batch covers the time since the last one
            n = max(1, round(rate * span))
            offsets = [span * (k + 1) / n for k in range(n)]
            frames = [
                video.frame(min(round((t_video + o) * video.fps), video.num_frames - 1)).image
                for o in offsets
            ]
            seq += 1
            self.sent_at[seq] = now
            self._out.put(
                pb.AgentMessage(
                    samples=pb.SampleBatch(
                        seq=seq,
                        codec=pb.CODEC_H264,
                        data=encode_h264(frames),
                        timestamps=[prev + o for o in offsets],
                        width=video.width,
                        height=video.height,
                    )
                )
            )
            self.batches += 1
            t_video += span
            prev = now
            next_at = now + self.interval  # the trainer may have changed T_update meanwhile
        self._out.put(None)

    def run(self) -> None:
        from edgeadapt._proto.stream.v1 import stream_pb2 as pb
        from edgeadapt._proto.stream.v1 import stream_pb2_grpc as pb_grpc
        from edgeadapt.stream.auth import call_metadata
        from edgeadapt.stream.messages import CHANNEL_OPTIONS, wire_size

        self._out.put(pb.AgentMessage(register=self.register))
        threading.Thread(target=self._uploader, daemon=True).start()
        with grpc.secure_channel(self.target, self.credentials, options=CHANNEL_OPTIONS) as ch:
            stub = pb_grpc.AdaptationServiceStub(ch)  # type: ignore[no-untyped-call]
            call = stub.Connect(
                self._requests(), metadata=call_metadata(self.device_id, self.token)
            )
            try:
                for message in call:
                    self.down_bytes += wire_size(message)
                    kind = message.WhichOneof("body")
                    if kind in ("welcome", "settings"):
                        s = message.welcome.settings if kind == "welcome" else message.settings
                        self.rate, self.interval = s.sampling_rate_fps, s.update_interval_s
                    elif kind == "batch_ack":
                        self._last_acked_seq = message.batch_ack.seq
                    elif kind == "update":
                        sent = self.sent_at.get(self._last_acked_seq)
                        if sent is not None:
                            self.lags.append(time.time() - sent)
                        self.updates += 1
                        self._out.put(
                            pb.AgentMessage(
                                ack=pb.UpdateAck(version=message.update.version, applied=True)
                            )
                        )
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    self.error = f"{exc.code().name}: {exc.details()}"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _histogram_mean(metrics: str, name: str) -> float | None:
    total = count = None
    for line in metrics.splitlines():
        if line.startswith(f"{name}_sum "):
            total = float(line.split()[1])
        elif line.startswith(f"{name}_count "):
            count = float(line.split()[1])
    return round(total / count, 3) if total is not None and count else None


def run_one(n: int, args: argparse.Namespace, teacher: Path, student: Path) -> dict[str, Any]:
    import urllib.request

    from edgeadapt.models.zoo import load_checkpoint_model
    from edgeadapt.stream.messages import register_message
    from edgeadapt.stream.tls import channel_credentials

    workdir = Path(tempfile.mkdtemp(prefix=f"edgeadapt-bench-stream-{n}-"))
    creds = dev_credentials(workdir)
    trainer = start_trainer(
        workdir,
        state_dir=workdir / "state",
        teacher=teacher,
        student=student,
        credentials=creds,
        extra=("--threads", str(args.trainer_threads), "--log-format", "json"),
    )
    try:
        wait_ready(trainer, 120)
        model = load_checkpoint_model(student)
        credentials = channel_credentials(creds.pki.ca)
        t0 = time.time() + 1.0
        stop_at = t0 + args.duration
        agents = []
        for i in range(n):
            device_id = f"sim-{i + 1}"
            register = register_message(device_id, model)
            agents.append(
                SimulatedAgent(
                    device_id,
                    f"127.0.0.1:{trainer.grpc_port}",
                    credentials,
                    creds.token(device_id),
                    register,
                    f"synthetic:seed={i + 1},duration={args.duration + 60:g}",
                    t0 + i * T_UPDATE / n,
                    stop_at,
                )
            )
        cpu0, wall0 = _cpu_seconds(trainer.popen.pid), time.monotonic()
        for a in agents:
            a.start()
        time.sleep(max(0.0, stop_at - time.time()) + args.settle)
        cpu = _cpu_seconds(trainer.popen.pid) - cpu0
        wall = time.monotonic() - wall0
        status = get_json(trainer.http_port, timeout=10, token=trainer.status_token) or {
            "devices": []
        }
        url = f"http://127.0.0.1:{trainer.http_port}/metrics"
        metrics = urllib.request.urlopen(url, timeout=10).read().decode()
        errors = [f"{a.device_id}: {a.error}" for a in agents if a.error]  # before the stop
    finally:
        stop(trainer)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    lags = np.asarray([lag for a in agents for lag in a.lags]) if agents else np.zeros(0)
    rounds = [a.batches for a in agents]
    p95 = float(np.percentile(lags, 95)) if len(lags) else None
    mious = [d["miou_teacher"] for d in status["devices"] if d.get("miou_teacher") is not None]
    return {
        "devices": n,
        "trainer_device": status.get("device"),
        "lag_median_s": round(float(np.median(lags)), 2) if len(lags) else None,
        "lag_p95_s": round(p95, 2) if p95 is not None else None,
        "lag_max_s": round(float(lags.max()), 2) if len(lags) else None,
        "batches_per_device": round(float(np.mean(rounds)), 1),
        "updates_per_device": round(float(np.mean([a.updates for a in agents])), 1),
        "keeps_up": p95 is not None and p95 < T_UPDATE and not errors,
        "trainer_cpu_utilisation": round(cpu / wall, 2),
        "train_phase_mean_s": _histogram_mean(metrics, "edgeadapt_trainer_train_phase_seconds"),
        "label_cycle_mean_s": _histogram_mean(metrics, "edgeadapt_trainer_label_seconds"),
        "miou_teacher_mean": round(float(np.mean(mious)), 2) if mious else None,
        "uplink_kbps_per_device": round(
            float(np.mean([a.up_bytes for a in agents])) * 8 / args.duration / 1000, 2
        ),
        "downlink_kbps_per_device": round(
            float(np.mean([a.down_bytes for a in agents])) * 8 / args.duration / 1000, 2
        ),
        "errors": errors,
    }


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds per device count")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait after uploads")
    parser.add_argument("--profile", default="bench", help="model profile (bench, tiny)")
    parser.add_argument("--trainer-threads", type=int, default=1, help="trainer torch threads")
    parser.add_argument("--keep", action="store_true", help="keep each run's work directory")
    parser.add_argument("--out", type=Path, required=True, help="JSON output")


def run(args: argparse.Namespace) -> int:
    from edgeadapt.models.cache import ensure_checkpoint

    teacher = ensure_checkpoint("teacher", args.profile)
    student = ensure_checkpoint("student", args.profile)
    runs = []
    for n in (int(x) for x in args.devices.split(",") if x):
        result = run_one(n, args, teacher, student)
        log.info("%d devices: %s", n, json.dumps(result))
        runs.append(result)
    report = {
        "runs": runs,
        "capacity": max((r["devices"] for r in runs if r["keeps_up"]), default=0),
        "config": {
            "duration_s": args.duration,
            "profile": args.profile,
            "trainer_threads": args.trainer_threads,
            "cpu_count": os.cpu_count(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0
