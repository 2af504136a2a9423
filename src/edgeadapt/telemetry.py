"""What every long-running edgeadapt process exposes: logs, Prometheus metrics, health, status.

``HTTPEndpoint`` is a small threaded HTTP server with ``/metrics`` (Prometheus text format from
the process's registry), ``/healthz`` (200 while the process works, 503 once it needs a restart),
``/readyz`` (200 once it serves) and ``/status`` (the process's own JSON summary, which the
operator, the demo and the tests read; with a status token it answers only requests that present
it as a bearer token, since it names devices and their figures). ``setup_logging`` configures
the root logger for text or JSON lines; with JSON, fields passed through ``extra=`` become keys
of the line.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """The usual text line, with any ``extra`` fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")
        ]
        return f"{line} {' '.join(extras)}" if extras else line


def setup_logging(fmt: str = "text", verbose: bool = False, name: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        prefix = f"{name} " if name else ""
        handler.setFormatter(
            TextFormatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def parse_hostport(value: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return (host.strip("[]") or default_host), int(port)


class HTTPEndpoint:
    """``/metrics``, ``/healthz``, ``/readyz`` and ``/status`` on one port, served from a daemon
    thread. ``ready`` defaults to ``healthy``."""

    def __init__(
        self,
        listen: str,
        registry: CollectorRegistry,
        status: Callable[[], dict[str, Any]],
        healthy: Callable[[], bool] = lambda: True,
        *,
        ready: Callable[[], bool] | None = None,
        status_token: str | None = None,
    ) -> None:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(endpoint.registry))
                elif path == "/healthz":
                    ok = endpoint.healthy()
                    self._send(200 if ok else 503, "text/plain", b"ok\n" if ok else b"unhealthy\n")
                elif path == "/readyz":
                    ok = endpoint.ready()
                    self._send(200 if ok else 503, "text/plain", b"ok\n" if ok else b"not ready\n")
                elif path == "/status":
                    if not endpoint.authorized(self.headers.get("Authorization", "")):
                        self._send(401, "text/plain", b"a bearer token is required\n")
                        return
                    body = json.dumps(endpoint.status(), default=str).encode()
                    self._send(200, "application/json", body)
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.registry, self.status, self.healthy = registry, status, healthy
        self.ready = ready or healthy
        self.status_token = status_token
        host, port = parse_hostport(listen)
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="http-endpoint", daemon=True
        )
        self._thread.start()

    def authorized(self, header: str) -> bool:
        if self.status_token is None:
            return True
        return hmac.compare_digest(header.encode(), f"Bearer {self.status_token}".encode())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_ready_file(path: str | None, **ports: int) -> None:
    """Tell a parent process which ports were bound (``--listen ...:0`` picks free ones)."""
    if not path:
        return
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps({**ports, "pid": os.getpid(), "ts": time.time()}))
    tmp.replace(target)
