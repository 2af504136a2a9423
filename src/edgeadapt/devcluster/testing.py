"""Helpers for tests and benchmarks that drive a LocalCluster: the operator as a process,
bounded waits, and reading objects back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from edgeadapt.devcluster.cluster import REPO, LocalCluster, kubeconfig
from edgeadapt.procs import terminate

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25
) -> T:
    """Call ``probe`` until it returns something truthy; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def get(cluster: LocalCluster, resource: str, name: str, namespace: str) -> dict[str, Any] | None:
    out = cluster.kubectl("get", resource, name, "-n", namespace, "-o", "json", check=False)
    if out.returncode != 0:
        if "NotFound" in out.stderr:
            return None
        raise RuntimeError(out.stderr)
    obj: dict[str, Any] = json.loads(out.stdout)
    return obj


def condition_of(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


class OperatorProcess:
    """``python -m edgeadapt.operator`` against a cluster, as a child process."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        *,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.args = list(args)
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = os.environ | {
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": str(REPO / "src"),
            "PYTHONUNBUFFERED": "1",
        }
        env |= self.env
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgeadapt.operator", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def peak_rss_mb(self) -> float:
        """Peak resident memory so far (VmHWM), in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc status")

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None:
            return
        terminate(self.proc, timeout)
        self.proc = None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def service_account_kubeconfig(
    cluster: LocalCluster,
    path: Path,
    rules: Sequence[Mapping[str, Any]],
    *,
    namespace: str,
    name: str,
    duration: str = "4h",
) -> Path:
    """A ServiceAccount bound cluster-wide to exactly ``rules`` (a ClusterRole of its name), and
    at ``path`` a kubeconfig that authenticates as it with a token."""
    cluster.apply(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": namespace},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": name},
                "rules": list(rules),
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": name,
                },
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            },
        ]
    )
    return token_kubeconfig(cluster, path, namespace=namespace, name=name, duration=duration)


def token_kubeconfig(
    cluster: LocalCluster, path: Path, *, namespace: str, name: str, duration: str = "4h"
) -> Path:
    """At ``path``, a kubeconfig that authenticates as the existing ServiceAccount ``name`` (the
    chart's, say) with a token of ``duration``."""
    token = cluster.kubectl(
        "create", "token", name, "-n", namespace, f"--duration={duration}"
    ).stdout.strip()
    ca = (cluster.workdir / "pki" / "ca.crt").read_bytes()
    path.write_text(json.dumps(kubeconfig(cluster.server, ca, name, token=token)))
    return path


def persistent_volumes(count: int, prefix: str = "local-pv") -> list[dict[str, Any]]:
    """Statically provisioned volumes, so that claims without a storage class bind (the local
    control plane has no provisioner)."""
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{prefix}-{i}"},
            "spec": {
                "capacity": {"storage": "100Gi"},
                "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Delete",
                "hostPath": {"path": f"/var/lib/edgeadapt-test/{prefix}-{i}"},
            },
        }
        for i in range(count)
    ]


GATING_SUFFIX = ".gating"


