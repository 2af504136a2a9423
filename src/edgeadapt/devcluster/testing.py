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
