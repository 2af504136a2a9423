"""The chart with cert-manager enabled (``certManager.enabled``, an issuer named): the operator
applies a cert-manager Certificate for each policy's trainers instead of signing one itself, and
gives agents the CA its issuer wrote. cert-manager's own CRDs (from its pinned Go module,
``scripts/cert-manager-crds.sh``) validate what the operator writes; the issuer's part, signing
and writing the Secret as cert-manager's CA issuer does, is played by the test, since the
cert-manager controller's program is not published as a Go module that can be built here. The
operator runs locally with the chart's ServiceAccount token, namespaced, so the chart's Role is
proven to grant Certificates."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeadapt.devcluster import LocalCluster
from edgeadapt.devcluster.cluster import REPO
from edgeadapt.devcluster.testing import (
    OperatorProcess,
    SimulatedTrainers,
    persistent_volumes,
    token_kubeconfig,
    wait_until,
)
from edgeadapt.pki import dns_names, issue, new_ca

pytestmark = pytest.mark.e2e
RELEASE = NAMESPACE = "edgeadapt-cm"
ISSUER = "edgeadapt-test-ca"
POLICY = "downtown"


def cert_manager_crds() -> list[dict[str, Any]]:
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "cert-manager-crds.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    folder = Path(out.stdout.strip().splitlines()[-1])
    docs = []
    for name in ("certificates", "issuers", "clusterissuers"):
        doc = yaml.safe_load((folder / f"crd-{name}.yaml").read_text())
        doc["metadata"].pop("labels", None)  # Helm template expressions
        docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def operator(
    local_cluster: LocalCluster,
    simulated_trainers: SimulatedTrainers,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    cluster = local_cluster
    crds = cert_manager_crds()
    cluster.apply(crds, server_side=True)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *(f"crd/{d['metadata']['name']}" for d in crds))  # fmt: skip
    cluster.helm(
        "install", RELEASE, str(REPO / "charts" / "edgeadapt"), "-n", NAMESPACE,
        "--create-namespace", "--take-ownership", "--wait", "--timeout=3m",
        "--set=operator.clusterWide=false", "--set=rbac.aggregatedRoles=false",
        "--set=certManager.enabled=true", f"--set=certManager.issuerRef.name={ISSUER}",
    )  # fmt: skip
    deployment = json.loads(
        cluster.kubectl("get", "deployment", RELEASE, "-n", NAMESPACE, "-o", "json").stdout
    )
    env = {
        e["name"]: e["value"]
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        if "value" in e
    }
    workdir = tmp_path_factory.mktemp("cert-manager-operator")
    config = token_kubeconfig(cluster, workdir / "kubeconfig", namespace=NAMESPACE, name=RELEASE)
    proc = OperatorProcess(
        config,
        workdir / "operator.log",
        args=["--namespace", NAMESPACE],
        env={
            **simulated_trainers.env,
            "EDGEADAPT_STATUS_INTERVAL": "2",
            # As the chart's Deployment sets it.
            "EDGEADAPT_CERT_ISSUER": env["EDGEADAPT_CERT_ISSUER"],
        },
    )
    yield proc.start()
    proc.stop()
    for kind in ("edgedevice", "adaptationpolicy"):
        cluster.kubectl("delete", kind, "--all", "-n", NAMESPACE, "--wait=false", check=False)
    cluster.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout=2m")
    cluster.kubectl("delete", "--wait=false", *(f"crd/{d['metadata']['name']}" for d in crds))


def get(cluster: LocalCluster, *args: str) -> dict[str, Any] | None:
    out = cluster.kubectl("get", *args, "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def ready_reason(cluster: LocalCluster) -> str:
    policy = get(cluster, "adaptationpolicy", POLICY) or {}
    conds = (policy.get("status") or {}).get("conditions") or []
    return next((f"{c['status']}/{c['reason']}" for c in conds if c["type"] == "Ready"), "")


def test_trainers_get_a_certificate_from_the_issuer_and_agents_its_ca(
    local_cluster: LocalCluster, operator: OperatorProcess
) -> None:
    cluster = local_cluster
    cluster.apply(persistent_volumes(6, prefix="cm-pv"))
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(REPO / "examples"))
    cert = wait_until(
        lambda: get(cluster, "certificate", f"{POLICY}-trainer-tls"),
        60,
        "the trainers' Certificate",
    )
    spec = cert["spec"]
    assert spec["issuerRef"] == {
        "name": ISSUER,
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert spec["secretName"] == f"{POLICY}-trainer-tls"
    assert f"*.{POLICY}-trainer.{NAMESPACE}.svc.cluster.local" in spec["dnsNames"]
    assert cert["metadata"]["ownerReferences"][0]["kind"] == "AdaptationPolicy"
    # Until the issuer has written the Secret, the policy waits, naming the issuer, and no agent
    # has a CA bundle to verify trainers with.
    cluster.wait_for(
        lambda: ready_reason(cluster) == "False/WaitingForCredentials", 60, "policy waiting"
    )
    assert get(cluster, "configmap", f"{POLICY}-trainer-ca") is None
    assert get(cluster, "secret", f"{POLICY}-trainer-tls") is None, "the operator signs nothing"

    # The issuer's part: what cert-manager's CA issuer writes for this Certificate.
    ca = new_ca("corp-ca")
    pair = issue(ca, f"{POLICY}-trainer", tuple(spec["dnsNames"]))
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": spec["secretName"],
            "namespace": NAMESPACE,
            "labels": spec["secretTemplate"]["labels"],
            "annotations": {
                "cert-manager.io/certificate-name": cert["metadata"]["name"],
                "cert-manager.io/issuer-name": ISSUER,
                "cert-manager.io/issuer-kind": "ClusterIssuer",
            },
        },
        "data": {
            "tls.crt": base64.b64encode(pair.cert).decode(),
            "tls.key": base64.b64encode(pair.key).decode(),
            "ca.crt": base64.b64encode(ca.cert).decode(),
        },
    }
    cluster.apply([secret])
    bundle = wait_until(
        lambda: (cm := get(cluster, "configmap", f"{POLICY}-trainer-ca")) and cm["data"]["ca.crt"],
        60,
        "the agents' CA bundle from the issuer's ca.crt",
    )
    assert bundle.encode() == ca.cert
    for kind in ("adaptationpolicy", "edgedevice"):
        out = cluster.kubectl(
            "wait", "--for=condition=Ready", kind, "--all", "-n", NAMESPACE, "--timeout=120s",
            check=False, timeout=150,
        )  # fmt: skip
        assert out.returncode == 0, f"{kind}: {out.stderr}\n{operator.log_tail()}"
    # The issuer's certificate is left as it wrote it, and the trainers mount it.
    kept = get(cluster, "secret", f"{POLICY}-trainer-tls")
    assert kept is not None
    assert base64.b64decode(kept["data"]["tls.crt"]) == pair.cert
    assert set(spec["dnsNames"]) <= set(dns_names(pair.cert))
    sts = get(cluster, "statefulset", f"{POLICY}-trainer")
    assert sts is not None
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == f"{POLICY}-trainer-tls"
    assert operator.alive()
