"""A real node for the local control plane: containerd, runc and CNI under a kubelet built from the
pinned Kubernetes module, kube-proxy for Services and CoreDNS for cluster DNS.

Layout under the cluster folder ``<dir>``:

- ``node/containerd/``: the runtime's config, state and socket. Its image store (``root``) is the
  machine's ``<cache>/containerd``, so that the project's images, gigabytes of torch, are imported
  once per content key rather than per cluster; one cluster at a time may use it.
- ``node/cni/``: a bridge network (``edgeadapt0``, pod CIDR :data:`POD_CIDR`, host-local IPAM) of
  Debian's CNI plugins. Pods reach the node, the API server and each other; a firewall chain
  drops anything they would forward off the bridge, and nothing is masqueraded.
- ``node/kubelet/``: the kubelet's config, certificates (client ``system:node:<name>``, serving
  certificate signed by the cluster CA) and root dir (cgroupfs driver, swap allowed).
- ``node/proxy``, ``node/dns``: kube-proxy (iptables mode) and CoreDNS, which serves
  ``cluster.local`` on the node address behind the ``kube-dns`` Service at :data:`DNS_IP`.
- ``node/volumes``: the directories of the ``local-path`` storage class's volumes.

Every step waits with a deadline and fails with :class:`NodeError`, naming the step and its log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeadapt.devcluster import images as images_mod
from edgeadapt.devcluster.images import CACHE, Image
from edgeadapt.procs import free_port

if TYPE_CHECKING:
    from edgeadapt.devcluster.cluster import LocalCluster

log = logging.getLogger(__name__)

POD_CIDR = "10.88.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
DNS_IP = "10.96.0.10"
BRIDGE = "edgeadapt0"
FIREWALL_CHAIN = "EDGEADAPT-NODE"
CLUSTER_DOMAIN = "cluster.local"
STORAGE_CLASS = "local-path"
PROVISIONER = "edgeadapt.io/local-path"
EDGE_ROLE = "node-role.kubernetes.io/edge"
GPU = "nvidia.com/gpu"
IMAGE_STORE = CACHE / "containerd"
# The node's own processes, in the order they stop (the kubelet last, before its containers).
NODE_PROCESSES = ("provisioner", "coredns", "kube-proxy", "kubelet")


class NodeError(RuntimeError):
    """A step of starting the real node failed; the message names the step and its log file."""


@dataclass(frozen=True)
class RealNodeSpec:
    """What the real node advertises: ``gpus`` > 0 patches ``nvidia.com/gpu`` into its capacity
    (the documented way to advertise an extended resource); ``edge`` labels it as a KubeEdge edge
    node and ``edge_taint`` also taints it so that only edge workloads land there."""

    name: str = "real-0"
    gpus: int = 0
    edge: bool = False
    edge_taint: bool = False
    labels: dict[str, str] = field(default_factory=dict)

    def node_labels(self) -> dict[str, str]:
        labels = {"edgeadapt.io/real-node": "true"} | self.labels
        if self.edge:
            labels |= {EDGE_ROLE: "", "node.kubernetes.io/instance-type": "jetson"}
        if self.gpus:
            labels |= {"nvidia.com/gpu.present": "true"}
        return labels


def node_ip() -> str:
    """The machine's own global IPv4 address (the kubelet refuses a loopback node IP). Traffic to
    it never leaves the machine."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 4 and words[2] == "inet" and not words[1].startswith(BRIDGE):
            return words[3].split("/")[0]
    raise NodeError("no global IPv4 address on this machine for the node (ip -4 addr)")


