"""``edgeadapt bench operator``: how fast the operator brings N EdgeDevices to Ready.

It starts a local control plane with enough simulated nodes (KubeEdge edge nodes for the
agents, GPU nodes for the trainers), runs the operator as a process with the chart's least
privileges under its own ServiceAccount, applies one AdaptationPolicy and N EdgeDevices, and
measures the seconds from the first apply until every device reports Ready for its current
generation, the operator's peak resident memory (VmHWM), and the API requests the operator made
in that time (counted in the API server's audit log, which records that ServiceAccount only).

Ready needs the data plane: the trainers' ``/status`` must show each agent connected and running
the current model. kwok runs no containers, so simulated trainers
(``edgeadapt.devcluster.testing.SimulatedTrainers``) answer the operator's polling, which runs at
its production interval (``STATUS_INTERVAL_S``, 10 s) with bearer tokens; the figures include
the polling requests. Volumes for the trainers' claims are made before the clock
starts (kwok has no provisioner).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from edgeadapt.api.schema import CRD_DIR

log = logging.getLogger(__name__)

NAMESPACE = "bench"
SYSTEM_NAMESPACE = "edgeadapt-system"
OPERATOR_SA = "edgeadapt-operator"
DEVICES_PER_GPU = 16
GPUS_PER_TRAINER = 8


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    del name
    parser.add_argument("--devices", type=int, default=1000, help="EdgeDevices to create")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    parser.add_argument(
        "--devices-per-node", type=int, default=50, help="edge agents per simulated edge node"
    )
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds to wait for all devices Ready"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="control-plane state folder")
    parser.add_argument("--concurrency", type=int, default=16, help="parallel creates")


def run(args: argparse.Namespace) -> int:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgeadapt-bench-"))
    figures = asyncio.run(_bench(args, workdir)) if args.devices > 0 else None
    if figures is None:
        return 1
    out: Path = args.out or Path("results") / f"operator-{args.devices}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"devices:               {figures['devices']}")
    print(f"seconds to all Ready:  {figures['seconds_to_all_ready']:.1f}")
    print(f"operator peak RSS:     {figures['operator_peak_rss_mb']:.1f} MB")
    print(f"operator API requests: {figures['api_requests']}")
    print(f"trainer /status polls: {figures['status_polling']['requests']}")
    print(f"saved {out}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def policy(trainers: int) -> dict[str, Any]:
    return {
        "apiVersion": "edgeadapt.io/v1alpha1",
        "kind": "AdaptationPolicy",
        "metadata": {"name": "fleet", "namespace": NAMESPACE},
        "spec": {
            "strategy": "ams",
            "gpu": {"gpusPerTrainer": GPUS_PER_TRAINER, "devicesPerGPU": DEVICES_PER_GPU},
            "trainers": {"maxReplicas": trainers},
        },
    }


def device(i: int, edge_nodes: int) -> dict[str, Any]:
    """Half the devices name their node, half are placed by the scheduler."""
    node: dict[str, Any] = (
        {"name": f"edge-{i % edge_nodes}"}
        if i % 2 == 0
        else {"selector": {"node.kubernetes.io/instance-type": "jetson"}}
    )
    return {
        "apiVersion": "edgeadapt.io/v1alpha1",
        "kind": "EdgeDevice",
        "metadata": {"name": f"cam-{i:05d}", "namespace": NAMESPACE, "labels": {"fleet": "bench"}},
        "spec": {
            "policyRef": {"name": "fleet"},
            "node": node,
            "video": {"uri": f"synthetic:seed={i}"},
        },
    }


async def _bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any] | None:
    import kopf

    from edgeadapt.api.v1alpha1 import ADAPTATION_POLICY, EDGE_DEVICE
    from edgeadapt.controllers.rbac import required_rules
    from edgeadapt.devcluster.cluster import LocalCluster, NodePool
    from edgeadapt.devcluster.testing import (
        OperatorProcess,
        SimulatedTrainers,
        persistent_volumes,
        service_account_kubeconfig,
    )
    from edgeadapt.operator.kube import Kube
    from edgeadapt.operator.poller import STATUS_INTERVAL_S
    from edgeadapt.procs import free_port

    n = args.devices
    trainers = math.ceil(n / (DEVICES_PER_GPU * GPUS_PER_TRAINER))
    edge_nodes = max(1, math.ceil(n / args.devices_per_node))
    gpu_nodes = math.ceil(trainers * GPUS_PER_TRAINER / 8)
    cluster = LocalCluster(workdir)
    operator: OperatorProcess | None = None
    admin: Kube | None = None
    simulated: SimulatedTrainers | None = None
    try:
        started = time.monotonic()
        cluster.start(
            [NodePool("gpu", gpu_nodes, "gpu"), NodePool("edge", edge_nodes, "edge")],
            timeout=600,
        )
        log.info(
            "control plane with %d edge and %d GPU nodes up in %.1fs",
            edge_nodes,
            gpu_nodes,
            time.monotonic() - started,
        )
        cluster.kubectl("apply", "--server-side", "-f", str(CRD_DIR))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        config = service_account_kubeconfig(
            cluster,
            workdir / "operator.kubeconfig",
            required_rules(),
            namespace=SYSTEM_NAMESPACE,
            name=OPERATOR_SA,
        )
        cluster.apply(persistent_volumes(trainers + 4, prefix="bench-pv"))  # trainer claims
        simulated = SimulatedTrainers(cluster).start()
        port = free_port()
        operator = OperatorProcess(
            config,
            workdir / "operator.log",
            args=[f"--liveness=http://127.0.0.1:{port}/healthz"],
            env={**simulated.env, "EDGEADAPT_OPERATOR_NAMESPACE": SYSTEM_NAMESPACE},
        ).start()
        _wait_healthy(port, operator, 120)

        pki = cluster.workdir / "pki"
        admin = Kube(
            kopf.ConnectionInfo(
                server=cluster.server,
                ca_path=str(pki / "ca.crt"),
                certificate_path=str(pki / "admin.crt"),
                private_key_path=str(pki / "admin.key"),
            )
        )
        cluster.kubectl("create", "namespace", NAMESPACE)
        cluster.wait_for(
            lambda: (
                cluster.kubectl("get", "sa", "default", "-n", NAMESPACE, check=False).returncode
                == 0
            ),
            60,
            "the bench namespace's ServiceAccount",
        )
        baseline = _audit_count(cluster.audit_log)
        t0 = time.monotonic()
        await admin.create(ADAPTATION_POLICY.path(NAMESPACE), policy(trainers))
        sem = asyncio.Semaphore(args.concurrency)

        client = admin

        async def create(i: int) -> None:
            async with sem:
                await client.create(EDGE_DEVICE.path(NAMESPACE), device(i, edge_nodes))

        await asyncio.gather(*(create(i) for i in range(n)))
        created = time.monotonic() - t0
        log.info("created %d EdgeDevices in %.1fs", n, created)
        ready = 0
        deadline = t0 + args.timeout
        while True:
            items = await admin.list(EDGE_DEVICE.path(NAMESPACE))
            ready = sum(1 for item in items if _ready(item))
            elapsed = time.monotonic() - t0
            if ready == n:
                break
            if time.monotonic() > deadline or not operator.alive():
                log.error("%d/%d Ready after %.0fs\n%s", ready, n, elapsed, operator.log_tail())
                return None
            log.info("%d/%d Ready after %.1fs", ready, n, elapsed)
            # Listing every device costs the API server more than the operator's own traffic at
            # fleet scale: look less often the larger the fleet (the figure's resolution).
            await asyncio.sleep(max(1.0, n / 1000))
        requests = _audit_count(cluster.audit_log) - baseline
        return {
            "devices": n,
            "trainers": trainers,
            "ready_checked_every_s": max(1.0, n / 1000),
            "seconds_to_all_ready": round(elapsed, 2),
            "operator_peak_rss_mb": round(operator.peak_rss_mb(), 1),
            "api_requests": requests,
            "status_polling": {
                "interval_s": STATUS_INTERVAL_S,
                "requests": simulated.requests,
                "refused_for_no_token": simulated.unauthorized,
            },
        }
    finally:
        if simulated is not None:
            simulated.stop()
        if admin is not None:
            await admin.close()
        if operator is not None:
            operator.stop()
        cluster.stop()


def _ready(item: dict[str, Any]) -> bool:
    status = item.get("status") or {}
    if status.get("observedGeneration") != item["metadata"].get("generation"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _wait_healthy(port: int, operator: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not operator.alive():
            raise RuntimeError(f"the operator exited:\n{operator.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the operator did not become healthy")


def _audit_count(path: Path) -> int:
    """Requests recorded in the audit log (one line per completed request)."""
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)
