"""What one device's trainer state costs on disk and in memory, from a high-resolution camera.

    edgeadapt bench state [--size 1280x720] [--horizon 240] --out FILE.json

A device uploads one H.264 batch every T_update of frames sampled at 1 fps from a synthetic
video at ``--size``. Each batch goes through the trainer's own path (bounded decode straight to
the student's input size, teacher labels, one AMS phase, the update logged to disk) until the
horizon is full; then the device's whole state is checkpointed, as the trainer does once a
minute, at shutdown and on eviction. The JSON reports the checkpoint's bytes and write time, the
update log's bytes and append time per update, and the horizon's memory.

For comparison it also writes the state the way the trainer did before (every batch, frames and
labels at the source's size, uncompressed) and reports its bytes and write time
(``--no-baseline`` skips it): the cost of an hour of a device is then measured, not guessed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--size", default="1280x720", help="source frame size WxH")
    parser.add_argument("--horizon", type=float, default=240.0, help="T_horizon in seconds")
    parser.add_argument("--t-update", type=float, default=10.0, help="seconds per batch")
    parser.add_argument("--rate", type=float, default=1.0, help="sampling rate, frames per second")
    parser.add_argument("--iterations", type=int, default=4, help="AMS K per phase (speed only)")
    parser.add_argument("--checkpoints", type=int, default=3, help="checkpoints timed")
    parser.add_argument("--profile", default="bench", help="model profile (bench, tiny)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    parser.add_argument("--out", type=Path, required=True, help="JSON output")


def run(args: argparse.Namespace) -> int:
    import torch

    from edgeadapt._proto.stream.v1 import stream_pb2 as pb
    from edgeadapt.adapt.ams import AMSConfig
    from edgeadapt.models.cache import ensure_checkpoint
    from edgeadapt.models.zoo import checkpoint_input_size, load_checkpoint_model
    from edgeadapt.stream.messages import register_message
    from edgeadapt.trainer.hub import Hub, HubConfig
    from edgeadapt.trainer.server import decode_batch
    from edgeadapt.trainer.store import DeviceStore
    from edgeadapt.video.codec import encode_h264
    from edgeadapt.video.source import open_source

    torch.set_num_threads(1)
    width, height = (int(v) for v in args.size.lower().split("x"))
    student_path = ensure_checkpoint("student", args.profile)
    student = load_checkpoint_model(student_path)
    teacher = load_checkpoint_model(ensure_checkpoint("teacher", args.profile))
    input_size = checkpoint_input_size(student_path)
    ams = AMSConfig(t_horizon=args.horizon, t_update=args.t_update, iterations=args.iterations)
    video = open_source(f"synthetic:seed=1,duration={args.horizon + 30:g},size={width}x{height}")
    per_batch = max(1, round(args.rate * args.t_update))
    n_batches = int(args.horizon * args.rate) // per_batch
    step = max(1, round(video.fps / args.rate))

    with tempfile.TemporaryDirectory(prefix="edgeadapt-state-") as tmp:
        store = DeviceStore(Path(tmp) / "state")
        hub = Hub(
            teacher,
            student,
            HubConfig(ams=ams, input_size=input_size, checkpoint_interval=1e9),
            store,
            torch.device("cpu"),
        )
        hub.attach(register_message("cam-1", student), lambda m: None, lambda r: None)
        dev = hub.devices["cam-1"]
        decode_s, encoded_bytes, sources = [], 0, []
        t0_capture = time.time() - args.horizon
        for b in range(n_batches):
            idx = [(b * per_batch + i) * step for i in range(per_batch)]
            frames = [video.frame(i).image for i in idx]
            sources.extend(frames)
            data = encode_h264(frames)
            encoded_bytes += len(data)
            msg = pb.SampleBatch(
                seq=b + 1,
                codec=pb.CODEC_H264,
                data=data,
                timestamps=[t0_capture + i / video.fps for i in idx],
                width=width,
                height=height,
            )
            t0 = time.perf_counter()
            batch, _ = decode_batch(msg, hub.limits)
            decode_s.append(time.perf_counter() - t0)
            labels = hub.teacher.label(batch.images)
            hub._process(dev, [(batch, labels)])
        records = store.records("cam-1")
        log_bytes = store.log_path("cam-1").stat().st_size
        appends = next(iter(hub.metrics.persist_seconds.collect())).samples
        append_sum = next(s.value for s in appends if s.name.endswith("_sum"))
        append_count = next(s.value for s in appends if s.name.endswith("_count"))
        checkpoint_s = []
        for _ in range(args.checkpoints):
            t0 = time.perf_counter()
            with dev.lock:
                hub._checkpoint(dev)
            checkpoint_s.append(time.perf_counter() - t0)
        assert dev.session is not None
        buf = dev.session.buffer
        horizon_bytes = sum(f.nbytes for f in buf.frames) + sum(x.nbytes for x in buf.labels)
        report: dict[str, Any] = {
            "source_size": [width, height],
            "input_size": list(input_size) if input_size else None,
            "horizon_s": args.horizon,
            "horizon_frames": len(buf),
            "batches": n_batches,
            "uplink_bytes_per_batch": round(encoded_bytes / max(n_batches, 1)),
            "decode_seconds_per_batch": round(statistics.median(decode_s), 4),
            "checkpoint_bytes": dev.state_bytes,
            "checkpoint_seconds": round(statistics.median(checkpoint_s), 4),
            "update_log_bytes_per_update": round(log_bytes / max(len(records), 1)),
            "update_log_append_seconds": round(append_sum / max(append_count, 1), 5),
            "horizon_memory_bytes": horizon_bytes,
            "writes_per_device_minute_bytes": round(
                dev.state_bytes + (60 / args.t_update) * log_bytes / max(len(records), 1)
            ),
        }
        if args.baseline:
            report["before"] = _old_layout(dev, sources, Path(tmp), width, height)
            report["before"]["writes_per_device_minute_bytes"] = round(
                (60 / args.t_update) * report["before"]["state_bytes"]
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


def _old_layout(dev: Any, sources: list[Any], tmp: Path, width: int, height: int) -> dict[str, Any]:
    """Write the state as it was written before: every batch, the horizon at source size, raw."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    session = dev.session
    state = session.state_dict()
    frames = torch.from_numpy(np.stack(sources)).permute(0, 3, 1, 2).contiguous()
    labels = F.interpolate(
        state["buffer"]["labels"][:, None].float(), size=(height, width), mode="nearest"
    )[:, 0].to(torch.uint8)
    state["buffer"] = {"times": state["buffer"]["times"], "frames": frames, "labels": labels}
    path = tmp / "old-state.pt"
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        torch.save({"format": 1, "session": state}, f)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - t0
    return {
        "state_bytes": path.stat().st_size,
        "persist_seconds": round(seconds, 3),
        "horizon_memory_bytes": int(frames.nbytes + labels.nbytes),
    }
