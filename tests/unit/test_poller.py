"""One trainer /status request as the operator makes it: authenticated, bounded, and every
failure an observation that says why."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiohttp
import pytest

from edgeadapt.controllers.observe import TrainerObservation
from edgeadapt.operator.poller import cluster_url, fetch

TOKEN = "ea1s.token"
BODY = {
    "trainer": "p-trainer-0",
    "phase": "serving",
    "devices": [{"id": "cam", "connected": True, "agent_in_step": True}],
    "refused": {"intruder": {"reason": "Unauthenticated", "time": 1.0}},
}


LARGE = [
    {"id": f"cam-{i:04d}", "connected": True, "history": [[t, 50.0, 40.0] for t in range(400)]}
    for i in range(2000)
]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._send(401, b"no")
            elif self.path == "/status":
                self._send(200, json.dumps(BODY).encode())
            elif self.path == "/slow":
                time.sleep(2)
                self._send(200, b"{}")
            elif self.path == "/list":
                self._send(200, b"[1, 2]")
            elif self.path in ("/large", "/huge"):
                # A trainer with many devices: a body written in pieces, with pauses, as a
                # busy server sends it.
                views = 200 if self.path == "/large" else 2000
                body = json.dumps({**BODY, "devices": LARGE[:views]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for i in range(0, len(body), 16 * 1024):
                    self.wfile.write(body[i : i + 16 * 1024])
                    self.wfile.flush()
                    time.sleep(0.002)
            else:
                self._send(200, b"not json")

        def _send(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def get(url: str, token: str = TOKEN, timeout: float = 5.0) -> TrainerObservation:
    async def run() -> TrainerObservation:
        async with aiohttp.ClientSession() as session:
            return await fetch(session, url, token, timeout)

    return asyncio.run(run())


def test_an_answer_becomes_an_observation(server: str) -> None:
    obs = get(f"{server}/status")
    assert obs.serving
    assert obs.devices["cam"]["connected"] is True
    assert "intruder" in obs.refused


@pytest.mark.parametrize(
    ("path", "token", "timeout", "error"),
    [
        ("/status", "wrong", 5.0, "HTTP 401"),
        ("/slow", TOKEN, 0.5, "TimeoutError"),
        ("/garbage", TOKEN, 5.0, "JSONDecodeError"),
        ("/list", TOKEN, 5.0, "not a JSON object"),
    ],
)
def test_a_failure_is_an_unreachable_trainer_saying_why(
    server: str, path: str, token: str, timeout: float, error: str
) -> None:
    obs = get(f"{server}{path}", token, timeout)
    assert not obs.reachable
    assert not obs.serving
    assert error in obs.error


def test_a_large_answer_is_read_whole_and_an_oversized_one_refused(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    obs = get(f"{server}/large")
    assert obs.serving, obs.error
    assert len(obs.devices) == 200
    monkeypatch.setattr("edgeadapt.operator.poller.MAX_STATUS_BYTES", 4 * 1024 * 1024)
    too_large = get(f"{server}/huge")
    assert not too_large.reachable
    assert "too large" in too_large.error


def test_a_closed_port_is_unreachable() -> None:
    obs = get("http://127.0.0.1:9/status")
    assert not obs.reachable
    assert obs.error


def test_trainers_are_asked_at_their_stable_names() -> None:
    url = cluster_url("cluster.local")("ns", "pol", "pol-trainer-1")
    assert url == "http://pol-trainer-1.pol-trainer.ns.svc.cluster.local:9090/status"
