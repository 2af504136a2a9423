"""``python -m edgeadapt.trainer``: serve devices' adaptation streams.

    python -m edgeadapt.trainer --state-dir DIR --token-secret-file F \\
        --tls-cert server.crt --tls-key server.key [--client-ca ca.crt] \\
        [--listen 0.0.0.0:50051] [--http-listen 0.0.0.0:9090]

Models: ``--teacher-model``/``--student-model`` name each by architecture and weights source
(``ARCH=synthetic:PROFILE``, ``ARCH=torchvision:ENUM.NAME``, ``ARCH=https://...#sha256=HEX`` or
``ARCH=file:/path``), fetched, verified or trained once into ``--models-dir``; ``--teacher`` and
``--student`` name checkpoint files directly; without either, the cached models of
``--profile`` are used (trained first if missing). The HTTP endpoint opens first: ``/healthz``
answers while models are provisioned, ``/readyz`` once the trainer serves. The student the
devices start from is served to agents that have none (``GetStartingModel``). Serving without
TLS or without tokens needs ``--insecure``; with a token secret, ``/status`` asks for the bearer
token derived from it (``edgeadapt.stream.auth.status_token``).

``--config`` reads the JSON the operator renders from an AdaptationPolicy (its ``ams`` and
``sampling`` parameters become this trainer's defaults; flags given explicitly still win).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from edgeadapt.adapt.ams import AMSConfig
from edgeadapt.api.launch import (
    EDGESYNC_UPLOAD_FRACTION,
    STRATEGIES,
    STUDENT_ARCHS,
    TEACHER_ARCHS,
    ModelRef,
    uses_edgesync,
    uses_recl,
)
from edgeadapt.telemetry import HTTPEndpoint, setup_logging, write_ready_file
from edgeadapt.trainer.scheduler import POLICIES

log = logging.getLogger("edgeadapt.trainer")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edgeadapt.trainer", description=__doc__)
    p.add_argument("--listen", default="0.0.0.0:50051", help="gRPC address (port 0: any free)")
    p.add_argument(
        "--http-listen", default="0.0.0.0:9090", help="/metrics, /healthz and /status address"
    )
    p.add_argument("--config", type=Path, help="AdaptationPolicy parameters (policy.json)")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("EDGEADAPT_STATE_DIR", "/var/lib/edgeadapt/state")),
        help="per-device state (a PVC in a cluster; env EDGEADAPT_STATE_DIR)",
    )
    p.add_argument(
        "--teacher-model",
        type=lambda v: ModelRef.parse(v, TEACHER_ARCHS),
        help="ARCH=WEIGHTS: the teacher by architecture and weights source",
    )
    p.add_argument(
        "--student-model",
        type=lambda v: ModelRef.parse(v, STUDENT_ARCHS),
        help="ARCH=WEIGHTS: the student the devices start from",
    )
    p.add_argument(
        "--models-dir", type=Path, help="where provisioned models are kept (a volume in a cluster)"
    )
    p.add_argument("--teacher", type=Path, help="teacher checkpoint")
    p.add_argument("--student", type=Path, help="student checkpoint the devices start from")
    p.add_argument("--profile", default="bench", help="cached model profile without --teacher")
    p.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    p.add_argument("--client-ca", type=Path, help="require client certificates signed by this CA")
    p.add_argument("--token-secret-file", type=Path, help="secret the device tokens derive from")
    p.add_argument("--insecure", action="store_true", help="allow serving without TLS or tokens")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--t-update", type=float, default=AMSConfig.t_update)
    p.add_argument(
        "--t-horizon",
        type=float,
        default=AMSConfig.t_horizon,
        help="seconds of recent frames training draws from (AMS phases; recl retraining jobs)",
    )
    p.add_argument("--iterations", type=int, default=AMSConfig.iterations, help="AMS K")
    p.add_argument(
        "--gamma",
        type=float,
        default=AMSConfig.gamma,
        help="AMS's update fraction; under recl, of a retraining job's change a candidate keeps",
    )
    p.add_argument("--lr", type=float, default=AMSConfig.lr)
    p.add_argument("--batch-size", type=int, default=AMSConfig.batch_size)
    p.add_argument("--r-min", type=float, default=AMSConfig.r_min, help="lowest sampling fps")
    p.add_argument("--r-max", type=float, default=AMSConfig.r_max, help="highest sampling fps")
    p.add_argument("--phi-target", type=float, default=AMSConfig.phi_target, help="ASR target")
    p.add_argument(
        "--adaptive-interval", choices=("Enabled", "Disabled"), default="Enabled", help="ATR"
    )
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="ams",
        help="ams: sparse streaming; recl: zoo reuse and retraining per window; ams+recl: recl"
        " whose retraining streams as sparse updates within windows; edgesync: upload filter,"
        " urgency-first training, whole-model updates; ams+edgesync: with AMS's sparse updates",
    )
    p.add_argument(
        "--window-seconds", type=float, default=30.0, help="RECL's window T (capture time)"
    )
    p.add_argument(
        "--scene-drop-points",
        type=float,
        default=0.0,
        help="strategy recl: a fall of this many mIoU points in the device's model's accuracy"
        " is a scene change, which selects at once rather than at the window's end (0, the"
        " default: never)",
    )
    p.add_argument(
        "--switch-margin-points",
        type=float,
        default=2.0,
        help="strategies recl and ams+recl: a zoo expert replaces the device's own models only"
        " when it beats them by this many mIoU points (%(default)g; 0: RECL's safety checker)",
    )
    p.add_argument(
        "--scheduler",
        choices=POLICIES,
        help="who trains next: round-robin (AMS), micro-window (RECL Algorithm 1), urgency"
        " (EdgeSync); default urgency for the edgesync strategies, else round-robin",
    )
    p.add_argument(
        "--upload-fraction",
        type=float,
        help="EdgeSync's sample filter: the fraction of each sampled batch the agents upload"
        f" (default {EDGESYNC_UPLOAD_FRACTION} for the edgesync strategies, else 1: all)",
    )
    p.add_argument(
        "--micro-window-seconds",
        type=float,
        default=1.0,
        help="compute seconds of one slice (micro-window, urgency)",
    )
    p.add_argument(
        "--gpu-memory-headroom-mb",
        type=float,
        default=1024,
        help="below this much free GPU memory the trainer reports itself full (no new devices)",
    )
    p.add_argument("--gating", help="HOST:PORT of the ModelZoo's gating service (RECL)")
    p.add_argument("--gating-ca", type=Path, help="CA that signs the gating service's certificate")
    p.add_argument("--gating-token-file", type=Path, help="this trainer's token for the zoo")
    p.add_argument(
        "--gating-caller", help="the id the gating token is for (default: the trainer's name)"
    )
    p.add_argument("--gating-server-name", help="TLS name to expect from the gating service")
    p.add_argument(
        "--input-size",
        help="WxH uploaded frames are brought to (default: the student's training size)",
    )
    p.add_argument(
        "--max-batch-decoded-mb",
        type=float,
        default=1024,
        help="refuse a sample batch whose frames decode to more than this (MiB, RGB)",
    )
    p.add_argument(
        "--max-queued-mb",
        type=float,
        default=256,
        help="decoded frames waiting for the worker, all devices (MiB); uploads wait beyond",
    )
    p.add_argument(
        "--checkpoint-interval",
        type=float,
        default=60.0,
        help="seconds between checkpoints of a device's whole state (updates are logged first)",
    )
    p.add_argument(
        "--idle-evict-after",
        type=float,
        default=600.0,
        help="seconds after which a disconnected device is checkpointed and dropped from memory",
    )
    p.add_argument("--ready-file", help="write the bound ports here as JSON once serving")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


# AdaptationPolicy field -> trainer option
POLICY_FIELDS = {
    ("ams", "tUpdateSeconds"): "t_update",
    ("ams", "tHorizonSeconds"): "t_horizon",
    ("ams", "iterations"): "iterations",
    ("ams", "gammaFraction"): "gamma",
    ("ams", "learningRate"): "lr",
    ("ams", "adaptiveInterval"): "adaptive_interval",
    ("sampling", "rMinFps"): "r_min",
    ("sampling", "rMaxFps"): "r_max",
    ("sampling", "phiTarget"): "phi_target",
    ("sampling", "uploadFraction"): "upload_fraction",
    ("recl", "windowSeconds"): "window_seconds",
    ("recl", "sceneDropPoints"): "scene_drop_points",
    ("recl", "switchMarginPoints"): "switch_margin_points",
    ("scheduler", "policy"): "scheduler",
    ("scheduler", "microWindowSeconds"): "micro_window_seconds",
}


def policy_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """Trainer option defaults from the operator's rendering of an AdaptationPolicy."""
    strategy = str(config.get("strategy", "ams"))
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: this trainer implements {', '.join(STRATEGIES)}")
    out: dict[str, Any] = {"strategy": strategy}
    policy = (config.get("scheduler") or {}).get("policy") or "round-robin"
    if policy not in POLICIES:
        raise ValueError(
            f"scheduler policy {policy!r}: this trainer implements {', '.join(POLICIES)}"
        )
    for (section, key), option in POLICY_FIELDS.items():
        value = (config.get(section) or {}).get(key)
        if value is not None:
            out[option] = value
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config is not None:
        config = json.loads(first.config.read_text())
        parser.set_defaults(**policy_defaults(config))
    args = parser.parse_args(argv)
    edgesync = uses_edgesync(args.strategy)
    if args.scheduler is None:
        args.scheduler = "urgency" if edgesync else "round-robin"
    if args.upload_fraction is None:
        args.upload_fraction = EDGESYNC_UPLOAD_FRACTION if edgesync else 1.0
    return args


