"""The pure decide functions and child builders."""

from __future__ import annotations

from typing import Any

from edgeadapt.api import keys
from edgeadapt.api.v1alpha1 import ADAPTATION_POLICY, EDGE_DEVICE
from edgeadapt.controllers import adaptationpolicy, edgedevice, modelzoo
from edgeadapt.controllers.binding import Capacity, TrainerPool
from edgeadapt.controllers.common import (
    POD,
    SECRET,
    STATEFUL_SET,
    ChildFailure,
    Images,
    Owner,
    child_failure_status,
    spec_hash,
    status_differs,
    transition_events,
)
from edgeadapt.controllers.rbac import required_rules

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


def test_trainer_resources_come_from_the_policy_over_the_defaults() -> None:
    default = adaptationpolicy.trainer_resources({}, 1)
    assert default["requests"] == {"cpu": "2", "memory": "8Gi", keys.GPU_RESOURCE: "1"}
    assert default["limits"] == {"memory": "16Gi", keys.GPU_RESOURCE: "1"}
    spec = {"trainers": {"resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": 1}}}}
    given = adaptationpolicy.trainer_resources(spec, 2)
    assert given["requests"] == {"cpu": "500m", "memory": "8Gi", keys.GPU_RESOURCE: "2"}
    assert given["limits"] == {"cpu": "1", "memory": "16Gi", keys.GPU_RESOURCE: "2"}


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


def all_children() -> list[tuple[str, dict[str, Any]]]:
    """Every child any kind's decide function builds."""
    pool = TrainerPool(Capacity.of({}))
    binding = edgedevice.resolve_binding(device(), policy(), pool)
    dev_plan = edgedevice.decide(
        device(), binding, pod=None, secret_exists=False, token="t", images=IMAGES, now=NOW
    )
    pol_plan = adaptationpolicy.decide(
        policy(),
        zoo=None,
        trainers_wanted=1,
        devices_bound=1,
        devices_unbound=0,
        statefulset=None,
        images=IMAGES,
        now=NOW,
    )
    zoo = {"metadata": {"name": "z", "namespace": "ns", "uid": "u", "generation": 1}, "spec": {}}
    zoo_plan = modelzoo.decide(zoo, pvc=None, deployment_obs=None, images=IMAGES, now=NOW)
    return [(a.kind.kind, a.body) for p in (dev_plan, pol_plan, zoo_plan) for a in p.apply]


