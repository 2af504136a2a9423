"""The CRDs' OpenAPI schemas, read from the YAML this package ships, and their defaults.

The CRD YAML in ``crds/`` (beside this file) is the API's one source: the chart carries a byte
copy of it and the API server applies its defaults on every write. Code that reads a spec goes
through ``defaulted``, which applies the same defaults the same way (structural defaulting: a
missing property with a default gets a copy of it, then defaulting recurses into what is
there), so an object that never passed through an API server (a unit test's body, a manifest
read from disk) reads exactly like one that did, and no default is written twice.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from edgeadapt.api.v1alpha1 import GROUP, VERSION, Kind

CRD_DIR = Path(__file__).resolve().parent / "crds"


def crd_path(plural: str) -> Path:
    return CRD_DIR / f"{GROUP}_{plural}.yaml"


@cache
def crd(plural: str) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind, as shipped (callers must not change it)."""
    loaded: dict[str, Any] = yaml.safe_load(crd_path(plural).read_text())
    return loaded


def spec_schema(kind: Kind) -> Mapping[str, Any]:
    """The OpenAPI schema of ``spec`` in the served version."""
    for version in crd(kind.plural)["spec"]["versions"]:
        if version["name"] == VERSION:
            schema: Mapping[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
            return schema
    raise LookupError(f"{kind.crd_name} does not serve {VERSION}")


def defaulted(kind: Kind, spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``spec`` with the CRD's defaults applied as the API server applies them."""
    out = copy.deepcopy(dict(spec or {}))
    _default(out, spec_schema(kind))
    return out


def _default(value: Any, schema: Mapping[str, Any]) -> None:
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for name, prop in properties.items():
            if "default" in prop and (
                name not in value or (value[name] is None and not prop.get("nullable"))
            ):
                value[name] = copy.deepcopy(prop["default"])
        for name, item in value.items():
            if name in properties:
                _default(item, properties[name])
            elif isinstance(schema.get("additionalProperties"), Mapping):
                _default(item, schema["additionalProperties"])
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for item in value:
            _default(item, schema["items"])