TERMINATION_LOG = Path("/dev/termination-log")


def _terminate_with(message: str) -> None:
    """Leave ``message`` where Kubernetes shows it as the container's termination reason."""
    log.error("%s", message)
    with contextlib.suppress(OSError):  # not in a pod
        TERMINATION_LOG.write_text(message[-4096:])


def _check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, if anything."""
    problems = [
        ((args.tls_cert is None) != (args.tls_key is None), "--tls-cert and --tls-key go together"),
        (
            (args.tls_cert is None or args.token_secret_file is None) and not args.insecure,
            "refusing to serve without TLS and device tokens; pass --insecure to allow it",
        ),
        (
            uses_recl(args.strategy) and not args.gating,
            f"strategy {args.strategy} needs --gating (the ModelZoo's gating service)",
        ),
        (
            bool(args.gating) and args.gating_ca is None and not args.insecure,
            "--gating needs --gating-ca (or --insecure)",
        ),
        (args.window_seconds <= 0, "--window-seconds must be positive"),
        (
            not 0 <= args.scene_drop_points <= 100,
            "--scene-drop-points must be between 0 and 100",
        ),
        (
            not 0 <= args.switch_margin_points < 100,
            "--switch-margin-points must be at least 0 and below 100",
        ),
        (args.micro_window_seconds <= 0, "--micro-window-seconds must be positive"),
        (
            args.upload_fraction is not None and not 0 < args.upload_fraction <= 1,
            "--upload-fraction must be in (0, 1]",
        ),
        (
            bool(args.teacher_model or args.student_model) and args.models_dir is None,
            "--teacher-model and --student-model need --models-dir",
        ),
    ]
    return next((message for bad, message in problems if bad), None)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as exc:
        setup_logging()
        log.error("%s", exc)
        return 2
    setup_logging(args.log_format, args.verbose, "trainer")
    problem = _check_args(args)
    if problem is not None:
        log.error("%s", problem)
        return 2

    from edgeadapt.stream.auth import load_secret, status_token
    from edgeadapt.trainer.metrics import TrainerMetrics

    secret = load_secret(args.token_secret_file) if args.token_secret_file else None
    trainer_id = os.environ.get("EDGEADAPT_TRAINER_NAME") or socket.gethostname()
    metrics = TrainerMetrics()
    # The endpoint opens before the models load (training synthetic ones takes minutes): the
    # kubelet sees a live process, and /status says what it is doing.
    parts: dict[str, Any] = {"phase": "provisioning"}

    def status() -> dict[str, Any]:
        hub, server = parts.get("hub"), parts.get("server")
        if hub is None or server is None:
            return {"trainer": trainer_id, "phase": parts["phase"], "devices": []}
        return {
            "trainer": trainer_id,
            "phase": parts["phase"],
            "device": parts["device"],
            **hub.status(),
            "refused": server.servicer.refusals(),
        }

    def healthy() -> bool:
        hub = parts.get("hub")
        return parts["phase"] != "failed" and (hub is None or hub.healthy())

    http = HTTPEndpoint(
        args.http_listen,
        metrics.registry,
        status,
        healthy,
        ready=lambda: parts["phase"] == "serving" and healthy(),
        status_token=status_token(secret) if secret else None,
    )
    try:
        return _serve(args, parts, metrics, secret, trainer_id, http)
    finally:
        http.close()


def _serve(
    args: argparse.Namespace,
    parts: dict[str, Any],
    metrics: Any,
    secret: bytes | None,
    trainer_id: str,
    http: HTTPEndpoint,
) -> int:
    import torch

    from edgeadapt.models.cache import ensure_checkpoint
    from edgeadapt.models.provision import ProvisionError, provision
    from edgeadapt.models.train import pick_device
    from edgeadapt.models.zoo import (
        checkpoint_input_size,
        load_checkpoint_model,
        write_starting_checkpoint,
    )
    from edgeadapt.stream.tls import server_credentials
    from edgeadapt.trainer.gpu import GpuTelemetry
    from edgeadapt.trainer.hub import Hub, HubConfig
    from edgeadapt.trainer.recl import GatingClient, ReclConfig
    from edgeadapt.trainer.scheduler import SchedulerConfig
    from edgeadapt.trainer.server import TrainerServer, serve
    from edgeadapt.trainer.store import DeviceStore

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if device.type == "cpu":
        log.info("no CUDA device; training on CPU with %d thread(s)", args.threads)
    try:
        teacher_path = (
            provision(args.teacher_model, "teacher", args.models_dir)
            if args.teacher_model
            else args.teacher or ensure_checkpoint("teacher", args.profile)
        )
        student_path = (
            provision(args.student_model, "student", args.models_dir)
            if args.student_model
            else args.student or ensure_checkpoint("student", args.profile)
        )
        teacher = load_checkpoint_model(teacher_path)
        student = load_checkpoint_model(student_path)
    except (ProvisionError, OSError, ValueError) as exc:
        parts["phase"] = "failed"
        _terminate_with(f"cannot provision the models: {exc}")
        return 3
    if teacher.config.get("num_classes") != student.config.get("num_classes"):
        parts["phase"] = "failed"
        _terminate_with(
            f"the teacher predicts {teacher.config.get('num_classes')} classes and the student "
            f"{student.config.get('num_classes')}: they must label the same classes"
        )
        return 3
    if args.input_size:
        w, _, h = args.input_size.lower().partition("x")
        input_size: tuple[int, int] | None = (int(w), int(h))
    else:
        input_size = checkpoint_input_size(student_path)
    ams = AMSConfig(
        t_update=args.t_update,
        t_horizon=args.t_horizon,
        iterations=args.iterations,
        gamma=args.gamma,
        lr=args.lr,
        batch_size=args.batch_size,
        r_min=args.r_min,
        r_max=args.r_max,
        phi_target=args.phi_target,
        atr=args.adaptive_interval == "Enabled",
        # EdgeSync sends every trained parameter; the others AMS's gradient-guided sparse few.
        selection="full" if args.strategy == "edgesync" else "gradient",
    )
    config = HubConfig(
        ams=ams,
        input_size=input_size,
        max_batch_decoded_bytes=int(args.max_batch_decoded_mb * 2**20),
        max_queued_bytes=int(args.max_queued_mb * 2**20),
        checkpoint_interval=args.checkpoint_interval,
        idle_evict_after=args.idle_evict_after,
        recl=ReclConfig(
            args.strategy,
            args.window_seconds,
            lr=args.lr,
            batch_size=args.batch_size,
            scene_drop=args.scene_drop_points / 100,
            switch_margin=args.switch_margin_points / 100,
        )
        if uses_recl(args.strategy)
        else None,
        upload_fraction=args.upload_fraction,
        scheduler=SchedulerConfig(
            args.scheduler,
            iterations=args.iterations,
            micro_window=args.micro_window_seconds,
            round_cap=args.t_update,
        ),
    )
    gating = None
    if uses_recl(args.strategy):
        token = args.gating_token_file.read_text().strip() if args.gating_token_file else ""
        gating = GatingClient(
            args.gating,
            caller=args.gating_caller or trainer_id,
            token=token,
            ca_file=args.gating_ca,
            server_name=args.gating_server_name,
        )
    telemetry = GpuTelemetry.open(device, metrics, int(args.gpu_memory_headroom_mb * 2**20))
    hub = Hub(
        teacher,
        student,
        config,
        DeviceStore(args.state_dir),
        device,
        metrics,
        trainer_id=trainer_id,
        gating=gating,
        telemetry=telemetry,
    )
    credentials = (
        server_credentials(args.tls_cert, args.tls_key, args.client_ca) if args.tls_cert else None
    )
    try:
        starting = write_starting_checkpoint(student_path, args.models_dir or args.state_dir)
    except (OSError, ValueError) as exc:
        parts["phase"] = "failed"
        _terminate_with(f"cannot write the starting model for devices: {exc}")
        return 3
    server = TrainerServer(
        hub,
        args.listen,
        credentials,
        secret,
        starting_model=starting,
        client_identity=args.client_ca is not None,
    )
    parts.update(hub=hub, server=server, device=str(device))

    def started(port: int) -> None:
        parts["phase"] = "serving"
        write_ready_file(args.ready_file, grpc_port=port, http_port=http.port)

    asyncio.run(serve(server, started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