class RealNode:
    """The real node's processes and files, driven by the :class:`LocalCluster` it joins."""

    def __init__(self, cluster: LocalCluster, spec: RealNodeSpec, ip: str) -> None:
        self.cluster = cluster
        self.spec = spec
        self.ip = ip
        self.dir = cluster.workdir / "node"
        self.images: list[Image] = []
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ paths

    @property
    def socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.dir / "kubelet" / "root"

    def log(self, name: str) -> Path:
        return self.cluster.workdir / "logs" / f"{name}.log"

    # ------------------------------------------------------------------ start

    def start(self, *, timeout: float = 120, images: bool = True) -> None:
        """Start containerd, import the images, start the kubelet (Ready), kube-proxy, CoreDNS
        and the volume provisioner. ``images``: also build/import the project's images."""
        started = time.monotonic()
        _host_packages()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._pki()
        self._network()
        log_dir = self.cluster.workdir / "logs"
        pause = images_mod.pause_image(Path(self.cluster.bin("pause")), log_dir)
        self._containerd(pause, timeout)
        built = images_mod.build(log_dir=log_dir) if images else []
        self.images = [pause, *built]
        t = time.monotonic()
        images_mod.import_into_containerd(self.images, self.socket, self.log("images"))
        self.timings["images_import_s"] = time.monotonic() - t
        t = time.monotonic()
        self._kubelet(timeout)
        self.timings["kubelet_ready_s"] = time.monotonic() - t
        self._advertise()
        self._cluster_dns_objects()
        self._kube_proxy(timeout)
        self._coredns(timeout)
        self._provisioner()
        self.timings["node_total_s"] = time.monotonic() - started

    def state(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "ip": self.ip,
            "dir": str(self.dir),
            "socket": str(self.socket),
            "kubelet_root": str(self.kubelet_root),
            "bin_dir": str(self.cluster.bin_dir),
        }

    # ------------------------------------------------------------------ steps

    def _wait(self, check: Callable[[], bool], timeout: float, step: str, proc: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = self.cluster.processes.get(proc)
            if p is not None and p.poll() is not None:
                raise NodeError(
                    f"{step}: {proc} exited with {p.returncode}; log: {self.log(proc)}\n"
                    + self.log(proc).read_text(errors="replace")[-3000:]
                )
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.5)
        raise NodeError(
            f"{step}: not done after {timeout:.0f}s; log: {self.log(proc)}\n"
            + (
                self.log(proc).read_text(errors="replace")[-3000:]
                if self.log(proc).exists()
                else ""
            )
        )

    def _pki(self) -> None:
        from edgeadapt.devcluster.cluster import _cert, kubeconfig

        pki = self.cluster.workdir / "pki"
        certs = {
            "kubelet": f"/O=system:nodes/CN=system:node:{self.spec.name}",
            "kube-proxy": "/CN=system:kube-proxy",
            "coredns": "/CN=system:coredns",
            "provisioner": "/O=system:masters/CN=edgeadapt-local-path-provisioner",
        }
        for name, subject in certs.items():
            if not (pki / f"{name}.crt").exists():
                _cert(pki, name, subject)
        if not (pki / "kubelet-serving.crt").exists():
            _cert(pki, "kubelet-serving", f"/CN={self.spec.name}",
                  f"subjectAltName=IP:{self.ip},DNS:{self.spec.name}")  # fmt: skip
        ca = (pki / "ca.crt").read_bytes()
        for name in certs:
            (self.dir / f"{name}.kubeconfig").write_text(
                json.dumps(
                    kubeconfig(
                        self.cluster.server,
                        ca,
                        name,
                        cert=(pki / f"{name}.crt").read_bytes(),
                        key=(pki / f"{name}.key").read_bytes(),
                    )
                )
            )

    def _network(self) -> None:
        """The CNI config, forwarding for Service traffic, and the firewall chain that keeps pod
        traffic on the machine."""
        cni = self.dir / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": "edgeadapt",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(cni / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (cni / "net.d" / "10-edgeadapt.conflist").write_text(json.dumps(conflist, indent=2))
        ip_forward = Path("/proc/sys/net/ipv4/ip_forward")
        state = self.dir / "ip_forward.before"
        if not state.exists():
            state.write_text(ip_forward.read_text())
        ip_forward.write_text("1\n")
        # Pods may talk to each other and to this machine, never through it to anywhere else.
        _iptables("-N", FIREWALL_CHAIN, check=False)
        _iptables("-F", FIREWALL_CHAIN)
        _iptables("-A", FIREWALL_CHAIN, "-i", BRIDGE, "-o", BRIDGE, "-j", "RETURN")
        _iptables("-A", FIREWALL_CHAIN, "-i", BRIDGE, "-j", "DROP")
        _iptables("-A", FIREWALL_CHAIN, "-s", POD_CIDR, "!", "-d", POD_CIDR, "-j", "DROP")
        if _iptables("-C", "FORWARD", "-j", FIREWALL_CHAIN, check=False) != 0:
            _iptables("-I", "FORWARD", "1", "-j", FIREWALL_CHAIN)

    def _containerd(self, pause: Image, timeout: float) -> None:
        cdir = self.dir / "containerd"
        cdir.mkdir(parents=True, exist_ok=True)
        IMAGE_STORE.mkdir(parents=True, exist_ok=True)
        owner = IMAGE_STORE / "owner.json"
        if owner.exists():
            other = json.loads(owner.read_text())
            if _is_containerd(int(other.get("pid", 0))) and other.get("dir") != str(cdir):
                raise NodeError(
                    f"starting containerd: its image store {IMAGE_STORE} is in use by the "
                    f"cluster in {other.get('dir')} (pid {other.get('pid')}); stop that one first"
                )
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{IMAGE_STORE}"
state = "{cdir / "state"}"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{cdir / "ttrpc.sock"}"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{cdir / "opt"}"
[{cri}]
  sandbox_image = "{pause.key_ref}"
  # The VM lacks CAP_SYS_RESOURCE: lowering a sandbox's oom_score_adj would fail.
  restrict_oom_score_adj = true
  enable_cdi = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.dir / "cni" / "net.d"}"
