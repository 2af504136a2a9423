"""The operator's act step against a fake API server: a child the API server refuses shows in the
object's status (and is retried), and the status recovers once the child can be written."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from edgeadapt.api import keys
from edgeadapt.operator.kube import ApiError
from edgeadapt.operator.manager import ChildApplyError, Manager

NS = "ns"
QUOTA = 'pods "cam-agent" is forbidden: exceeded quota: no-pods, requested: pods=1, limited: pods=0'


class FakeKube:
    """Records writes; refuses creates at the paths in ``refuse``; ``existing`` objects make a
    create answer 409 (as Kube.create does: False) and are what ``get`` returns."""

    def __init__(self) -> None:
        self.refuse: dict[str, ApiError] = {}
        self.existing: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []
        self.status_writes: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    async def create(self, path: str, body: dict[str, Any]) -> bool:
        if path.endswith("/events"):
            self.events.append(body)
            return True
        full = f"{path}/{body['metadata']['name']}"
        if full in self.refuse:
            raise self.refuse[full]
        if full in self.existing:
            return False
        self.created.append(full)
        return True

    async def get(self, path: str) -> dict[str, Any] | None:
        return self.existing.get(path)

    async def merge_patch(self, path: str, body: dict[str, Any]) -> bool:
        assert path.endswith("/status"), path
        self.status_writes.append(body["status"])
        return True

    async def delete(self, path: str) -> bool:
        return True


def obj(kind: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "edgeadapt.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 2},
        "spec": spec,
    }


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def forbidden(message: str) -> ApiError:
    body = {"kind": "Status", "status": "Failure", "message": message, "code": 403}
    return ApiError(403, "POST", "/api/v1/namespaces/ns/pods", json.dumps(body))


def manager(kube: FakeKube) -> Manager:
    mgr = Manager(kube=kube)  # type: ignore[arg-type]
    mgr.on_event("adaptationpolicies", None, obj("AdaptationPolicy", "pol"))
    # The policy's credentials exist, so its devices' agents may start.
    labels = {keys.ADAPTATION_POLICY_LABEL: "pol"}
    mgr.on_event(
        "secrets",
        None,
        {
            "metadata": {"name": "pol-token-key", "namespace": NS, "labels": labels},
            "data": {"key": base64.b64encode(b"k" * 64).decode()},
        },
    )
    mgr.on_event(
        "configmaps",
        None,
        {
            "metadata": {"name": "pol-trainer-ca", "namespace": NS, "labels": labels},
            "data": {"ca.crt": "-----BEGIN CERTIFICATE-----"},
        },
    )
    mgr.on_event(
        "edgedevices",
        None,
        obj("EdgeDevice", "cam", policyRef={"name": "pol"}, node={"name": "edge-0"}),
    )
    return mgr


def test_a_refused_child_shows_in_status_and_recovers() -> None:
    kube = FakeKube()
    pod_path = f"/api/v1/namespaces/{NS}/pods/cam-agent"
    kube.refuse[pod_path] = forbidden(QUOTA)

    async def scenario() -> Manager:
        mgr = manager(kube)
        key = ("edgedevices", NS, "cam")
        with pytest.raises(ChildApplyError, match="exceeded quota"):
            await mgr._reconcile_key(key)
        # Retried while refused: the same failure is not written again.
        with pytest.raises(ChildApplyError):
            await mgr._reconcile_key(key)
        assert len(kube.status_writes) == 1
        del kube.refuse[pod_path]
        await mgr._reconcile_key(key)
        return mgr

    mgr = asyncio.run(scenario())
    # The token Secret was created even though the pod was refused.
    assert f"/api/v1/namespaces/{NS}/secrets/cam-agent-token" in kube.created
    failed, recovered = kube.status_writes
    conds = conditions(failed)
    assert conds["Ready"] == (
        "False",
        "ChildApplyFailed",
        f'could not create Pod "cam-agent": {QUOTA}',
    )
    assert conds["Stalled"][:2] == ("True", "ChildApplyFailed")
    assert "Reconciling" not in conds
    assert conds["TrainerBound"][:2] == ("True", "Succeeded")
    assert failed["observedGeneration"] == 2
    assert failed["trainer"] == "pol-trainer-0"
    assert [(e["type"], e["reason"]) for e in kube.events] == [
        ("Warning", "ChildApplyFailed"),
        ("Normal", "AgentPending"),  # the recovery
    ]
    assert "exceeded quota" in kube.events[0]["message"]

    assert pod_path in kube.created
    conds = conditions(recovered)
    assert conds["Ready"][:2] == ("False", "AgentPending")
    assert conds["Reconciling"][:2] == ("True", "Progressing")
    assert "Stalled" not in conds
    assert conditions(mgr.objects[("edgedevices", NS, "cam")]["status"]) == conds


def test_an_object_in_the_way_of_a_child_is_a_failure_unless_it_is_ours() -> None:
    kube = FakeKube()
    pod_path = f"/api/v1/namespaces/{NS}/pods/cam-agent"
    kube.existing[pod_path] = {"metadata": {"name": "cam-agent", "namespace": NS}}

    async def scenario() -> None:
        mgr = manager(kube)
        key = ("edgedevices", NS, "cam")
        with pytest.raises(ChildApplyError):
            await mgr._reconcile_key(key)
        # The same name, controlled by this device (our cache had not seen it yet): fine.
        kube.existing[pod_path]["metadata"]["ownerReferences"] = [
            {"kind": "EdgeDevice", "name": "cam", "uid": "uid-cam", "controller": True}
        ]
        await mgr._reconcile_key(key)

    asyncio.run(scenario())
    failed, recovered = kube.status_writes
    ready = conditions(failed)["Ready"]
    assert ready[:2] == ("False", "ChildApplyFailed")
    assert ready[2] == (
        'could not create Pod "cam-agent": an object of that name exists and is not '
        'controlled by EdgeDevice "cam"'
    )
    assert conditions(failed)["Stalled"][:2] == ("True", "ChildApplyFailed")
    assert conditions(recovered)["Ready"][:2] == ("False", "AgentPending")


def test_a_child_write_without_an_answer_is_reconciling() -> None:
    kube = FakeKube()
    pod_path = f"/api/v1/namespaces/{NS}/pods/cam-agent"
    kube.refuse[pod_path] = ApiError(503, "POST", pod_path, "")

    async def scenario() -> None:
        with pytest.raises(ChildApplyError):
            await manager(kube)._reconcile_key(("edgedevices", NS, "cam"))

    asyncio.run(scenario())
    conds = conditions(kube.status_writes[0])
    assert conds["Ready"][:2] == ("False", "ChildApplyFailed")
    assert "HTTP 503" in conds["Ready"][2]
    assert conds["Reconciling"][:2] == ("True", "ChildApplyFailed")
    assert "Stalled" not in conds
