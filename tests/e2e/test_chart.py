"""The Helm chart rendered and linted with the project's helm: RBAC, hardening, CRD gating."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from edgeadapt.api.schema import CRD_DIR
from edgeadapt.controllers.rbac import required_rules
from edgeadapt.devcluster.cluster import REPO, build_tools

pytestmark = pytest.mark.e2e
CHART = REPO / "charts" / "edgeadapt"


@pytest.fixture(scope="module")
def helm() -> str:
    return str(build_tools(["helm"]) / "helm")


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [helm, "template", "edgeadapt", str(CHART), "-n", "edgeadapt-system", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def triples(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_helm_lint_is_clean(helm: str) -> None:
    out = subprocess.run(
        [helm, "lint", "--strict", str(CHART)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[WARNING]" not in out.stdout
    assert "[ERROR]" not in out.stdout


@pytest.mark.parametrize(
    ("cluster_wide", "cert_manager"), [(True, False), (False, False), (True, True)]
)
def test_rbac_grants_exactly_what_the_controllers_need(
    helm: str, cluster_wide: bool, cert_manager: bool
) -> None:
    docs = render(
        helm,
        f"--set=operator.clusterWide={str(cluster_wide).lower()}",
        *(("--set=certManager.enabled=true", "--set=certManager.issuerRef.name=ca")
          if cert_manager else ()),
    )  # fmt: skip
    operator_roles = [
        d
        for d in docs
        if d["kind"] in ("ClusterRole", "Role")
        and not d["metadata"]["name"].endswith(("-view", "-edit"))
    ]
    assert {d["kind"] for d in operator_roles} == (
        {"ClusterRole"} if cluster_wide else {"Role", "ClusterRole"}
    )
    granted = triples([r for d in operator_roles for r in d["rules"]])
    assert granted == triples(required_rules(cluster_wide=cluster_wide, cert_manager=cert_manager))
    for doc in docs:
        for rule in doc.get("rules", []):
            assert "*" not in rule["verbs"]
            assert "*" not in rule["resources"]


def test_cert_manager_needs_an_issuer_and_reaches_the_operator(helm: str) -> None:
    refused = subprocess.run(
        [helm, "template", "edgeadapt", str(CHART), "--set=certManager.enabled=true"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode != 0
    assert "issuerRef" in refused.stderr
    docs = render(
        helm, "--set=certManager.enabled=true", "--set=certManager.issuerRef.name=edgeadapt-ca"
    )
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["EDGEADAPT_CERT_ISSUER"] == "ClusterIssuer.cert-manager.io/edgeadapt-ca"
    plain = next(d for d in render(helm) if d["kind"] == "Deployment")
    names = {e["name"] for e in plain["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "EDGEADAPT_CERT_ISSUER" not in names


def test_operator_deployment_is_hardened_and_probed(helm: str) -> None:
    deployment = next(d for d in render(helm) if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "edgeadapt.operator"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_crds_are_gated_by_values(helm: str) -> None:
    crds = [d for d in render(helm) if d["kind"] == "CustomResourceDefinition"]
    assert sorted(d["metadata"]["name"] for d in crds) == [
        "adaptationpolicies.edgeadapt.io",
        "edgedevices.edgeadapt.io",
        "modelzoos.edgeadapt.io",
    ]
    assert all(d["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for d in crds)
    for crd in crds:
        source = yaml.safe_load(
            (CRD_DIR / f"edgeadapt.io_{crd['spec']['names']['plural']}.yaml").read_text()
        )
        assert crd["spec"] == source["spec"]
    unkept = [
        d for d in render(helm, "--set=crds.keep=false") if d["kind"] == "CustomResourceDefinition"
    ]
    assert all(
        "helm.sh/resource-policy" not in d["metadata"].get("annotations", {}) for d in unkept
    )
    assert not [
        d
        for d in render(helm, "--set=crds.enabled=false")
        if d["kind"] == "CustomResourceDefinition"
    ]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("operator.replicas=two", "/operator/replicas"),
        ("operator.logFormat=xml", "/operator/logFormat"),
        ("crds.enabled=maybe", "/crds/enabled"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("operator.unknownKey=1", "unknownKey"),
    ],
)
def test_values_schema_refuses_bad_values(helm: str, setting: str, message: str) -> None:
    out = subprocess.run(
        [helm, "template", "x", str(CHART), f"--set={setting}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0
    assert message in out.stderr
