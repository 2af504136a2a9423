"""Start, use and stop a local control plane (see the package docstring)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeadapt.devcluster.node import NODE_PROCESSES, RealNode, RealNodeSpec, stop_containers
from edgeadapt.devcluster.node import clean_up as node_clean_up
from edgeadapt.devcluster.node import node_ip as machine_ip
from edgeadapt.procs import free_port

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
TOOLS_SCRIPT = REPO / "scripts" / "k8s-tools.sh"
KWOK_CONFIG = REPO / "tools" / "k8s" / "kwok" / "kwok.yaml"
PROGRAMS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
    "helm",
)
# The real node's programs (scripts/k8s-tools.sh builds them on demand).
NODE_PROGRAMS = ("kubelet", "kube-proxy", "coredns", "pause")
EDGE_ROLE = "node-role.kubernetes.io/edge"
GPU = "nvidia.com/gpu"
# Users whose requests the audit log records (the operator's service account namespace).
AUDITED_GROUP = "system:serviceaccounts:edgeadapt-system"


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl or helm command; its message carries what it printed on stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or '').strip()[-3000:]}"


def build_tools(programs: Sequence[str] = PROGRAMS) -> Path:
    """Build (or find cached) programs; returns their folder. The first build takes minutes."""
    out = subprocess.run(
        ["bash", str(TOOLS_SCRIPT), *programs],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class NodePool:
    """A group of simulated nodes: ``count`` nodes named ``<prefix>-<i>``."""

    prefix: str
    count: int
    kind: str  # "gpu" or "edge"
    gpus: int = 8
    pods: int = 110

    def manifests(self) -> list[dict[str, Any]]:
        nodes = []
        for i in range(self.count):
            labels = {
                "kubernetes.io/hostname": f"{self.prefix}-{i}",
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            }
            capacity: dict[str, str] = {"pods": str(self.pods)}
            taints: list[dict[str, str]] = []
            if self.kind == "gpu":
                labels |= {"nvidia.com/gpu.present": "true"}
                capacity |= {"cpu": "64", "memory": "512Gi", GPU: str(self.gpus)}
                taints.append({"key": GPU, "value": "present", "effect": "NoSchedule"})
            elif self.kind == "edge":
                labels |= {EDGE_ROLE: "", "node.kubernetes.io/instance-type": "jetson"}
                capacity |= {"cpu": "64", "memory": "128Gi"}
                taints.append({"key": EDGE_ROLE, "value": "", "effect": "NoSchedule"})
            else:
                capacity |= {"cpu": "16", "memory": "64Gi"}
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": f"{self.prefix}-{i}",
                        "labels": labels,
                        "annotations": {"kwok.x-k8s.io/node": "fake"},
                    },
                    "spec": {"taints": taints},
                    "status": {"capacity": capacity, "allocatable": capacity},
                }
            )
        return nodes


def default_nodes() -> list[NodePool]:
    """Two GPU nodes (8 GPUs each), three KubeEdge edge nodes, and one plain node for the
    operator's own Deployment."""
    return [
        NodePool("gpu", 2, "gpu"),
        NodePool("edge", 3, "edge"),
        NodePool("system", 1, "system"),
    ]


