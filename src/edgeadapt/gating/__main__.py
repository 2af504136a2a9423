"""``python -m edgeadapt.gating``: a ModelZoo's gating service (RECL's model selector).

    python -m edgeadapt.gating --zoo-dir DIR --arch ARCH --token-secret-file F \\
        --tls-cert server.crt --tls-key server.key [--listen 0.0.0.0:50052] \\
        [--http-listen 0.0.0.0:9090] [--top-k 10] [--alpha 0.02] [--gamma 5] [--eta 4] [--q 3000]

It keeps the zoo on ``--zoo-dir`` (the ModelZoo's claim) as versioned manifests, opens the
newest whole version (a crash mid-admission leaves the one before), and serves trainers over
TLS with tokens minted from the zoo's secret (``edgeadapt token``). ``/healthz`` answers once
the process runs, ``/readyz`` while it serves, ``/status`` shows the zoo (behind the bearer token
derived from the secret). Serving without TLS or tokens needs ``--insecure``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from edgeadapt.api.launch import STUDENT_ARCHS
from edgeadapt.telemetry import HTTPEndpoint, setup_logging, write_ready_file

log = logging.getLogger("edgeadapt.gating")

# The ModelZoo's studentArchitecture enum: every one of these is a model builder.
ZOO_ARCHS = ("deeplabv3_mobilenet_v3_large", *STUDENT_ARCHS)


def build_parser() -> argparse.ArgumentParser:
    from edgeadapt.recl.rules import ReclParams

    d = ReclParams()
    p = argparse.ArgumentParser(prog="python -m edgeadapt.gating", description=__doc__)
    p.add_argument("--zoo-dir", type=Path, required=True, help="the zoo's volume")
    p.add_argument("--arch", choices=ZOO_ARCHS, required=True, help="the experts' architecture")
    p.add_argument("--top-k", type=int, default=d.top_k, help="experts a selection returns")
    p.add_argument("--alpha", type=float, default=d.alpha, help="admission margin (mIoU)")
    p.add_argument("--gamma", type=int, default=d.gamma, help="queue length that admits")
    p.add_argument("--eta", type=int, default=d.eta, help="picks an expert needs in the last q")
    p.add_argument("--q", type=int, default=d.q, help="selections pruning looks back over")
    p.add_argument("--listen", default="0.0.0.0:50052", help="gRPC address (port 0: any free)")
    p.add_argument("--http-listen", default="0.0.0.0:9090", help="/metrics, /healthz, /status")
    p.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    p.add_argument("--token-secret-file", type=Path, help="secret the callers' tokens derive from")
    p.add_argument("--insecure", action="store_true", help="allow serving without TLS or tokens")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--fit-steps", type=int, default=200, help="gating training steps per admission")
    p.add_argument(
        "--history-size", type=int, default=512, help="frames the gating network learns from"
    )
    p.add_argument("--ready-file", help="write the bound ports here as JSON once serving")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format, args.verbose, "gating")
    if (args.tls_cert is None) != (args.tls_key is None):
        log.error("--tls-cert and --tls-key go together")
        return 2
    if (args.tls_cert is None or args.token_secret_file is None) and not args.insecure:
        log.error("refusing to serve without TLS and tokens; pass --insecure to allow it")
        return 2
    from prometheus_client import CollectorRegistry

    from edgeadapt.recl.rules import ReclParams
    from edgeadapt.stream.auth import load_secret, status_token

    try:
        params = ReclParams(
            top_k=args.top_k, alpha=args.alpha, gamma=args.gamma, eta=args.eta, q=args.q
        )
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    secret = load_secret(args.token_secret_file) if args.token_secret_file else None
    parts: dict[str, Any] = {"phase": "opening"}

    def status() -> dict[str, Any]:
        server = parts.get("server")
        zoo = server.servicer.status() if server is not None else {}
        return {"phase": parts["phase"], **zoo}

    http = HTTPEndpoint(
        args.http_listen,
        CollectorRegistry(),
        status,
        lambda: parts["phase"] != "failed",
        ready=lambda: parts["phase"] == "serving",
        status_token=status_token(secret) if secret else None,
    )
    try:
        return _serve(args, params, secret, parts, http)
    finally:
        http.close()


def _serve(
    args: argparse.Namespace,
    params: Any,
    secret: bytes | None,
    parts: dict[str, Any],
    http: HTTPEndpoint,
) -> int:
    import torch

    from edgeadapt.gating.server import GatingServer, serve
    from edgeadapt.recl.store import ZooCorruptError, ZooStore
    from edgeadapt.recl.zoo import Zoo
    from edgeadapt.stream.tls import server_credentials

    torch.set_num_threads(args.threads)
    try:
        zoo = Zoo(
            ZooStore(args.zoo_dir),
            arch=args.arch,
            params=params,
            history_size=args.history_size,
            fit_steps=args.fit_steps,
        )
    except (ZooCorruptError, ValueError, OSError) as exc:
        parts["phase"] = "failed"
        log.error("cannot open the zoo in %s: %s", args.zoo_dir, exc)
        return 3
    version = zoo.snapshot.version
    log.info("zoo open", extra={"zoo_version": version.version, "experts": len(version.experts)})
    credentials = server_credentials(args.tls_cert, args.tls_key) if args.tls_cert else None
    server = GatingServer(zoo, args.listen, credentials, secret)
    parts["server"] = server

    def started(port: int) -> None:
        parts["phase"] = "serving"
        write_ready_file(args.ready_file, grpc_port=port, http_port=http.port)

    asyncio.run(serve(server, started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
