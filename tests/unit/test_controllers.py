"""The pure decide functions and child builders."""

from __future__ import annotations

from typing import Any

from edgeadapt.api import keys
from edgeadapt.api.v1alpha1 import EDGE_DEVICE
from edgeadapt.controllers import adaptationpolicy, edgedevice, modelzoo
from edgeadapt.controllers.binding import Capacity, TrainerPool
from edgeadapt.controllers.common import POD, SECRET, STATEFUL_SET, Images, Owner, spec_hash

NOW = "2026-01-01T00:00:00Z"
IMAGES = Images()


def device(name: str = "cam", generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "edgeadapt.io/v1alpha1",
        "kind": "EdgeDevice",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": "uid-1",
            "generation": generation,
            "labels": {"site": "a"},
        },
        "spec": {
            "policyRef": {"name": "pol"},
            "node": {"name": "edge-0"},
            "video": {"uri": "rtsp://x/1"},
            **spec,
        },
    }


def policy(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "edgeadapt.io/v1alpha1",
        "kind": "AdaptationPolicy",
        "metadata": {"name": "pol", "namespace": "ns", "uid": "uid-p", "generation": 1},
        "spec": spec,
    }


def running_pod(body: dict[str, Any]) -> dict[str, Any]:
    return body | {
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    }


def conditions(plan_status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in plan_status["conditions"]}


