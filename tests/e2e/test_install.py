"""End to end: the chart installed into the local control plane, the examples applied with
kubectl, everything Ready. The operator Deployment runs as a kwok pod (no container runs), so the
operator itself runs as a local process with the chart's ServiceAccount token: this also proves
the chart's least-privilege RBAC is enough."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeadapt.devcluster import LocalCluster
from edgeadapt.devcluster.cluster import REPO
from edgeadapt.devcluster.testing import (
    OperatorProcess,
    SimulatedTrainers,
    persistent_volumes,
    token_kubeconfig,
)

pytestmark = pytest.mark.e2e
RELEASE, SYSTEM_NS, DEMO_NS = "edgeadapt", "edgeadapt-system", "edgeadapt-demo"


@pytest.fixture(scope="module")
def installed(local_cluster: LocalCluster) -> Iterator[LocalCluster]:
    cluster = local_cluster
    cluster.helm(
        "install",
        RELEASE,
        str(REPO / "charts" / "edgeadapt"),
        "-n",
        SYSTEM_NS,
        "--create-namespace",
        "--take-ownership",
        "--wait",
        "--timeout=3m",
    )
    yield cluster
    cluster.kubectl("delete", "namespace", DEMO_NS, "--wait=false", check=False)
    cluster.helm("uninstall", RELEASE, "-n", SYSTEM_NS, "--wait", "--timeout=2m")


@pytest.fixture(scope="module")
def chart_operator(
    installed: LocalCluster,
    simulated_trainers: SimulatedTrainers,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    cluster = installed
    workdir = tmp_path_factory.mktemp("chart-operator")
    config = token_kubeconfig(
        cluster, workdir / "kubeconfig", namespace=SYSTEM_NS, name=RELEASE, duration="2h"
    )
    env = {
        **simulated_trainers.env,
        "EDGEADAPT_STATUS_INTERVAL": "2",
        "EDGEADAPT_OPERATOR_NAMESPACE": SYSTEM_NS,
    }
    proc = OperatorProcess(config, workdir / "operator.log", env=env).start()
    yield proc
    proc.stop()


def test_chart_installs_and_its_operator_pod_runs(installed: LocalCluster) -> None:
    cluster = installed
    deployment = json.loads(
        cluster.kubectl("get", "deployment", RELEASE, "-n", SYSTEM_NS, "-o", "json").stdout
    )
    assert deployment["status"].get("availableReplicas") == 1
    pods = json.loads(
        cluster.kubectl(
            "get",
            "pods",
            "-n",
            SYSTEM_NS,
            "-l",
            "app.kubernetes.io/component=operator",
            "-o",
            "json",
        ).stdout
    )["items"]
    assert len(pods) == 1
    assert pods[0]["status"]["phase"] == "Running"
    crds = cluster.kubectl("get", "crd", "-o", "name").stdout
    for plural in ("edgedevices", "modelzoos", "adaptationpolicies"):
        assert f"{plural}.edgeadapt.io" in crds


def test_examples_become_ready(installed: LocalCluster, chart_operator: OperatorProcess) -> None:
    cluster = installed
    cluster.kubectl("create", "namespace", DEMO_NS)
    cluster.apply(persistent_volumes(6, prefix="e2e-pv"))  # the trainer's and agents' claims
    for example in sorted((REPO / "examples").glob("*.yaml")):
        cluster.kubectl("apply", "-n", DEMO_NS, "-f", str(example))
    for kind in ("adaptationpolicy", "edgedevice"):
        out = cluster.kubectl(
            "wait", "--for=condition=Ready", kind, "--all", "-n", DEMO_NS, "--timeout=120s",
            check=False, timeout=150,
        )  # fmt: skip
        assert out.returncode == 0, f"{kind}: {out.stderr}\n{chart_operator.log_tail()}"
    listing = cluster.kubectl("get", "edgeadapt", "-n", DEMO_NS).stdout
    assert listing.count("True") == 3, listing
    log = Path(chart_operator.log_path).read_text()
    assert not re.search(r'forbidden: User \\?"[^"]*\\?" cannot', log), "RBAC denied a request"
    assert chart_operator.alive()
