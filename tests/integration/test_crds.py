"""The CRDs against a real kube-apiserver: schemas, defaults, CEL rules, explain, columns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeadapt.api.schema import CRD_DIR, defaulted
from edgeadapt.api.v1alpha1 import ADAPTATION_POLICY, API_VERSION, EDGE_DEVICE, MODEL_ZOO, Kind
from edgeadapt.devcluster import LocalCluster
from edgeadapt.devcluster.cluster import REPO

pytestmark = pytest.mark.integration

INVALID = sorted((Path(__file__).parent / "invalid").glob("*.yaml"))


def _expectations(path: Path) -> list[str]:
    return [
        line.split(":", 1)[1].strip()
        for line in path.read_text().splitlines()
        if line.startswith("# expect:")
    ]


@pytest.mark.parametrize("manifest", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_manifest_is_refused_naming_the_field(
    cluster: LocalCluster, namespace: str, manifest: Path
) -> None:
    docs = [d for d in manifest.read_text().split("\n---\n") if d.strip()]
    expectations = _expectations(manifest)
    assert expectations, f"{manifest.name} states no '# expect:' line"
    for doc in docs[:-1]:  # the accepted starting point of an immutability check
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=doc)
    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=docs[-1], check=False)
    assert out.returncode != 0, f"{manifest.name} was accepted:\n{out.stdout}"
    for text in expectations:
        assert text in out.stderr, f"{manifest.name}: {text!r} not in:\n{out.stderr}"


def test_examples_are_accepted(cluster: LocalCluster, namespace: str) -> None:
    """Every example, in every folder under examples/, as the API server sees it."""
    out = cluster.kubectl(
        "apply", "-n", namespace, "--dry-run=server", "-R", "-f", str(REPO / "examples")
    )
    assert out.stdout.count("(server dry run)") == len(
        [d for p in (REPO / "examples").rglob("*.yaml") for d in yaml.safe_load_all(p.read_text())]
    )


def test_schema_defaults_are_the_papers_parameters(cluster: LocalCluster, namespace: str) -> None:
    policy = {
        "apiVersion": "edgeadapt.io/v1alpha1",
        "kind": "AdaptationPolicy",
        "metadata": {"name": "defaults", "namespace": namespace},
        "spec": {},
    }
    out = cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(policy))
    spec = json.loads(out.stdout)["spec"]
    assert spec["strategy"] == "ams"
    assert spec["ams"] == {
        "tUpdateSeconds": 10,
        "tHorizonSeconds": 240,
        "iterations": 20,
        "gammaFraction": 0.05,
        "learningRate": 0.001,
        "adaptiveInterval": "Enabled",
    }
    assert spec["sampling"] == {"rMinFps": 0.1, "rMaxFps": 1.0, "phiTarget": 0.1}
    assert spec["gpu"] == {"gpusPerTrainer": 1, "devicesPerGPU": 8}
    assert spec["trainers"] == {"maxReplicas": 4, "storage": {"size": "10Gi"}}
    # Models the trainer can make with no download: the project's synthetic-scene models.
    for role in ("teacher", "student"):
        assert spec[role] == {
            "architecture": "lraspp_mobilenet_v3_large",
            "weights": {"synthetic": "bench"},
        }


# Specs as users write them: empty, partial sections, a value given where a default exists.
SPECS: dict[Kind, list[dict[str, Any]]] = {
    ADAPTATION_POLICY: [
        {},
        {"gpu": {"devicesPerGPU": 3}, "trainers": {"storage": {"storageClassName": "fast"}}},
        {
            "teacher": {"weights": {"torchvision": "LRASPP_MobileNet_V3_Large_Weights.DEFAULT"}},
            "mutualTLS": True,
        },
        {"deviceSelector": {"matchExpressions": [{"key": "site", "operator": "Exists"}]}},
    ],
    EDGE_DEVICE: [
        {
            "policyRef": {"name": "p"},
            "node": {"selector": {"zone": "a"}},
            "video": {"uri": "synthetic:seed=1"},
        },
        {
            "policyRef": {"name": "p"},
            "node": {"name": "n"},
            "video": {"uri": "synthetic:seed=1"},
            "link": {"downlinkKbps": 100},
        },
    ],
    MODEL_ZOO: [{}, {"storage": {"accessMode": "ReadWriteMany"}, "pruning": {"q": 10}}],
}


@pytest.mark.parametrize(
    ("kind", "index"),
    [(k, i) for k, specs in SPECS.items() for i in range(len(specs))],
    ids=[f"{k.kind}-{i}" for k, specs in SPECS.items() for i in range(len(specs))],
)
def test_the_operators_defaulting_is_the_api_servers(
    cluster: LocalCluster, namespace: str, kind: Kind, index: int
) -> None:
    """``schema.defaulted`` (what the controllers read specs through) gives what the API server
    stores for the same spec, so code never repeats a default the CRD declares."""
    spec = SPECS[kind][index]
    body = {
        "apiVersion": API_VERSION,
        "kind": kind.kind,
        "metadata": {"name": f"d{index}", "namespace": namespace},
        "spec": spec,
    }
    out = cluster.kubectl(
        "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(body)
    )
    assert defaulted(kind, spec) == json.loads(out.stdout)["spec"]


def _leaf_paths(schema: dict[str, Any], prefix: str) -> list[str]:
    out: list[str] = []
    props = schema.get("properties") or (schema.get("items") or {}).get("properties") or {}
    for name, sub in props.items():
        path = f"{prefix}.{name}"
        out.append(path)
        out.extend(_leaf_paths(sub, path))
    return out


@pytest.mark.parametrize("plural", ["edgedevices", "modelzoos", "adaptationpolicies"])
def test_kubectl_explain_describes_every_field(cluster: LocalCluster, plural: str) -> None:
    crd = yaml.safe_load((CRD_DIR / f"edgeadapt.io_{plural}.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    paths = _leaf_paths(schema["properties"]["spec"], f"{plural}.spec") + _leaf_paths(
        schema["properties"]["status"], f"{plural}.status"
    )
    assert len(paths) > 8
    for path in paths:
        out = cluster.kubectl("explain", path, check=False)
        assert out.returncode == 0, f"kubectl explain {path}: {out.stderr}"
        description = out.stdout.split("DESCRIPTION:", 1)[1].split("FIELDS:", 1)[0].strip()
        assert description not in ("", "<empty>"), f"{path} has no description"


def test_short_names_category_and_printer_columns(cluster: LocalCluster, namespace: str) -> None:
    out = cluster.kubectl("get", "ed,mz,ap", "-n", namespace)
    assert "No resources found" in out.stdout + out.stderr
    device = {
        "apiVersion": "edgeadapt.io/v1alpha1",
        "kind": "EdgeDevice",
        "metadata": {"name": "columns", "namespace": namespace},
        "spec": {
            "policyRef": {"name": "p"},
            "node": {"name": "edge-0"},
            "video": {"uri": "synthetic:seed=1"},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(device))
    header = cluster.kubectl("get", "edgeadapt", "-n", namespace, "-o", "wide").stdout.splitlines()[
        0
    ]
    assert header.split() == [
        "NAME", "READY", "REASON", "NODE", "TRAINER", "VERSION", "MIOU", "POLICY", "AGE"
    ]  # fmt: skip
