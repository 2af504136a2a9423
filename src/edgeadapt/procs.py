"""Child processes of a supervisor (the demo, the tests): start, wait until ready, query, stop.

A child writes a ready file (``--ready-file``, JSON with the ports it bound) once it serves; the
supervisor reads its ``/status`` over HTTP and stops it with SIGTERM, then SIGKILL (or kills it
outright, as a crash would, and reads its peak memory from ``/proc``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeadapt.api.launch import AgentLaunch, GatingLaunch, TrainerLaunch

if TYPE_CHECKING:
    from edgeadapt.stream.tls import PKI


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    ready_file: Path
    log_file: Path
    http_port: int = 0
    grpc_port: int = 0
    status_token: str | None = None  # the bearer token its /status asks for


def _python() -> list[str]:
    return [sys.executable, "-m"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def start(name: str, module: str, args: list[str], workdir: Path) -> Proc:
    ready = workdir / f"{name}.ready.json"
    ready.unlink(missing_ok=True)  # a previous process of the same name
    log_file = workdir / f"{name}.log"
    with open(log_file, "ab") as out:
        popen = subprocess.Popen(
            [*_python(), module, *args, "--ready-file", str(ready)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,
        )
    return Proc(name, popen, ready, log_file)


def wait_ready(proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.ready_file.exists():
            info = json.loads(proc.ready_file.read_text())
            proc.http_port = int(info.get("http_port", 0))
            proc.grpc_port = int(info.get("grpc_port", 0))
            return
        if proc.popen.poll() is not None:
            tail = proc.log_file.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{tail}")
        time.sleep(0.1)
    raise TimeoutError(f"{proc.name} not ready after {timeout:.0f} s (log: {proc.log_file})")


def get_json(
    port: int, path: str = "/status", timeout: float = 2.0, token: str | None = None
) -> dict[str, Any] | None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data
    except (OSError, ValueError):
        return None


def terminate(popen: subprocess.Popen[Any], timeout: float = 20.0) -> float:
    """SIGTERM, wait; SIGKILL after ``timeout``. Returns the seconds it took to exit."""
    t0 = time.monotonic()
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
    return time.monotonic() - t0


def stop(proc: Proc, timeout: float = 20.0) -> float:
    return terminate(proc.popen, timeout)


def kill(proc: Proc, timeout: float = 10.0) -> None:
    """SIGKILL, as a crash or an OOM kill would end it, and reap it."""
    if proc.popen.poll() is None:
        proc.popen.kill()
    proc.popen.wait(timeout)


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set so far (VmHWM, else VmRSS), in MB; None once it is gone.

    The kernel keeps the high-water mark, so sampling it now and then misses no short spike, as
    long as it is read before the process is killed.
    """
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    for key in ("VmHWM", "VmRSS"):
        if key in fields:  # "  123456 kB"
            return int(fields[key].split()[0]) / 1024
    return None  # a zombie has no memory left


def free_port() -> int:
    """A TCP port free on loopback now, for a process that must keep its port across restarts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Credentials:
    """A development PKI and device-token secret on disk: what a trainer serves with, what its
    agents trust and present."""

    pki: PKI
    secret_file: Path
    secret: bytes

    def token(self, device_id: str) -> str:
        from edgeadapt.stream.auth import mint_token

        return mint_token(self.secret, device_id)

    @property
    def status_token(self) -> str:
        from edgeadapt.stream.auth import status_token

        return status_token(self.secret)


def dev_credentials(folder: Path) -> Credentials:
    """A fresh CA with server and client certificates (``folder/pki``) and a token secret
    (``folder/token-secret``, mode 0600)."""
    from edgeadapt.stream.auth import new_secret
    from edgeadapt.stream.tls import write_dev_pki

    folder.mkdir(parents=True, exist_ok=True)
    pki = write_dev_pki(folder / "pki")
    secret = new_secret().hex().encode()
    secret_file = folder / "token-secret"
    secret_file.write_bytes(secret)
    secret_file.chmod(0o600)
    return Credentials(pki, secret_file, secret)


def start_trainer(
    workdir: Path,
    *,
    state_dir: Path,
    teacher: Path,
    student: Path,
    credentials: Credentials,
    listen: str = "127.0.0.1:0",
    extra: Sequence[str] = (),
    name: str = "trainer",
) -> Proc:
    """A trainer on loopback with TLS and tokens, its HTTP endpoint on a free port."""
    launch = TrainerLaunch(
        state_dir=str(state_dir),
        teacher_file=str(teacher),
        student_file=str(student),
        listen=listen,
        http_listen="127.0.0.1:0",
        tls_cert=str(credentials.pki.server_cert),
        tls_key=str(credentials.pki.server_key),
        token_key_file=str(credentials.secret_file),
    )
    proc = start(name, launch.MODULE, [*launch.args(), *extra], workdir)
    proc.status_token = credentials.status_token
    return proc


def start_gating(
    workdir: Path,
    *,
    zoo_dir: Path,
    arch: str,
    credentials: Credentials,
    listen: str = "127.0.0.1:0",
    extra: Sequence[str] = (),
    name: str = "gating",
    **params: float,
) -> Proc:
    """A gating service on loopback with TLS and tokens (``params``: top_k, alpha, gamma, ...)."""
    launch = GatingLaunch(
        zoo_dir=str(zoo_dir),
        arch=arch,
        listen=listen,
        http_listen="127.0.0.1:0",
        tls_cert=str(credentials.pki.server_cert),
        tls_key=str(credentials.pki.server_key),
        token_key_file=str(credentials.secret_file),
        **params,  # type: ignore[arg-type]
    )
    proc = start(name, launch.MODULE, [*launch.args(), *extra], workdir)
    proc.status_token = credentials.status_token
    return proc


def start_agent(
    launch: AgentLaunch, workdir: Path, name: str | None = None, extra: Sequence[str] = ()
) -> Proc:
    """An edge agent as ``launch`` describes it (its ready file is added here), with ``extra``
    development flags the operator never renders (such as ``--t-update``)."""
    return start(name or launch.device_id, launch.MODULE, [*launch.args(), *extra], workdir)
