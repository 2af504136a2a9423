"""The operator's act step against a fake API server: a child the API server refuses shows in the
object's status (and is retried), and the status recovers once the child can be written."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from edgeadapt.api import keys
from edgeadapt.devcluster.fakeclient import FakeClient
from edgeadapt.operator.kube import ApiError
from edgeadapt.operator.manager import ChildApplyError, Manager

NS = "ns"
QUOTA = 'pods "cam-agent" is forbidden: exceeded quota: no-pods, requested: pods=1, limited: pods=0'


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


def seed(kube: FakeClient, mgr: Manager, plural: str, body: dict[str, Any]) -> None:
    """An object that exists: in the fake API server, and seen by the manager's watch."""
    meta = body["metadata"]
    group = "/apis/edgeadapt.io/v1alpha1" if "." in body.get("apiVersion", "") else "/api/v1"
    kube.objects[f"{group}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"] = body
    mgr.on_event(plural, None, body)


def manager(kube: FakeClient) -> Manager:
    mgr = Manager(kube=kube)
    seed(kube, mgr, "adaptationpolicies", obj("AdaptationPolicy", "pol"))
    # The policy's credentials exist, so its devices' agents may start.
    labels = {keys.ADAPTATION_POLICY_LABEL: "pol"}
    seed(
        kube,
        mgr,
        "secrets",
        {
            "apiVersion": "v1",
            "metadata": {"name": "pol-token-key", "namespace": NS, "labels": labels},
            "data": {"key": base64.b64encode(b"k" * 64).decode()},
        },
    )
    seed(
        kube,
        mgr,
        "configmaps",
        {
            "apiVersion": "v1",
            "metadata": {"name": "pol-trainer-ca", "namespace": NS, "labels": labels},
            "data": {"ca.crt": "-----BEGIN CERTIFICATE-----"},
        },
    )
    seed(
        kube,
        mgr,
        "edgedevices",
        obj("EdgeDevice", "cam", policyRef={"name": "pol"}, node={"name": "edge-0"}),
    )
    return mgr


def test_a_refused_child_shows_in_status_and_recovers() -> None:
    kube = FakeClient()
    pod_path = f"/api/v1/namespaces/{NS}/pods/cam-agent"
    kube.refuse[pod_path] = forbidden(QUOTA)

    async def scenario() -> Manager:
        mgr = manager(kube)
        key = ("edgedevices", NS, "cam")
        with pytest.raises(ChildApplyError, match="exceeded quota"):
            await mgr._reconcile(key)
        # Retried while refused: the same failure is not written again.
        with pytest.raises(ChildApplyError):
            await mgr._reconcile(key)
        assert len(kube.status_writes) == 1
        del kube.refuse[pod_path]
        await mgr._reconcile(key)
        return mgr

    mgr = asyncio.run(scenario())
    # The token Secret was created even though the pod was refused.
    assert f"/api/v1/namespaces/{NS}/secrets/cam-agent-token" in kube.created()
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
    assert [(e["type"], e["reason"]) for e in kube.events()] == [
        ("Warning", "ChildApplyFailed"),
        ("Normal", "AgentPending"),  # the recovery
    ]
    assert "exceeded quota" in kube.events()[0]["message"]

    assert pod_path in kube.created()
    conds = conditions(recovered)
    assert conds["Ready"][:2] == ("False", "AgentPending")
    assert conds["Reconciling"][:2] == ("True", "Progressing")
    assert "Stalled" not in conds
    assert conditions(mgr.cache.objects[("edgedevices", NS, "cam")]["status"]) == conds


def test_an_object_in_the_way_of_a_child_is_a_failure_unless_it_is_ours() -> None:
    kube = FakeClient()
    pod_path = f"/api/v1/namespaces/{NS}/pods/cam-agent"
    kube.objects[pod_path] = {"metadata": {"name": "cam-agent", "namespace": NS}}

    async def scenario() -> None:
        mgr = manager(kube)
        key = ("edgedevices", NS, "cam")
        with pytest.raises(ChildApplyError):
            await mgr._reconcile(key)
        # The same name, controlled by this device (our cache had not seen it yet): fine.
        kube.objects[pod_path]["metadata"]["ownerReferences"] = [
            {"kind": "EdgeDevice", "name": "cam", "uid": "uid-cam", "controller": True}
        ]
        await mgr._reconcile(key)

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
    kube = FakeClient()
    pod_path = f"/api/v1/namespaces/{NS}/pods/cam-agent"
    kube.refuse[pod_path] = ApiError(503, "POST", pod_path, "")

    async def scenario() -> None:
        with pytest.raises(ChildApplyError):
            await manager(kube)._reconcile(("edgedevices", NS, "cam"))

    asyncio.run(scenario())
    conds = conditions(kube.status_writes[0])
    assert conds["Ready"][:2] == ("False", "ChildApplyFailed")
    assert "HTTP 503" in conds["Ready"][2]
    assert conds["Reconciling"][:2] == ("True", "ChildApplyFailed")
    assert "Stalled" not in conds


def watch(kube: FakeClient, mgr: Manager) -> None:
    """Deliver what the fake API server holds to the manager, as its watches would."""
    for path, body in list(kube.objects.items()):
        plural = path.split("/")[-2]
        if plural in ("secrets", "pods", "configmaps", "edgedevices"):
            mgr.on_event(plural, "MODIFIED", body)


def test_act_converges_writes_nothing_when_converged_and_repairs_edits() -> None:
    kube = FakeClient()
    key = ("edgedevices", NS, "cam")
    token_path = f"/api/v1/namespaces/{NS}/secrets/cam-agent-token"
    pod_path = f"/api/v1/namespaces/{NS}/pods/cam-agent"
    device_path = f"/apis/edgeadapt.io/v1alpha1/namespaces/{NS}/edgedevices/cam"

    async def scenario() -> None:
        mgr = manager(kube)
        # First pass: the token; the pod waits until the token is seen.
        await mgr._reconcile(key)
        watch(kube, mgr)
        await mgr._reconcile(key)
        assert token_path in kube.objects
        assert pod_path in kube.objects
        pod = kube.at(pod_path)
        assert pod["metadata"]["ownerReferences"][0]["uid"] == "uid-cam"
        watch(kube, mgr)
        # Converged: another pass writes nothing, not even the status.
        before = len(kube.writes())
        await mgr._reconcile(key)
        assert kube.writes()[before:] == []
        # A token edited by hand is written back.
        minted = kube.at(token_path)["data"]["token"]
        kube.at(token_path)["data"]["token"] = base64.b64encode(b"ea1.wrong").decode()
        watch(kube, mgr)
        await mgr._reconcile(key)
        assert kube.at(token_path)["data"]["token"] == minted
        # A spec change replaces the pod: deleted, then created with the new spec.
        device = kube.at(device_path)
        device["spec"]["video"] = {"uri": "synthetic:seed=9"}
        device["metadata"]["generation"] = 3
        watch(kube, mgr)
        await mgr._reconcile(key)
        assert pod_path not in kube.objects
        mgr.on_event("pods", "DELETED", pod)
        await mgr._reconcile(key)
        args = kube.at(pod_path)["spec"]["containers"][0]["args"]
        assert args[args.index("--source") + 1] == "synthetic:seed=9"

    asyncio.run(scenario())
    status = kube.at(device_path)["status"]
    assert status["observedGeneration"] == 3
    assert conditions(status)["AgentReady"][:2] == ("False", "AgentPending")
