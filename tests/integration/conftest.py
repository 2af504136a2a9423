"""The integration tier's fixtures: CRDs applied to the session's control plane, the operator
running as a process against it (cluster-wide, as a ServiceAccount granted exactly the chart's
rules, so that every test also proves those rules enough), a namespace per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from edgeadapt.api.schema import CRD_DIR
from edgeadapt.controllers.rbac import required_rules
from edgeadapt.devcluster import LocalCluster
from edgeadapt.devcluster.testing import (
    OperatorProcess,
    SimulatedTrainers,
    persistent_volumes,
    service_account_kubeconfig,
)
from edgeadapt.procs import free_port

# The operator's identity in this tier (not the chart's edgeadapt-system, which the e2e tier
# installs into, and whose requests the audit log records).
OPERATOR_NAMESPACE, OPERATOR_SA = "edgeadapt-it", "edgeadapt-it-operator"


@pytest.fixture(scope="session")
def cluster(local_cluster: LocalCluster) -> LocalCluster:
    """The control plane with the CRDs established and volumes for ModelZoo claims."""
    local_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
    local_cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    # Claims of ModelZoos, trainers and agents bind to these (kwok has no provisioner).
    local_cluster.apply(persistent_volumes(120, prefix="it-pv"))
    return local_cluster


@pytest.fixture(scope="session")
def trainers(cluster: LocalCluster) -> Iterator[SimulatedTrainers]:
    """The /status of the trainers kwok pretends to run."""
    sim = SimulatedTrainers(cluster, refresh=1.0).start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="session")
def operator(
    cluster: LocalCluster, trainers: SimulatedTrainers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("operator")
    config = service_account_kubeconfig(
        cluster,
        workdir / "kubeconfig",
        required_rules(cluster_wide=True),
        namespace=OPERATOR_NAMESPACE,
        name=OPERATOR_SA,
    )
    env = {
        "EDGEADAPT_METRICS_PORT": str(free_port()),
        "EDGEADAPT_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE,
        "EDGEADAPT_STATUS_INTERVAL": "1",
        **trainers.env,
    }
    proc = OperatorProcess(config, workdir / "operator.log", env=env).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def namespace(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"t-{request.node.name[:40].lower().replace('_', '-')}-{uuid.uuid4().hex[:5]}"
    name = "".join(c for c in name if c.isalnum() or c == "-").strip("-")
    cluster.kubectl("create", "namespace", name)
    cluster.wait_for(
        lambda: (
            cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode
            == 0
        ),
        60,
        f"the default ServiceAccount in {name}",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
