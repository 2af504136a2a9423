"""``python -m edgeadapt.edge_agent``: run the student on a camera or video and keep it adapted.

    python -m edgeadapt.edge_agent --device-id cam-1 --source rtsp://... \\
        --trainer trainer.example:50051 --ca-file ca.crt --token-file token \\
        [--state-dir DIR] [--http-listen 0.0.0.0:9090]

``--source`` is a video spec: ``synthetic:seed=N,...``, a file, or an rtsp/http/udp URL.
``--no-adapt`` registers the device for scoring only (the trainer never updates it). A network
source that fails is reopened with backoff (a live rtsp/rtmp/udp/srt/tcp stream also when it
ends); inference resumes on the next frame it delivers.
Without a trainer (``--trainer ''``) the agent only infers. Without ``--student`` the agent
fetches the starting model from its trainer once and keeps it in ``--state-dir``, so an edge pod
needs no model files. The token file is read again on every connect, so a re-minted token is
used without a restart.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from edgeadapt.telemetry import HTTPEndpoint, setup_logging, write_ready_file

log = logging.getLogger("edgeadapt.edge_agent")

# Streams that only exist live: one that ends has dropped, and is reopened like one that fails.
LIVE_SCHEMES = ("rtsp://", "rtmp://", "udp://", "srt://", "tcp://")


def _kbps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of kbps") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"a link budget must be positive, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edgeadapt.edge_agent", description=__doc__)
    env = os.environ.get
    p.add_argument(
        "--device-id",
        default=env("EDGEADAPT_DEVICE"),
        required=not env("EDGEADAPT_DEVICE"),
        help="the EdgeDevice's name (env EDGEADAPT_DEVICE)",
    )
    p.add_argument(
        "--source",
        default=env("EDGEADAPT_VIDEO_URI"),
        required=not env("EDGEADAPT_VIDEO_URI"),
        help="video spec: synthetic:..., a file or a URL (env EDGEADAPT_VIDEO_URI)",
    )
    p.add_argument("--size", default=None, help="WxH to resize decoded frames to (files, URLs)")
    p.add_argument(
        "--trainer",
        default=env("EDGEADAPT_TRAINER_ENDPOINT", ""),
        help="trainer address host:port, '' for none (env EDGEADAPT_TRAINER_ENDPOINT)",
    )
    p.add_argument("--server-name", default=None, help="TLS name to expect from the trainer")
    p.add_argument("--ca-file", type=Path, help="CA that signed the trainer's certificate")
    p.add_argument("--cert-file", type=Path, help="client certificate for mutual TLS")
    p.add_argument("--key-file", type=Path, help="client key for mutual TLS")
    p.add_argument("--token-file", type=Path, help="this device's token (or env EDGEADAPT_TOKEN)")
    p.add_argument("--insecure", action="store_true", help="plaintext gRPC (loopback tests)")
    p.add_argument(
        "--student",
        type=Path,
        help="the starting student checkpoint (default: fetched from the trainer)",
    )
    p.add_argument(
        "--profile", default="bench", help="cached model profile without --student or trainer"
    )
    p.add_argument("--no-adapt", dest="adapt", action="store_false", help="score only")
    p.add_argument(
        "--loop",
        action="store_true",
        help="start the source again when it ends (a file or synthetic video as a camera)",
    )
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--no-pace", dest="pace", action="store_false", help="do not pace to fps")
    p.add_argument("--state-dir", type=Path, help="keep the model in use here across restarts")
    p.add_argument("--max-pending", type=int, default=60, help="sample batches kept offline")
    p.add_argument(
        "--expert-cache",
        type=int,
        default=4,
        help="zoo experts kept on disk (under --state-dir) for RECL switches; 0: none",
    )
    p.add_argument(
        "--uplink-kbps",
        type=_kbps,
        default=None,
        help="the link's uplink budget: the trainer keeps sampled-frame uploads within it",
    )
    p.add_argument(
        "--downlink-kbps",
        type=_kbps,
        default=None,
        help="the link's downlink budget: the trainer keeps model updates within it",
    )
    p.add_argument(
        "--t-update",
        type=float,
        default=10.0,
        help="seconds of samples per batch until the trainer sets T_update (offline, at start)",
    )
    p.add_argument("--backoff-max", type=float, default=30.0, help="longest reconnect delay (s)")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        help="on exit, seconds to wait for the trainer to acknowledge the last batches",
    )
    p.add_argument("--http-listen", default="0.0.0.0:9090", help="/metrics /healthz /status")
    p.add_argument("--summary-out", type=Path, help="write the final status here as JSON")
    p.add_argument("--ready-file", help="write the bound HTTP port here as JSON")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format, args.verbose, args.device_id)

    import torch
    from prometheus_client import CollectorRegistry

    from edgeadapt._proto.stream.v1 import stream_pb2 as pb
    from edgeadapt.edge_agent.bootstrap import starting_model
    from edgeadapt.edge_agent.link import LinkConfig
    from edgeadapt.models.cache import ensure_checkpoint
    from edgeadapt.stream.auth import valid_device_id
    from edgeadapt.stream.tls import channel_credentials

    if not valid_device_id(args.device_id):
        log.error("--device-id must be a DNS-1123 name, got %r", args.device_id)
        return 2
    if args.expert_cache < 0:
        log.error("--expert-cache must be 0 or more, got %d", args.expert_cache)
        return 2
    env_token = os.environ.get("EDGEADAPT_TOKEN", "")
    if (
        args.trainer
        and not args.insecure
        and (args.ca_file is None or not (args.token_file or env_token))
    ):
        log.error("--ca-file and a token are needed to reach a trainer (or --insecure)")
        return 2
    torch.set_num_threads(1)
    token = env_token
    if args.token_file is not None:
        token = args.token_file.read_text().strip() if args.token_file.exists() else ""
    credentials = None
    if args.trainer and not args.insecure:
        credentials = channel_credentials(args.ca_file, args.cert_file, args.key_file)

    def link_config(register: pb.Register) -> LinkConfig:
        return LinkConfig(
            target=args.trainer,
            device_id=args.device_id,
            token=token,
            credentials=credentials,
            register=register,
            max_pending=args.max_pending,
            backoff_max=args.backoff_max,
            server_name=args.server_name,
            token_file=args.token_file,
        )

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # The endpoint opens first, so a supervisor sees a live process while the starting model is
    # fetched; it serves the agent's own figures once the agent runs.
    http = HTTPEndpoint(
        args.http_listen,
        CollectorRegistry(),
        lambda: {"device": args.device_id, "phase": "fetching the starting model"},
        ready=lambda: False,
    )
    try:
        if args.student is not None:
            student_path: Path | None = args.student
        elif args.trainer:
            folder = args.state_dir or Path(tempfile.mkdtemp(prefix="edgeadapt-agent-"))
            student_path = starting_model(link_config(pb.Register()), folder, stop)
        else:
            student_path = ensure_checkpoint("student", args.profile)
        if student_path is None:
            return 0  # stopped while waiting
        return _run(args, student_path, link_config, stop, http)
    finally:
        http.close()


def _run(
    args: argparse.Namespace,
    student_path: Path,
    link_config: Any,
    stop: threading.Event,
    http: HTTPEndpoint,
) -> int:
    from edgeadapt.adapt.ams import EdgeModel
    from edgeadapt.edge_agent.agent import Agent, AgentOptions, load_state, restore_edge
    from edgeadapt.edge_agent.experts import ExpertCache
    from edgeadapt.models.zoo import load_checkpoint_model
    from edgeadapt.stream.messages import register_message
    from edgeadapt.video.av_source import NETWORK_SCHEMES
    from edgeadapt.video.source import VideoSource, open_source

    student = load_checkpoint_model(student_path)
    edge = EdgeModel(student)
    if args.state_dir is not None:
        saved = load_state(args.state_dir, args.device_id, edge.num_params)
        if saved is not None:
            restore_edge(edge, *saved)
    width = height = None
    if args.size:
        width, height = (int(v) for v in args.size.lower().split("x"))
    network = args.source.startswith(NETWORK_SCHEMES)
    source = _open_first(args.source, width, height, network, stop)
    if source is None:
        return 0  # stopped while waiting for the camera
    live = args.source.startswith(LIVE_SCHEMES) or args.loop

    def reopen() -> VideoSource:
        return open_source(args.source, width=width, height=height)

    link = None
    if args.trainer:
        # The link fills in the version and checksum the agent runs when it connects.
        register = register_message(args.device_id, student, adapt=args.adapt)
        if args.uplink_kbps or args.downlink_kbps:
            register.link.uplink_kbps = args.uplink_kbps or 0.0
            register.link.downlink_kbps = args.downlink_kbps or 0.0
        link = link_config(register)
        link.experts = ExpertCache(
            args.expert_cache,
            edge.num_params,
            args.state_dir / "experts" if args.state_dir is not None else None,
        )
    agent = Agent(
        AgentOptions(
            device_id=args.device_id,
            adapt=args.adapt,
            duration=args.duration,
            pace=args.pace,
            state_dir=args.state_dir,
            drain_timeout=args.drain_timeout,
            reopen_at_end=live,
            t_update=args.t_update,
        ),
        source,
        edge,
        link,
        reopen=reopen if network or args.loop else None,
    )
    http.registry, http.status, http.healthy = agent.metrics.registry, agent.status, agent.healthy
    http.ready = agent.healthy
    write_ready_file(args.ready_file, http_port=http.port)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.request_stop())
    if stop.is_set():
        agent.request_stop()
    log.info(
        "agent running",
        extra={
            "device": args.device_id,
            "source": source.spec,
            "fps": source.fps,
            "trainer": args.trainer or None,
            "version": edge.version,
        },
    )
    try:
        summary = agent.run()
    finally:
        source.close()
    if args.summary_out is not None:
        args.summary_out.write_text(json.dumps(summary, indent=2) + "\n")
    log.info("agent stopped", extra={k: summary[k] for k in ("frames_inferred", "model_version")})
    return 0


def _open_first(
    spec: str, width: int | None, height: int | None, network: bool, stop: threading.Event
) -> Any:
    """The source, opened; a network camera that is not there yet is tried again with backoff
    (the agent stays up, not ready), anything else that fails to open is an error."""
    from edgeadapt.video.source import open_source

    delay = 1.0
    while True:
        try:
            return open_source(spec, width=width, height=height)
        except Exception as exc:
            if not network:
                raise
            log.warning("cannot open the video source yet: %s; retrying in %.0f s", exc, delay)
        if stop.wait(delay):
            return None
        delay = min(delay * 2, 30.0)


if __name__ == "__main__":
    sys.exit(main())
