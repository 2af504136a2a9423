"""The CRD YAML follows the house rules: every field described and bounded, status subresource,
columns, short names, a category; the chart's copy is the same bytes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeadapt.api.schema import CRD_DIR

REPO = Path(__file__).resolve().parents[2]
CRDS = sorted(CRD_DIR.glob("*.yaml"))


def walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.fixture(params=CRDS, ids=[p.stem for p in CRDS])
def crd(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(yaml.safe_load(Path(request.param).read_text()))


def test_every_field_is_described_and_bounded(crd: dict[str, Any]) -> None:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema, "root"):
        if path in ("root.metadata", "root.apiVersion", "root.kind") or path.endswith("{}"):
            continue
        scalar_item = path.endswith("[]") and node.get("type") != "object"
        assert scalar_item or node.get("description"), f"{path} has no description"
        if node.get("type") == "string" and "enum" not in node and "format" not in node:
            assert "maxLength" in node, f"{path}: unbounded string"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path}: unbounded array"
        if node.get("type") == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{path}: unbounded map"


def test_kind_conventions(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert spec["group"] == "edgeadapt.io"
    assert spec["names"]["categories"] == ["edgeadapt"]
    assert len(spec["names"]["shortNames"]) == 1
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:2] == ["Ready", "Reason"]
    assert columns[-1] == "Age"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"observedGeneration", "conditions"} <= set(status)
    assert "phase" not in status
    assert status["conditions"]["x-kubernetes-list-type"] == "map"


def test_every_spec_default_lies_within_its_bounds(crd: dict[str, Any]) -> None:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for path, node in walk(schema, "spec"):
        if "default" not in node or isinstance(node["default"], dict):
            continue
        value = node["default"]
        if "enum" in node:
            assert value in node["enum"], path
        if "minimum" in node:
            assert (
                value > node["minimum"]
                if node.get("exclusiveMinimum")
                else value >= node["minimum"]
            ), path
        if "maximum" in node:
            assert value <= node["maximum"], path


def test_chart_carries_the_same_crds() -> None:
    copies = sorted((REPO / "charts" / "edgeadapt" / "files" / "crds").glob("*.yaml"))
    assert [p.name for p in copies] == [p.name for p in CRDS]
    for source, copy in zip(CRDS, copies, strict=True):
        assert copy.read_bytes() == source.read_bytes(), f"{copy} differs: run make chart-crds"
