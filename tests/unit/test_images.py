"""Each image's entrypoint is the command the operator gives its workload (or, for the
operator, the command the chart and the tests run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeadapt.api.v1alpha1 import ADAPTATION_POLICY, EDGE_DEVICE, MODEL_ZOO
from edgeadapt.controllers import adaptationpolicy, edgedevice, modelzoo
from edgeadapt.controllers.common import Images, Owner

IMAGES = Path(__file__).resolve().parents[2] / "images"


def entrypoint(image: str) -> list[str]:
    lines = (IMAGES / image / "Dockerfile").read_text().splitlines()
    (line,) = [x for x in lines if x.startswith("ENTRYPOINT")]
    return list(json.loads(line.removeprefix("ENTRYPOINT").strip()))


def _meta(name: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": "u", "generation": 1}}


@pytest.mark.parametrize(
    ("image", "command"),
    [
        ("operator", ["python", "-m", "edgeadapt.operator"]),
        (
            "trainer",
            adaptationpolicy.stateful_set(
                Owner.of(ADAPTATION_POLICY, _meta("p")), {}, 1, "h", Images()
            )["spec"]["template"]["spec"]["containers"][0]["command"],
        ),
        (
            "gating",
            modelzoo.deployment(Owner.of(MODEL_ZOO, _meta("z")), {}, Images())["spec"]["template"][
                "spec"
            ]["containers"][0]["command"],
        ),
        (
            "edge-agent",
            edgedevice.agent_pod(Owner.of(EDGE_DEVICE, _meta("d")), {}, "", Images())["spec"][
                "containers"
            ][0]["command"],
        ),
    ],
)
def test_entrypoint_is_the_workload_command(image: str, command: list[str]) -> None:
    assert entrypoint(image) == command
    assert "USER 10001:10001" in (IMAGES / image / "Dockerfile").read_text()
