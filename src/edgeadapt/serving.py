"""What the gRPC processes (trainer, gating service) share: binding a port with or without TLS,
marking the health service, and running until SIGTERM or SIGINT with a graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2

log = logging.getLogger(__name__)


class Server(Protocol):
    listen: str

    async def start(self) -> int: ...

    async def stop(self, grace: float = 5.0) -> None: ...


def bind(server: Any, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    """Add the listening port (TLS when ``credentials``); an unusable address raises."""
    if credentials is None:
        port = int(server.add_insecure_port(listen))
    else:
        port = int(server.add_secure_port(listen, credentials))
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    return port


async def set_health(health: Any, names: Sequence[str], serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", *names):
        await health.set(name, status)


async def serve(
    server: Server,
    what: str,
    on_started: Callable[[int], None] | None = None,
    shutdown_timeout: float = 20.0,
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = await server.start()
    log.info("%s serving", what, extra={"port": port, "listen": server.listen})
    if on_started is not None:
        on_started(port)
    await stop.wait()
    log.info("shutting down")
    await asyncio.wait_for(server.stop(), shutdown_timeout)
    log.info("stopped")