class SimulatedTrainers:
    """Answers the operator's ``/status`` requests for trainers a kwok cluster only pretends to
    run (its pods have no containers).

    Every EdgeDevice whose status names the asked trainer pod is reported connected and running
    the trainer's current model, whose version grows by one per ``update_interval`` seconds, at
    a steady accuracy and link use. The bindings come from a watch of the EdgeDevices
    (``refresh``: the pause before watching again after an error). The operator is pointed here
    with ``EDGEADAPT_TRAINER_STATUS_URL`` (``env``). ``refuse`` lists devices reported as refused
    (a wrong token); ``gpu`` maps a trainer pod to the NVML figures its ``/status`` shows (none:
    a trainer without a GPU)."""

    def __init__(
        self, cluster: LocalCluster, *, refresh: float = 2.0, update_interval: float = 10.0
    ) -> None:
        import threading

        self.cluster = cluster
        self.refresh = refresh
        self.update_interval = update_interval
        self.refuse: set[str] = set()
        self.gpu: dict[str, dict[str, Any]] = {}
        self.requests = 0
        self.unauthorized = 0
        self._trainer_of: dict[tuple[str, str], str] = {}  # (namespace, device) -> trainer pod
        self._lock = threading.Lock()
        self._started = time.time()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.server: Any = None

    def start(self) -> SimulatedTrainers:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        sim = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                sim.requests += 1
                if len(parts) != 3 or parts[2] != "status":
                    self._send(404, b"{}")
                    return
                if not self.headers.get("Authorization", "").startswith("Bearer ea1s."):
                    sim.unauthorized += 1
                    self._send(401, b"a bearer token is required\n")
                    return
                if parts[1].endswith(GATING_SUFFIX):  # a ModelZoo's gating service
                    zoo = parts[1].removesuffix(GATING_SUFFIX)
                    self._send(200, json.dumps(sim.zoo_status(parts[0], zoo)).encode())
                    return
                self._send(200, json.dumps(sim.status(parts[0], parts[1])).encode())

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._threads = [
            threading.Thread(target=self.server.serve_forever, daemon=True),
            threading.Thread(target=self._watch, daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    @property
    def env(self) -> dict[str, str]:
        port = self.server.server_address[1]
        base = f"http://127.0.0.1:{port}/{{namespace}}"
        return {
            "EDGEADAPT_TRAINER_STATUS_URL": f"{base}/{{pod}}/status",
            "EDGEADAPT_GATING_STATUS_URL": f"{base}/{{zoo}}{GATING_SUFFIX}/status",
        }

    def zoo_status(self, namespace: str, zoo: str) -> dict[str, Any]:
        """A gating service's figures: one admission per ``update_interval``, none pruned."""
        admitted = 1 + int((time.time() - self._started) / self.update_interval)
        return {
            "phase": "serving",
            "zoo_version": admitted + 1,
            "experts": admitted,
            "admitted": admitted,
            "pruned": 0,
            "selections": 4 * admitted,
            "last_admission_unix": self._started + (admitted - 1) * self.update_interval,
            "admitting": False,
        }

    def _watch(self) -> None:
        """Keep the device -> trainer bindings from a list and watch of EdgeDevices."""
        import ssl
        import urllib.request

        pki = self.cluster.workdir / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        url = f"{self.cluster.server}/apis/edgeadapt.io/v1alpha1/edgedevices"

        def note(item: dict[str, Any], gone: bool = False) -> None:
            meta = item["metadata"]
            key = (meta["namespace"], meta["name"])
            trainer = None if gone else (item.get("status") or {}).get("trainer")
            with self._lock:
                if trainer:
                    self._trainer_of[key] = trainer
                else:
                    self._trainer_of.pop(key, None)

        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(url, context=context, timeout=60) as resp:
                    listing = json.loads(resp.read())
                with self._lock:
                    self._trainer_of.clear()
                for item in listing.get("items") or []:
                    note(item)
                version = listing["metadata"]["resourceVersion"]
                watch = f"{url}?watch=1&resourceVersion={version}&timeoutSeconds=120"
                with urllib.request.urlopen(watch, context=context, timeout=150) as stream:
                    for line in stream:
                        event = json.loads(line)
                        if event.get("type") == "ERROR":
                            break
                        note(event["object"], gone=event.get("type") == "DELETED")
                        if self._stop.is_set():
                            return
            except (OSError, ValueError, KeyError):
                self._stop.wait(self.refresh)

    def status(self, namespace: str, pod: str) -> dict[str, Any]:
        now = time.time()
        version = 1 + int((now - self._started) / self.update_interval)
        with self._lock:
            bound = [d for (ns, d), t in self._trainer_of.items() if ns == namespace and t == pod]
        devices = [
            {
                "id": name,
                "adapt": True,
                "connected": True,
                "model_version": version,
                "agent_model_version": version,
                "model_checksum": "00c0ffee",
                "agent_model_checksum": "00c0ffee",
                "agent_in_step": True,
                "miou_teacher_last_60s": 80.0,
                "uplink_kbps": 120.0,
                "downlink_kbps": 150.0,
                "sampling_rate_fps": 0.5,
                "last_update_time": now,
            }
            for name in bound
            if name not in self.refuse
        ]
        refused = {d: {"reason": "Unauthenticated", "time": now} for d in self.refuse}
        gpu = self.gpu.get(pod) or {"available": False, "reason": "training on CPU"}
        return {
            "trainer": pod,
            "phase": "serving",
            "devices": devices,
            "refused": refused,
            "gpu": gpu,
        }

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
