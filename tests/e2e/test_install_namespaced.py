"""The chart in namespaced mode (``operator.clusterWide=false``): a Role in the release namespace
plus the CRD-reading ClusterRole, and an operator watching that namespace only. The operator runs
locally with the chart's ServiceAccount token; the API server's audit log (which records the
``edgeadapt-system`` ServiceAccounts) shows that this identity wrote the statuses."""

from __future__ import annotations

import json
from collections.abc import Iterator

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
RELEASE, NAMESPACE = "edgeadapt-ns", "edgeadapt-system"
USER = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"


@pytest.fixture(scope="module")
def namespaced_operator(
    local_cluster: LocalCluster,
    simulated_trainers: SimulatedTrainers,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    cluster = local_cluster
    cluster.helm(
        "install", RELEASE, str(REPO / "charts" / "edgeadapt"), "-n", NAMESPACE,
        "--create-namespace", "--take-ownership", "--wait", "--timeout=3m",
        "--set=operator.clusterWide=false", "--set=rbac.aggregatedRoles=false",
    )  # fmt: skip
    workdir = tmp_path_factory.mktemp("namespaced-operator")
    config = token_kubeconfig(cluster, workdir / "kubeconfig", namespace=NAMESPACE, name=RELEASE)
    proc = OperatorProcess(
        config,
        workdir / "operator.log",
        args=["--namespace", NAMESPACE],
        env={**simulated_trainers.env, "EDGEADAPT_STATUS_INTERVAL": "2"},
    )
    yield proc.start()
    proc.stop()
    for kind in ("edgedevice", "adaptationpolicy", "modelzoo"):
        cluster.kubectl("delete", kind, "--all", "-n", NAMESPACE, "--wait=false", check=False)
    cluster.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout=2m")


def test_namespaced_operator_brings_the_examples_to_ready(
    local_cluster: LocalCluster, namespaced_operator: OperatorProcess
) -> None:
    cluster = local_cluster
    roles = cluster.kubectl("get", "role", "-n", NAMESPACE, "-o", "name").stdout
    assert f"role.rbac.authorization.k8s.io/{RELEASE}" in roles
    cluster.apply(persistent_volumes(6, prefix="ns-pv"))  # the trainer's and agents' claims
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(REPO / "examples"))
    for kind in ("adaptationpolicy", "edgedevice"):
        out = cluster.kubectl(
            "wait", "--for=condition=Ready", kind, "--all", "-n", NAMESPACE, "--timeout=120s",
            check=False, timeout=150,
        )  # fmt: skip
        assert out.returncode == 0, f"{kind}: {out.stderr}\n{namespaced_operator.log_tail()}"
    writes = [
        json.loads(line)
        for line in cluster.audit_log.read_text().splitlines()
        if f'"{USER}"' in line
    ]
    status_patches = {
        e["objectRef"]["resource"]
        for e in writes
        if e["verb"] == "patch" and e["objectRef"].get("subresource") == "status"
    }
    assert status_patches == {"edgedevices", "adaptationpolicies"}
    assert all(e["responseStatus"]["code"] != 403 for e in writes)
    assert namespaced_operator.alive()