"""
        (cdir / "config.toml").write_text(config)
        self.cluster._spawn("containerd", ["containerd", "--config", str(cdir / "config.toml")])
        owner.write_text(
            json.dumps({"dir": str(cdir), "pid": self.cluster.processes["containerd"].pid})
        )
        ctr = shutil.which("ctr") or "ctr"

        def up() -> bool:
            out = subprocess.run(
                [ctr, "-a", str(self.socket), "version"],
                capture_output=True,
                timeout=10,
                check=False,
            )
            return out.returncode == 0

        self._wait(up, timeout, "starting containerd", "containerd")
        _remove_leftover_containers(self.socket)

    def _kubelet(self, timeout: float) -> None:
        kdir = self.dir / "kubelet"
        self.kubelet_root.mkdir(parents=True, exist_ok=True)
        pki = self.cluster.workdir / "pki"
        resolv = kdir / "resolv.conf"
        resolv.write_text(f"nameserver {DNS_IP}\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.ip,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "tlsCertFile": str(pki / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "clusterDNS": [DNS_IP],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(resolv),
            "podLogsDir": str(self.cluster.workdir / "logs" / "pods"),
            "enforceNodeAllocatable": [],
            # A test machine's disk and memory are not the kubelet's to manage: no evictions,
            # and the imported images are never garbage-collected.
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "0%",
                "imagefs.available": "0%",
                "nodefs.inodesFree": "0%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "maxPods": 110,
            "registerNode": True,
            "syncFrequency": "10s",
            "nodeStatusUpdateFrequency": "5s",
            "fileCheckFrequency": "5s",
            "volumeStatsAggPeriod": "0s",
            "shutdownGracePeriod": "0s",
            "localStorageCapacityIsolation": True,
        }
        (kdir / "config.yaml").write_text(json.dumps(config, indent=2))
        # The kubelet may set only some labels on itself (NodeRestriction); the node role is set
        # by the cluster's administrator afterwards, here in _advertise.
        labels = ",".join(
            f"{k}={v}" for k, v in self.spec.node_labels().items() if _self_settable(k)
        )
        argv = [
            self.cluster.bin("kubelet"),
            f"--config={kdir / 'config.yaml'}",
            f"--kubeconfig={self.dir / 'kubelet.kubeconfig'}",
            f"--root-dir={self.kubelet_root}",
            f"--cert-dir={kdir / 'pki'}",
            f"--hostname-override={self.spec.name}",
            f"--node-ip={self.ip}",
            f"--node-labels={labels}",
            "--v=1",
        ]
        if self.spec.edge_taint:
            argv.append(f"--register-with-taints={EDGE_ROLE}=:NoSchedule")
        self.cluster._spawn("kubelet", argv)
        self._wait(
            lambda: self.spec.name in self.cluster._ready_nodes(),
            timeout,
            f"the kubelet registering node {self.spec.name} and reporting Ready",
            "kubelet",
        )

    def _advertise(self) -> None:
        admin_labels = [
            f"{k}={v}" for k, v in self.spec.node_labels().items() if not _self_settable(k)
        ]
        if admin_labels:
            self.cluster.kubectl("label", "node", self.spec.name, "--overwrite", *admin_labels)
        if not self.spec.gpus:
            return
        patch = [
            {
                "op": "add",
                "path": "/status/capacity/nvidia.com~1gpu",
                "value": str(self.spec.gpus),
            }
        ]
        self.cluster.kubectl(
            "patch", "node", self.spec.name, "--subresource=status", "--type=json",
            "-p", json.dumps(patch),
        )  # fmt: skip

    def _cluster_dns_objects(self) -> None:
        """CoreDNS runs on the node's address; the kube-dns Service (no selector) at DNS_IP
        points at it through an EndpointSlice, so pods resolve through kube-proxy as usual."""
        labels = {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
        ports = [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        ]
        self.cluster.apply(
            [
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": {"name": "system:coredns"},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "resources": ["endpoints", "services", "pods", "namespaces"],
                            "verbs": ["list", "watch"],
                        },
                        {
                            "apiGroups": ["discovery.k8s.io"],
                            "resources": ["endpointslices"],
                            "verbs": ["list", "watch"],
                        },
                    ],
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": "system:coredns"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "system:coredns",
                    },
                    "subjects": [{"kind": "User", "name": "system:coredns"}],
                },
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
                    "spec": {"clusterIP": DNS_IP, "ports": ports},
                },
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": "kube-dns-node",
                        "namespace": "kube-system",
                        "labels": {
                            "kubernetes.io/service-name": "kube-dns",
                            "endpointslice.kubernetes.io/managed-by": "devcluster.edgeadapt.io",
                        },
                    },
                    "addressType": "IPv4",
                    "endpoints": [
                        {
                            "addresses": [self.ip],
                            "conditions": {"ready": True},
                            "nodeName": self.spec.name,
                        }
                    ],
                    "ports": ports,
                },
                {
                    "apiVersion": "storage.k8s.io/v1",
                    "kind": "StorageClass",
                    "metadata": {
                        "name": STORAGE_CLASS,
                        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                    },
                    "provisioner": PROVISIONER,
                    "reclaimPolicy": "Delete",
                    "volumeBindingMode": "Immediate",
                },
            ]
        )

    def _kube_proxy(self, timeout: float) -> None:
        pdir = self.dir / "proxy"
        pdir.mkdir(parents=True, exist_ok=True)
        health = free_port()
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.dir / "kube-proxy.kubeconfig")},
            "mode": "iptables",
            "hostnameOverride": self.spec.name,
            "bindAddress": self.ip,
            "clusterCIDR": POD_CIDR,
            "healthzBindAddress": f"127.0.0.1:{health}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # Leave the machine's conntrack table size alone.
            "conntrack": {"maxPerCore": 0, "min": 0},
            "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
        }
        (pdir / "config.yaml").write_text(json.dumps(config, indent=2))
        self.cluster._spawn(
            "kube-proxy", [self.cluster.bin("kube-proxy"), f"--config={pdir / 'config.yaml'}"]
        )

        def synced() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=5) as r:
                return bool(r.status == 200)

        self._wait(synced, timeout, "kube-proxy syncing the Service rules", "kube-proxy")

    def _coredns(self, timeout: float) -> None:
        ddir = self.dir / "dns"
        ddir.mkdir(parents=True, exist_ok=True)
        ready, health = free_port(), free_port()
        corefile = f""".:53 {{
    bind {self.ip}
    errors
    health 127.0.0.1:{health}
    ready 127.0.0.1:{ready}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.dir / "coredns.kubeconfig"} edgeadapt-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    cache 30
    loop
    loadbalance
}}
"""
        (ddir / "Corefile").write_text(corefile)
        self.cluster._spawn(
            "coredns", [self.cluster.bin("coredns"), "-conf", str(ddir / "Corefile")]
        )

        def is_ready() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{ready}/ready", timeout=5) as r:
                return bool(r.status == 200)

        self._wait(is_ready, timeout, "CoreDNS serving the cluster's names", "coredns")

    def _provisioner(self) -> None:
        self.cluster._spawn(
            "provisioner",
            [
                sys.executable,
                "-m",
                "edgeadapt.devcluster.provisioner",
                f"--kubeconfig={self.dir / 'provisioner.kubeconfig'}",
                f"--dir={self.dir / 'volumes'}",
            ],
            env={"PYTHONPATH": str(images_mod.REPO / "src")},
        )


# ---------------------------------------------------------------------- stop and clean up


def clean_up(state: dict[str, Any]) -> None:
    """After the node's processes stopped (containerd still may run): kill and remove what the
    kubelet left (containers, sandboxes' network namespaces), iptables rules of kube-proxy and the
    firewall chain, the bridge, mounts under the kubelet's root dir. Safe to repeat."""
    node_dir = Path(state["dir"])
    kube_proxy = Path(state["bin_dir"]) / "kube-proxy"
    if kube_proxy.exists():
        subprocess.run([str(kube_proxy), "--cleanup"], capture_output=True, timeout=60, check=False)
    if _iptables("-C", "FORWARD", "-j", FIREWALL_CHAIN, check=False) == 0:
        _iptables("-D", "FORWARD", "-j", FIREWALL_CHAIN, check=False)
    _iptables("-F", FIREWALL_CHAIN, check=False)
    _iptables("-X", FIREWALL_CHAIN, check=False)
    # The kubelet's own chains (its firewall for 127.0.0.0/8 and its canaries).
    _iptables("-D", "INPUT", "-j", "KUBE-FIREWALL", check=False)
    _iptables("-D", "OUTPUT", "-j", "KUBE-FIREWALL", check=False)
    for table in ("filter", "nat", "mangle"):
        for chain in ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY"):
            _iptables("-t", table, "-F", chain, check=False)
            _iptables("-t", table, "-X", chain, check=False)
    # Volume mounts under the kubelet's root dir, sandboxes' shm under containerd's state.
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    points = [line.split()[1] for line in mounts if len(line.split()) > 1]
    for point in sorted((p for p in points if p.startswith(f"{node_dir}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
    before = node_dir / "ip_forward.before"
    if before.exists():
        with contextlib.suppress(OSError):
            Path("/proc/sys/net/ipv4/ip_forward").write_text(before.read_text())
        before.unlink()
    owner = IMAGE_STORE / "owner.json"
    if owner.exists() and json.loads(owner.read_text()).get("dir") == str(node_dir / "containerd"):
        owner.unlink()


def _remove_leftover_containers(socket: Path) -> None:
    """Containers and tasks a previous cluster left in the shared store (after a crash)."""
    ctr = shutil.which("ctr") or "ctr"
    base = [ctr, "-a", str(socket), "-n", "k8s.io"]
    tasks = subprocess.run(
        [*base, "tasks", "ls", "-q"], capture_output=True, text=True, check=False
    ).stdout
    for task in tasks.split():
        subprocess.run(
            [*base, "tasks", "kill", "-s", "SIGKILL", task], capture_output=True, check=False
        )
        subprocess.run([*base, "tasks", "delete", "-f", task], capture_output=True, check=False)
    containers = subprocess.run(
        [*base, "containers", "ls", "-q"], capture_output=True, text=True, check=False
    ).stdout
    for c in containers.split():
        subprocess.run([*base, "containers", "delete", c], capture_output=True, check=False)
    netns = Path("/var/run/netns")
    if netns.is_dir():
        for ns in netns.glob("cni-*"):
            subprocess.run(["ip", "netns", "delete", ns.name], capture_output=True, check=False)


def stop_containers(socket: Path) -> None:
    """Stop every container of the node (called after the kubelet has stopped)."""
    if socket.exists():
        _remove_leftover_containers(socket)


# ---------------------------------------------------------------------- helpers


def _self_settable(label: str) -> bool:
    """Whether the kubelet may set ``label`` on its own node (--node-labels)."""
    prefix = label.split("/", maxsplit=1)[0] if "/" in label else ""
    if not (prefix.endswith("kubernetes.io") or prefix.endswith("k8s.io")):
        return True
    return prefix in {"kubelet.kubernetes.io", "node.kubernetes.io"} or label in {
        "kubernetes.io/arch",
        "kubernetes.io/hostname",
        "kubernetes.io/os",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    }


def _host_packages() -> None:
    script = images_mod.REPO / "scripts" / "node-host.sh"
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise NodeError(f"installing the node's Debian packages ({script}):\n{out.stderr[-3000:]}")


def _iptables(*args: str, check: bool = True) -> int:
    out = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise NodeError(f"iptables {' '.join(args)}: {out.stderr.strip()}")
    return out.returncode


def _is_containerd(pid: int) -> bool:
    """Whether ``pid`` is a running containerd (not a process that reused the number)."""
    if pid <= 0:
        return False
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return os.path.basename(argv0) == b"containerd"
