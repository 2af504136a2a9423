"""Every value of the chart is documented by a comment and covered by values.schema.json."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "edgeadapt"


def test_every_value_has_a_comment_above_it() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()

    def ancestors(i: int) -> list[str]:
        indent = len(lines[i]) - len(lines[i].lstrip())
        found = []
        for line in reversed(lines[:i]):
            ind = len(line) - len(line.lstrip())
            if line.strip() and not line.strip().startswith("#") and ind < indent:
                found.append(line.strip())
                indent = ind
        return found

    undocumented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        if "resources:" in ancestors(i):  # a Kubernetes ResourceRequirements, documented as one
            continue
        if not lines[i - 1].strip().startswith("#"):
            undocumented.append(stripped)
    assert undocumented == []


def test_schema_covers_every_top_level_and_operator_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) == set(schema["properties"])
    for key, sub in values.items():
        if isinstance(sub, dict):
            assert set(sub) == set(schema["properties"][key]["properties"]), key