def test_new_device_gets_a_secret_and_an_agent_pod_on_its_edge_node() -> None:
    pool = TrainerPool(Capacity.of({}))
    binding = edgedevice.resolve_binding(device(), policy(), pool)
    plan = edgedevice.decide(
        device(), binding, pod=None, secret_exists=False, token="t0k", images=IMAGES, now=NOW
    )
    kinds = [(a.kind, a.name, a.mode) for a in plan.apply]
    assert kinds == [(SECRET, "cam-agent-token", "create"), (POD, "cam-agent", "replace")]
    pod = plan.apply[1].body
    assert pod["spec"]["nodeName"] == "edge-0"
    assert {"key": keys.EDGE_NODE_ROLE, "operator": "Exists", "effect": "NoSchedule"} in pod[
        "spec"
    ]["tolerations"]
    assert pod["metadata"]["ownerReferences"][0] == {
        "apiVersion": "edgeadapt.io/v1alpha1",
        "kind": "EdgeDevice",
        "name": "cam",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert (
        env["EDGEADAPT_TRAINER_ENDPOINT"] == "pol-trainer-0.pol-trainer.ns.svc.cluster.local:50051"
    )
    assert conditions(plan.status)["Ready"] == ("False", "AgentPending")
    assert conditions(plan.status)["Reconciling"] == ("True", "Progressing")
    assert plan.status["trainer"] == "pol-trainer-0"
    assert plan.events == []  # a new object's first progress is not announced


def test_selector_placement_adds_the_edge_role() -> None:
    dev = device(node={"selector": {"zone": "b"}})
    pod = edgedevice.agent_pod(Owner.of(EDGE_DEVICE, dev), dev["spec"], "", IMAGES)
    assert "nodeName" not in pod["spec"]
    assert pod["spec"]["nodeSelector"] == {keys.EDGE_NODE_ROLE: "", "zone": "b"}


def test_ready_device_writes_nothing_when_nothing_changed() -> None:
    pool = TrainerPool(Capacity.of({}))
    dev = device()
    binding = edgedevice.resolve_binding(dev, policy(), pool)
    first = edgedevice.decide(
        dev, binding, pod=None, secret_exists=True, token="t", images=IMAGES, now=NOW
    )
    pod = running_pod(
        first.apply[0].body | {"spec": {**first.apply[0].body["spec"], "nodeName": "edge-0"}}
    )
    second = edgedevice.decide(
        dev, binding, pod=pod, secret_exists=True, token="t", images=IMAGES, now=NOW
    )
    assert conditions(second.status)["Ready"] == ("True", "Succeeded")
    assert "Reconciling" not in conditions(second.status)
    assert [e.reason for e in second.events] == ["Succeeded"]
    dev["status"] = second.status
    third = edgedevice.decide(
        dev, binding, pod=pod, secret_exists=True, token="t", images=IMAGES, now="later"
    )
    assert third.status == {}
    assert third.apply == []
    assert third.delete == []


def test_changed_spec_replaces_the_pod() -> None:
    pool = TrainerPool(Capacity.of({}))
    old = device()
    binding = edgedevice.resolve_binding(old, policy(), pool)
    pod = running_pod(
        edgedevice.decide(
            old, binding, pod=None, secret_exists=True, token="t", images=IMAGES, now=NOW
        )
        .apply[0]
        .body
    )
    new = device(generation=2, video={"uri": "rtsp://y/2"})
    plan = edgedevice.decide(
        new, binding, pod=pod, secret_exists=True, token="t", images=IMAGES, now=NOW
    )
    assert [(d.kind, d.name) for d in plan.delete] == [(POD, "cam-agent")]
    assert plan.status["observedGeneration"] == 2


def test_missing_policy_is_named_and_stalls() -> None:
    binding = edgedevice.resolve_binding(device(), None, None)
    plan = edgedevice.decide(
        device(), binding, pod=None, secret_exists=True, token="t", images=IMAGES, now=NOW
    )
    conds = conditions(plan.status)
    assert conds["Ready"] == ("False", "PolicyNotFound")
    assert conds["Stalled"] == ("True", "PolicyNotFound")
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert '"pol"' in ready["message"]
    assert plan.events[0].type == "Warning"


def test_unselected_and_suspended_devices_release_their_slot() -> None:
    pool = TrainerPool(Capacity.of({}))
    pol = policy(deviceSelector={"matchLabels": {"site": "b"}})
    assert edgedevice.resolve_binding(device(), pol, pool).reason == "NotSelected"
    pool.bind("cam")
    suspended = device(suspend=True)
    binding = edgedevice.resolve_binding(suspended, policy(), pool)
    assert binding.reason == "Suspended"
    assert pool.devices_bound == 0
    plan = edgedevice.decide(
        suspended,
        binding,
        pod={"metadata": {}},
        secret_exists=True,
        token="t",
        images=IMAGES,
        now=NOW,
    )
    assert [d.name for d in plan.delete] == ["cam-agent"]
    assert conditions(plan.status)["Ready"] == ("False", "Suspended")


def test_policy_runs_gpu_trainers_sized_by_the_bound_devices() -> None:
    pol = policy(gpu={"gpusPerTrainer": 2, "devicesPerGPU": 4}, ams={"iterations": 20})
    plan = adaptationpolicy.decide(
        pol,
        zoo=None,
        trainers_wanted=3,
        devices_bound=20,
        devices_unbound=1,
        statefulset=None,
        images=IMAGES,
        now=NOW,
    )
    by_kind = {a.kind.kind: a.body for a in plan.apply}
    sts = by_kind["StatefulSet"]
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"][keys.GPU_RESOURCE] == "2"
    assert sts["spec"]["template"]["metadata"]["annotations"][keys.CONFIG_HASH] == spec_hash(
        by_kind["ConfigMap"]["data"]
    )
    assert by_kind["Service"]["spec"]["clusterIP"] == "None"
    assert conditions(plan.status)["Ready"] == ("False", "TrainersPending")
    assert plan.status["devicesBound"] == 20
    assert plan.status["capacity"] == 2 * 4 * 4


def test_policy_is_ready_when_its_trainers_are() -> None:
    pol = policy()
    first = adaptationpolicy.decide(
        pol,
        zoo=None,
        trainers_wanted=1,
        devices_bound=1,
        devices_unbound=0,
        statefulset=None,
        images=IMAGES,
        now=NOW,
    )
    sts = next(a.body for a in first.apply if a.kind == STATEFUL_SET)
    observed = sts | {
        "metadata": sts["metadata"] | {"generation": 1},
        "status": {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1},
    }
    plan = adaptationpolicy.decide(
        pol,
        zoo=None,
        trainers_wanted=1,
        devices_bound=1,
        devices_unbound=0,
        statefulset=observed,
        images=IMAGES,
        now=NOW,
    )
    conds = conditions(plan.status)
    assert conds["Ready"] == ("True", "Succeeded")
    assert conds["ModelZooResolved"] == ("True", "NotReferenced")


def test_policy_names_its_missing_zoo() -> None:
    pol = policy(strategy="recl", modelZooRef={"name": "zoo-q"})
    plan = adaptationpolicy.decide(
        pol,
        zoo=None,
        trainers_wanted=0,
        devices_bound=0,
        devices_unbound=0,
        statefulset=None,
        images=IMAGES,
        now=NOW,
    )
    conds = conditions(plan.status)
    assert conds["Ready"] == ("False", "ModelZooNotFound")
    assert conds["ModelZooResolved"] == ("False", "ModelZooNotFound")
    assert any('"zoo-q"' in c["message"] for c in plan.status["conditions"])


def test_zoo_claims_storage_and_runs_the_gating_service() -> None:
    zoo = {
        "metadata": {"name": "z", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {
            "storage": {"size": "20Gi", "accessMode": "ReadWriteMany", "storageClassName": "fast"},
            "gating": {"replicas": 2},
        },
    }
    plan = modelzoo.decide(zoo, pvc=None, deployment_obs=None, images=IMAGES, now=NOW)
    by_kind = {a.kind.kind: a.body for a in plan.apply}
    pvc = by_kind["PersistentVolumeClaim"]["spec"]
    assert pvc == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "20Gi"}},
        "storageClassName": "fast",
    }
    dep = by_kind["Deployment"]["spec"]
    assert dep["replicas"] == 2
    assert dep["strategy"] == {"type": "RollingUpdate"}
    volume = dep["template"]["spec"]["volumes"][0]
    assert volume["persistentVolumeClaim"]["claimName"] == "z-store"
    assert conditions(plan.status)["Ready"] == ("False", "StoragePending")