@dataclass
class LocalCluster:
    """One control plane whose files (certificates, kubeconfigs, etcd data, logs) live in
    ``workdir``."""

    workdir: Path
    bin_dir: Path | None = None
    api_port: int = 0
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # A real kubelet node (containerd, CNI, kube-proxy, CoreDNS) joins when this is set.
    real_node: RealNodeSpec | None = None
    node: RealNode | None = None
    node_ip: str | None = None
    # Build the project's images and import them into the real node.
    node_images: bool = True

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "logs" / "audit.log"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def bin(self, program: str) -> str:
        assert self.bin_dir is not None
        return str(self.bin_dir / program)

    # ------------------------------------------------------------------ lifecycle

    def start(self, nodes: Iterable[NodePool] | None = None, *, timeout: float = 180) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        if self.bin_dir is None:
            self.bin_dir = build_tools(PROGRAMS + (NODE_PROGRAMS if self.real_node else ()))
        self.api_port = self.api_port or free_port()
        self.node_ip = machine_ip() if self.real_node else None
        pki = self._pki()
        etcd_port, peer_port = free_port(), free_port()
        self._spawn(
            "etcd",
            [
                self.bin("etcd"),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--listen-metrics-urls=",
                "--quota-backend-bytes=4294967296",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._write_audit_policy()
        self._spawn(
            "kube-apiserver",
            [
                self.bin("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                *self._reachable_from_pods(),
                f"--secure-port={self.api_port}",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                # On top of the default chain: setting ownerReferences[].blockOwnerDeletion needs
                # update on the owner's finalizers subresource, as in hardened clusters.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                f"--audit-policy-file={self.workdir / 'audit-policy.yaml'}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-maxsize=0",
                "--profiling=false",
                "--event-ttl=1h",
                "--max-requests-inflight=800",
                "--max-mutating-requests-inflight=400",
            ],
        )
        self._wait_api(timeout)
        self._spawn(
            "kube-controller-manager",
            [
                self.bin("kube-controller-manager"),
                f"--kubeconfig={self.workdir / 'controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={self.workdir / 'controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={self.workdir / 'controller-manager.kubeconfig'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--concurrent-statefulset-syncs=10",
                "--profiling=false",
            ],
        )
        sched_config = self.workdir / "scheduler.yaml"
        sched_config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {
                        "kubeconfig": str(self.workdir / "scheduler.kubeconfig"),
                        "qps": 200,
                        "burst": 400,
                    },
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        self._spawn(
            "kube-scheduler",
            [
                self.bin("kube-scheduler"),
                f"--config={sched_config}",
                f"--authentication-kubeconfig={self.workdir / 'scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={self.workdir / 'scheduler.kubeconfig'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                "--profiling=false",
            ],
        )
        self._spawn(
            "kwok",
            [
                self.bin("kwok"),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={KWOK_CONFIG}",
                "--server-address=",
                "--tls-cert-file=",
            ],
        )
        self._write_state()
        self.wait_for(self._default_service_account_exists, timeout, "the default ServiceAccount")
        self.add_nodes(default_nodes() if nodes is None else nodes, timeout=timeout)
        if self.real_node is not None:
            assert self.node_ip is not None
            self.node = RealNode(self, self.real_node, self.node_ip)
            self.node.start(images=self.node_images)
            self._write_state()

    def _reachable_from_pods(self) -> list[str]:
        """Without a real node the API server listens on loopback only. With one, pods reach it
        at the node's address through the ``kubernetes`` Service, whose endpoint it keeps."""
        if self.node_ip is None:
            return [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
            ]
        return ["--bind-address=0.0.0.0", f"--advertise-address={self.node_ip}"]

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL after a grace period); a real node's
        containers, network and mounts are removed."""
        if self.node is not None or "kubelet" in self.processes:
            self._stop_node()
        for name in reversed(list(self.processes)):
            proc = self.processes[name]
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 15
        for proc in self.processes.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()
        if self.node is not None:
            node_clean_up(self.node.state())
        state = self.workdir / "cluster.json"
        if state.exists():
            state.unlink()

    def _stop_node(self) -> None:
        """The kubelet first (so that it restarts nothing), then the containers while containerd
        still runs."""
        for name in NODE_PROCESSES:
            proc = self.processes.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.node is not None:
            stop_containers(self.node.socket)

    @classmethod
    def stop_detached(cls, workdir: Path) -> bool:
        """Stop a cluster started by another process (``up``) from its recorded pids."""
        state = workdir / "cluster.json"
        if not state.exists():
            return False
        recorded = json.loads(state.read_text())
        pids: dict[str, int] = recorded["pids"]
        node = recorded.get("real_node")
        if node is not None:
            for name in NODE_PROCESSES:
                if name in pids:
                    _stop_pid(pids.pop(name))
            stop_containers(Path(node["socket"]))
        for pid in reversed(list(pids.values())):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for pid in pids.values():
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if node is not None:
            node_clean_up(node)
        state.unlink()
        return True

    # ------------------------------------------------------------------ use

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self._tool("kubectl", args, input=input, check=check, timeout=timeout)

    def helm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self._tool("helm", args, timeout=timeout)

    def _tool(
        self,
        program: str,
        args: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl or helm against this cluster; with ``check`` a failure raises
        :class:`KubectlError`, whose message carries the program's stderr."""
        out = subprocess.run(
            [self.bin(program), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if check and out.returncode != 0:
            raise KubectlError(out.returncode, out.args, out.stdout, out.stderr)
        return out

    def apply(
        self, manifests: Sequence[Mapping[str, Any]] | str, *, server_side: bool = False
    ) -> None:
        text = (
            manifests
            if isinstance(manifests, str)
            else json.dumps({"apiVersion": "v1", "kind": "List", "items": list(manifests)})
        )
        args = ["apply", "-f", "-"]
        if server_side:
            args += ["--server-side", "--force-conflicts"]
        self.kubectl(*args, input=text, timeout=600)

    def add_nodes(self, pools: Iterable[NodePool], *, timeout: float = 180) -> None:
        """Create simulated nodes and wait until kwok reports every one Ready."""
        manifests = [m for pool in pools for m in pool.manifests()]
        if not manifests:
            return
        self.apply(manifests)
        names = {m["metadata"]["name"] for m in manifests}
        self.wait_for(lambda: names <= self._ready_nodes(), timeout, f"{len(names)} nodes Ready")

    def wait_for(self, check: Any, timeout: float, what: str, interval: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_processes()
            if check():
                return
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")

    # ------------------------------------------------------------------ internals

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        logf = open(self.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115  (the child owns it)
        env = os.environ | {"GOMAXPROCS": "2"} | dict(env or {})
        self.processes[name] = subprocess.Popen(
            argv, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        logf.close()

    def _check_processes(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                tail = (self.workdir / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def _wait_api(self, timeout: float) -> None:
        def healthy() -> bool:
            out = self.kubectl("get", "--raw=/readyz", check=False, timeout=10)
            return out.returncode == 0 and out.stdout.strip() == "ok"

        self.wait_for(healthy, timeout, "kube-apiserver /readyz")

    def _default_service_account_exists(self) -> bool:
        return self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0

    def _ready_nodes(self) -> set[str]:
        out = self.kubectl("get", "nodes", "-o", "json", check=False, timeout=60)
        if out.returncode != 0:
            return set()
        ready = set()
        for node in json.loads(out.stdout)["items"]:
            for cond in node.get("status", {}).get("conditions", []):
                if cond["type"] == "Ready" and cond["status"] == "True":
                    ready.add(node["metadata"]["name"])
        return ready

    def _write_state(self) -> None:
        (self.workdir / "cluster.json").write_text(
            json.dumps(
                {
                    "server": self.server,
                    "kubeconfig": str(self.kubeconfig),
                    "bin_dir": str(self.bin_dir),
                    "pids": {n: p.pid for n, p in self.processes.items()},
                    "real_node": self.node.state() if self.node is not None else None,
                },
                indent=2,
            )
        )

    def _write_audit_policy(self) -> None:
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived", "ResponseStarted"],
            "rules": [
                {"level": "Metadata", "userGroups": [AUDITED_GROUP]},
                {"level": "None"},
            ],
        }
        (self.workdir / "audit-policy.yaml").write_text(json.dumps(policy))

    def _pki(self) -> Path:
        """CA, serving certificate, client certificates, service-account keys, kubeconfigs."""
        pki = self.workdir / "pki"
        if not (pki / "ca.crt").exists():
            pki.mkdir(parents=True, exist_ok=True)
            _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                     "-keyout", pki / "ca.key", "-out", pki / "ca.crt",
                     "-subj", "/CN=edgeadapt-local-ca")  # fmt: skip
            node_san = f"IP:{self.node_ip}," if self.node_ip else ""
            _cert(pki, "apiserver", "/CN=kube-apiserver",
                  f"subjectAltName=IP:127.0.0.1,{node_san}IP:10.96.0.1,DNS:localhost,"
                  "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
                  "DNS:kubernetes.default.svc.cluster.local")  # fmt: skip
            _cert(pki, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet")
            _cert(pki, "admin", "/O=system:masters/CN=edgeadapt-admin")
            _cert(pki, "controller-manager", "/CN=system:kube-controller-manager")
            _cert(pki, "scheduler", "/CN=system:kube-scheduler")
            _openssl("genrsa", "-out", pki / "sa.key", "2048")
            _openssl("rsa", "-in", pki / "sa.key", "-pubout", "-out", pki / "sa.pub")
        for user, path in (
            ("admin", self.kubeconfig),
            ("controller-manager", self.workdir / "controller-manager.kubeconfig"),
            ("scheduler", self.workdir / "scheduler.kubeconfig"),
        ):
            path.write_text(
                json.dumps(
                    kubeconfig(
                        self.server,
                        (pki / "ca.crt").read_bytes(),
                        user,
                        cert=(pki / f"{user}.crt").read_bytes(),
                        key=(pki / f"{user}.key").read_bytes(),
                    ),
                    indent=2,
                )
            )
        return pki


def kubeconfig(
    server: str,
    ca: bytes,
    user: str,
    *,
    cert: bytes | None = None,
    key: bytes | None = None,
    token: str | None = None,
    namespace: str = "default",
) -> dict[str, Any]:
    creds: dict[str, str] = {}
    if cert is not None and key is not None:
        creds["client-certificate-data"] = base64.b64encode(cert).decode()
        creds["client-key-data"] = base64.b64encode(key).decode()
    if token is not None:
        creds["token"] = token
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "edgeadapt-local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": creds}],
        "contexts": [
            {
                "name": "edgeadapt-local",
                "context": {"cluster": "edgeadapt-local", "user": user, "namespace": namespace},
            }
        ],
        "current-context": "edgeadapt-local",
    }


def _openssl(*args: str | Path) -> None:
    if shutil.which("openssl") is None:  # Debian's package; the machine may lack the CLI
        log.warning("openssl not found; installing Debian's openssl package")
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "openssl"], check=True, capture_output=True
        )
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _cert(pki: Path, name: str, subject: str, ext: str | None = None) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", pki / f"{name}.key",
             "-out", pki / f"{name}.csr", "-subj", subject)  # fmt: skip
    args: list[str | Path] = ["x509", "-req", "-in", pki / f"{name}.csr", "-CA", pki / "ca.crt",
                              "-CAkey", pki / "ca.key", "-CAcreateserial", "-days", "3650",
                              "-out", pki / f"{name}.crt"]  # fmt: skip
    if ext:
        extfile = pki / f"{name}.ext"
        extfile.write_text(ext + "\n")
        args += ["-extfile", extfile]
    _openssl(*args)


def _stop_pid(pid: int, grace: float = 15) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (an exited process that nobody has reaped yet does not)."""
    try:
        os.kill(pid, 0)
        status = Path(f"/proc/{pid}/status").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return "\nState:\tZ" not in status