def test_children_do_not_block_owner_deletion() -> None:
    # blockOwnerDeletion=true needs update on <owner kind>/finalizers under the
    # OwnerReferencesPermissionEnforcement admission plugin, which the operator is not granted.
    children = all_children()
    assert {kind for kind, _ in children} == {
        "Secret",
        "Pod",
        "ConfigMap",
        "Service",
        "StatefulSet",
        "PersistentVolumeClaim",
        "Deployment",
    }
    for kind, body in children:
        (ref,) = body["metadata"]["ownerReferences"]
        assert ref["controller"] is True, kind
        assert "blockOwnerDeletion" not in ref, kind
    granted = {
        (group, resource, verb)
        for rule in required_rules()
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert not any(resource.endswith("/finalizers") for _, resource, _ in granted)


def healthz(probe: dict[str, Any]) -> dict[str, Any]:
    assert probe["httpGet"] == {"path": "/healthz", "port": "metrics"}
    return probe


def test_trainer_is_probed_for_liveness_after_a_generous_startup() -> None:
    pol = policy()
    sts = adaptationpolicy.stateful_set(
        Owner.of(ADAPTATION_POLICY, pol), pol["spec"], 1, "h", IMAGES
    )
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": keys.METRICS_PORT} in container["ports"]
    assert keys.METRICS_PORT == 9090
    healthz(container["readinessProbe"])
    live = healthz(container["livenessProbe"])
    start = healthz(container["startupProbe"])
    # Liveness counts only once the startup probe has passed: loading the teacher and student
    # (30-60 s) has minutes, a dead worker thread is noticed within half a minute.
    assert start["periodSeconds"] * start["failureThreshold"] >= 180
    assert live["periodSeconds"] * live["failureThreshold"] <= 60
    assert live["failureThreshold"] >= 3
    assert 0 < live["timeoutSeconds"] < live["periodSeconds"]


def test_edge_agent_is_probed_for_liveness() -> None:
    dev = device()
    pod = edgedevice.agent_pod(Owner.of(EDGE_DEVICE, dev), dev["spec"], "", IMAGES)
    container = pod["spec"]["containers"][0]
    assert container["ports"] == [{"name": "metrics", "containerPort": keys.METRICS_PORT}]
    live = healthz(container["livenessProbe"])
    start = healthz(container["startupProbe"])
    assert start["periodSeconds"] * start["failureThreshold"] >= 60
    assert live["periodSeconds"] * live["failureThreshold"] <= 60
    assert live["failureThreshold"] >= 3
    assert 0 < live["timeoutSeconds"] < live["periodSeconds"]


def failed(action: str, kind: str, name: str, error: str, refused: bool = True) -> ChildFailure:
    return ChildFailure(action, kind, name, error, refused=refused)


def test_a_child_that_cannot_be_created_shows_in_status() -> None:
    pool = TrainerPool(Capacity.of({}))
    dev = device(generation=3)
    binding = edgedevice.resolve_binding(dev, policy(), pool)
    plan = edgedevice.decide(
        dev, binding, pod=None, secret_exists=True, token="t", images=IMAGES, now=NOW
    )
    quota = 'pods "cam-agent" is forbidden: exceeded quota: q, requested: pods=1'
    status = child_failure_status(
        dev.get("status"),
        plan.status,
        [failed("create", "Pod", "cam-agent", quota)],
        generation=3,
        now=NOW,
    )
    conds = conditions(status)
    assert conds["Ready"] == ("False", "ChildApplyFailed")
    assert conds["Stalled"] == ("True", "ChildApplyFailed")
    assert "Reconciling" not in conds
    # The kind's own conditions and fields are kept as decided.
    assert conds["TrainerBound"] == ("True", "Succeeded")
    assert conds["AgentReady"] == ("False", "AgentPending")
    assert status["trainer"] == "pol-trainer-0"
    assert status["observedGeneration"] == 3
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["message"] == f'could not create Pod "cam-agent": {quota}'
    events = transition_events(dev.get("status"), status, "EdgeDevice")
    assert [(e.type, e.reason) for e in events] == [("Warning", "ChildApplyFailed")]

    # Unchanged failure, unchanged status (no write on every retry); it keeps its timestamps.
    dev["status"] = status
    again = child_failure_status(
        status,
        edgedevice.decide(
            dev, binding, pod=None, secret_exists=True, token="t", images=IMAGES, now="later"
        ).status,
        [failed("create", "Pod", "cam-agent", quota)],
        generation=3,
        now="later",
    )
    assert not status_differs(status, again)

    # Once the pod can be created, the decided status replaces the failure.
    recovered = edgedevice.decide(
        dev, binding, pod=None, secret_exists=True, token="t", images=IMAGES, now="later"
    )
    assert conditions(recovered.status)["Ready"] == ("False", "AgentPending")
    assert "Stalled" not in conditions(recovered.status)


def test_child_failures_without_a_refusal_are_reconciling() -> None:
    current = {
        "observedGeneration": 1,
        "conditions": [
            {
                "type": t,
                "status": "True",
                "reason": "Succeeded",
                "message": "",
                "lastTransitionTime": "t0",
                "observedGeneration": 1,
            }
            for t in ("Ready", "TrainersAvailable")
        ],
        "trainers": 1,
    }
    status = child_failure_status(
        current,
        {},
        [
            failed("patch", "StatefulSet", "p-trainer", "TimeoutError: ", refused=False),
            failed("create", "ConfigMap", "p-trainer", "forbidden"),
        ],
        generation=1,
        now=NOW,
    )
    conds = conditions(status)
    assert conds["Ready"] == ("False", "ChildApplyFailed")
    assert conds["Reconciling"] == ("True", "ChildApplyFailed")
    assert "Stalled" not in conds
    assert conds["TrainersAvailable"] == ("True", "Succeeded")
    kept = next(c for c in status["conditions"] if c["type"] == "TrainersAvailable")
    assert kept["lastTransitionTime"] == "t0"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == NOW
    assert 'StatefulSet "p-trainer"' in ready["message"]
    assert 'ConfigMap "p-trainer"' in ready["message"]
    assert status["trainers"] == 1
    long = child_failure_status(
        current, {}, [failed("create", "Pod", "x", "e" * 10_000)], generation=1, now=NOW
    )
    assert len(conditions_messages(long)["Ready"]) == 4096


def conditions_messages(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["message"] for c in status["conditions"]}
