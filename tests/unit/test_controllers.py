"""The pure decide functions and child builders."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest

from edgeadapt.api import keys
from edgeadapt.api.specs import AdaptationPolicySpec, EdgeDeviceSpec
from edgeadapt.api.v1alpha1 import ADAPTATION_POLICY, EDGE_DEVICE
from edgeadapt.controllers import adaptationpolicy, edgedevice, modelzoo, observe, security
from edgeadapt.controllers.binding import Capacity, TrainerPool
from edgeadapt.controllers.common import (
    POD,
    SECRET,
    STATEFUL_SET,
    ChildFailure,
    Images,
    IssuerRef,
    Owner,
    Plan,
    child_failure_status,
    spec_hash,
    status_differs,
    transition_events,
)
from edgeadapt.controllers.observe import PolicyFigures, TrainerObservation
from edgeadapt.controllers.rbac import required_rules
from edgeadapt.pki import common_name, issue, new_ca
from edgeadapt.stream.auth import mint_token

NOW = "2026-01-01T00:00:00Z"
IMAGES = Images()
KEY = b"0123456789abcdef" * 4
CA = new_ca("test-ca")


def decide_device(
    dev: dict[str, Any],
    binding: edgedevice.Binding,
    *,
    pod: dict[str, Any] | None,
    secret_exists: bool,
    images: Images = IMAGES,
    now: str,
    observation: TrainerObservation | None = None,
    key: bytes | None = KEY,
) -> Plan:
    """edgedevice.decide with the device's token minted and the CA published, unless told."""
    owner = Owner.of(EDGE_DEVICE, dev)
    token = security.device_token_secret(owner, KEY) if secret_exists else None
    return edgedevice.decide(
        dev,
        binding,
        pod=pod,
        token_secret=token,
        policy_key=key,
        ca_published=True,
        observation=observation,
        images=images,
        now=now,
        now_ts=1e9,
    )


def decide_policy(pol: dict[str, Any], **kw: Any) -> Plan:
    """adaptationpolicy.decide with its key, the CA and no trainer pods, unless told."""
    defaults: dict[str, Any] = {
        "token_key": KEY,
        "new_key": b"n" * 64,
        "ca": CA,
        "tls": issue(CA, "t", ("pol-trainer.ns.svc",)),
        "trainer_pods": [],
        "figures": PolicyFigures(),
    }
    return adaptationpolicy.decide(pol, **(defaults | kw))


def serving(*devices: dict[str, Any]) -> TrainerObservation:
    """A trainer that serves ``devices`` (its /status views)."""
    return TrainerObservation(1e9, True, phase="serving", devices={d["id"]: d for d in devices})


def view(name: str = "cam", **fields: Any) -> dict[str, Any]:
    """The trainer's view of a connected device in step with it."""
    return {
        "id": name,
        "adapt": True,
        "connected": True,
        "model_version": 5,
        "agent_model_version": 5,
        "model_checksum": "0000abcd",
        "agent_model_checksum": "0000abcd",
        "agent_in_step": True,
        "miou_teacher_last_60s": 81.5,
        "uplink_kbps": 120.0,
        "downlink_kbps": 150.0,
        "sampling_rate_fps": 0.5,
        "last_update_time": 1e9 - 5,
    } | fields


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
    pool = TrainerPool(Capacity.of(AdaptationPolicySpec.of({})))
    binding = edgedevice.resolve_binding(device(), policy(), pool)
    plan = decide_device(device(), binding, pod=None, secret_exists=False, images=IMAGES, now=NOW)
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
    container = pod["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--trainer") + 1] == (
        "pol-trainer-0.pol-trainer.ns.svc.cluster.local:50051"
    )
    # The token comes from the device's Secret, the CA bundle from the policy's ConfigMap, the
    # model is kept on the device's claim: no model files in the pod.
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["token"]["secret"]["secretName"] == "cam-agent-token"
    assert volumes["ca"]["configMap"]["name"] == "pol-trainer-ca"
    assert volumes["state"]["hostPath"]["path"] == "/var/lib/edgeadapt/devices/ns/cam"
    assert "--student" not in args
    # The token is the HMAC of the device's name under the policy's key.
    token = base64.b64decode(plan.apply[0].body["data"]["token"]).decode()
    assert token == mint_token(KEY, "cam")
    assert conditions(plan.status)["Ready"] == ("False", "AgentPending")
    assert conditions(plan.status)["Reconciling"] == ("True", "Progressing")
    assert plan.status["trainer"] == "pol-trainer-0"
    assert plan.events == []  # a new object's first progress is not announced


def test_selector_placement_adds_the_edge_role() -> None:
    dev = device(node={"selector": {"zone": "b"}})
    pod = edgedevice.agent_pod(
        Owner.of(EDGE_DEVICE, dev), EdgeDeviceSpec.of(dev["spec"]), "", "pol", IMAGES
    )
    assert "nodeName" not in pod["spec"]
    assert pod["spec"]["nodeSelector"] == {keys.EDGE_NODE_ROLE: "", "zone": "b"}


def test_ready_device_writes_nothing_when_nothing_changed() -> None:
    pool = TrainerPool(Capacity.of(AdaptationPolicySpec.of({})))
    dev = device()
    binding = edgedevice.resolve_binding(dev, policy(), pool)
    first = decide_device(dev, binding, pod=None, secret_exists=True, images=IMAGES, now=NOW)
    pod = running_pod(
        first.apply[0].body | {"spec": {**first.apply[0].body["spec"], "nodeName": "edge-0"}}
    )
    # A running pod is not enough: the trainer must see the agent, in step with it.
    waiting = decide_device(dev, binding, pod=pod, secret_exists=True, images=IMAGES, now=NOW)
    assert conditions(waiting.status)["Ready"] == ("False", "TrainerUnavailable")
    assert conditions(waiting.status)["AgentReady"] == ("True", "Succeeded")
    second = decide_device(
        dev, binding, pod=pod, secret_exists=True, now=NOW, observation=serving(view())
    )
    assert conditions(second.status)["Ready"] == ("True", "Succeeded")
    assert conditions(second.status)["AgentConnected"] == ("True", "Succeeded")
    assert conditions(second.status)["ModelDeployed"] == ("True", "Succeeded")
    assert second.status["modelVersion"] == 5
    assert second.status["accuracy"] == {"miouVsTeacher": 0.815}
    assert second.status["bandwidth"] == {"uplinkKbps": 120.0, "downlinkKbps": 150.0}
    assert "Reconciling" not in conditions(second.status)
    assert [e.reason for e in second.events] == ["Succeeded"]
    dev["status"] = second.status
    third = decide_device(
        dev, binding, pod=pod, secret_exists=True, now="later", observation=serving(view())
    )
    assert third.status == {}
    assert third.apply == []
    assert third.delete == []


def test_a_link_budget_reaches_the_agent_and_its_limits_show_without_holding_ready() -> None:
    pool = TrainerPool(Capacity.of(AdaptationPolicySpec.of({})))
    dev = device(link={"uplinkKbps": 64, "downlinkKbps": 100})
    binding = edgedevice.resolve_binding(dev, policy(), pool)
    first = decide_device(dev, binding, pod=None, secret_exists=True, images=IMAGES, now=NOW)
    args = first.apply[0].body["spec"]["containers"][0]["args"]
    assert args[args.index("--uplink-kbps") + 1] == "64"
    assert args[args.index("--downlink-kbps") + 1] == "100"
    pod = running_pod(
        first.apply[0].body | {"spec": {**first.apply[0].body["spec"], "nodeName": "edge-0"}}
    )
    link = {
        "uplink_budget_kbps": 64.0,
        "downlink_budget_kbps": 100.0,
        "limited": ["update-fraction"],
        "limits": ["update fraction 1.20 % (policy 5.00 %) for the downlink budget of 100 kbps"],
    }
    limited = decide_device(
        dev, binding, pod=pod, secret_exists=True, now=NOW, observation=serving(view(link=link))
    )
    conds = {c["type"]: c for c in limited.status["conditions"]}
    assert conds["Ready"]["status"] == "True", "an informative condition"
    assert (conds["BandwidthLimited"]["status"], conds["BandwidthLimited"]["reason"]) == (
        "True",
        "BudgetBelowPolicy",
    )
    assert "uplink 64 kbps, downlink 100 kbps" in conds["BandwidthLimited"]["message"]
    assert "update-fraction" in conds["BandwidthLimited"]["message"]
    fits = decide_device(
        dev,
        binding,
        pod=pod,
        secret_exists=True,
        now=NOW,
        observation=serving(view(link=link | {"limited": []})),
    )
    assert conditions(fits.status)["BandwidthLimited"] == ("False", "WithinBudget")
    # Not connected, or no budget on the trainer's side: no claim either way.
    gone = decide_device(
        dev,
        binding,
        pod=pod,
        secret_exists=True,
        now=NOW,
        observation=serving(view(link=link, connected=False)),
    )
    assert "BandwidthLimited" not in conditions(gone.status)
    assert "BandwidthLimited" not in conditions(
        decide_device(dev, binding, pod=pod, secret_exists=True, now=NOW,
                      observation=serving(view())).status
    )  # fmt: skip


def test_changed_spec_replaces_the_pod() -> None:
    pool = TrainerPool(Capacity.of(AdaptationPolicySpec.of({})))
    old = device()
    binding = edgedevice.resolve_binding(old, policy(), pool)
    pod = running_pod(
        decide_device(old, binding, pod=None, secret_exists=True, images=IMAGES, now=NOW)
        .apply[0]
        .body
    )
    new = device(generation=2, video={"uri": "rtsp://y/2"})
    plan = decide_device(new, binding, pod=pod, secret_exists=True, images=IMAGES, now=NOW)
    assert [(d.kind, d.name) for d in plan.delete] == [(POD, "cam-agent")]
    assert plan.status["observedGeneration"] == 2


def test_missing_policy_is_named_and_stalls() -> None:
    binding = edgedevice.resolve_binding(device(), None, None)
    plan = decide_device(device(), binding, pod=None, secret_exists=True, images=IMAGES, now=NOW)
    conds = conditions(plan.status)
    assert conds["Ready"] == ("False", "PolicyNotFound")
    assert conds["Stalled"] == ("True", "PolicyNotFound")
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert '"pol"' in ready["message"]
    assert plan.events[0].type == "Warning"


def test_unselected_and_suspended_devices_release_their_slot() -> None:
    pool = TrainerPool(Capacity.of(AdaptationPolicySpec.of({})))
    pol = policy(deviceSelector={"matchLabels": {"site": "b"}})
    assert edgedevice.resolve_binding(device(), pol, pool).reason == "NotSelected"
    pool.bind("cam")
    suspended = device(suspend=True)
    binding = edgedevice.resolve_binding(suspended, policy(), pool)
    assert binding.reason == "Suspended"
    assert pool.devices_bound == 0
    plan = decide_device(
        suspended,
        binding,
        pod={"metadata": {}},
        secret_exists=True,
        images=IMAGES,
        now=NOW,
    )
    assert [d.name for d in plan.delete] == ["cam-agent"]
    assert conditions(plan.status)["Ready"] == ("False", "Suspended")


def test_policy_runs_gpu_trainers_sized_by_the_bound_devices() -> None:
    pol = policy(gpu={"gpusPerTrainer": 2, "devicesPerGPU": 4}, ams={"iterations": 20})
    plan = decide_policy(
        pol,
        zoo=None,
        trainers_wanted=3,
        devices_bound=20,
        devices_unbound=1,
        statefulset=None,
        images=IMAGES,
        now=NOW,
    )
    by_name = {(a.kind.kind, a.name): a for a in plan.apply}
    sts = by_name["StatefulSet", "pol-trainer"].body
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"][keys.GPU_RESOURCE] == "2"
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations[keys.CONFIG_HASH] == spec_hash(
        by_name["ConfigMap", "pol-trainer"].body["data"]
    )
    assert annotations[keys.TOKEN_KEY_HASH] == security.fingerprint(KEY)
    assert by_name["Service", "pol-trainer"].body["spec"]["clusterIP"] == "None"
    # Credentials: the key is created once (never patched), the certificate and CA bundle kept
    # in step; the trainer mounts them and its claim, and is launched to use them.
    assert by_name["Secret", "pol-token-key"].mode == "create"
    tls = by_name["Secret", "pol-trainer-tls"].body
    assert tls["type"] == "kubernetes.io/tls"
    assert set(tls["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert by_name["ConfigMap", "pol-trainer-ca"].body["data"]["ca.crt"] == CA.cert.decode()
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    args = container["args"]
    assert args[args.index("--teacher-model") + 1] == "lraspp_mobilenet_v3_large=synthetic:bench"
    assert args[args.index("--token-secret-file") + 1] == "/etc/edgeadapt/token-key/key"
    assert conditions(plan.status)["Ready"] == ("False", "TrainersPending")
    assert plan.status["devicesBound"] == 20
    assert plan.status["capacity"] == 2 * 4 * 4


def test_trainer_resources_come_from_the_policy_over_the_defaults() -> None:
    default = adaptationpolicy.trainer_resources(AdaptationPolicySpec.of({}))
    assert default["requests"] == {"cpu": "2", "memory": "8Gi", keys.GPU_RESOURCE: "1"}
    assert default["limits"] == {"memory": "16Gi", keys.GPU_RESOURCE: "1"}
    spec = {
        "gpu": {"gpusPerTrainer": 2},
        "trainers": {"resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": 1}}},
    }
    given = adaptationpolicy.trainer_resources(AdaptationPolicySpec.of(spec))
    assert given["requests"] == {"cpu": "500m", "memory": "8Gi", keys.GPU_RESOURCE: "2"}
    assert given["limits"] == {"cpu": "1", "memory": "16Gi", keys.GPU_RESOURCE: "2"}


def test_policy_is_ready_when_its_trainers_are() -> None:
    pol = policy()
    first = decide_policy(
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
    plan = decide_policy(
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
    pol = policy(modelZooRef={"name": "zoo-q"})
    plan = decide_policy(
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


def test_a_recl_policy_needs_a_zoo_of_its_students_architecture_and_the_zoos_key() -> None:
    pol = policy(strategy="recl", modelZooRef={"name": "zoo-q"})
    ready = {"type": "Ready", "status": "True", "reason": "Succeeded", "message": ""}
    zoo = {
        "metadata": {"name": "zoo-q", "namespace": "ns", "generation": 1},
        "spec": {"studentArchitecture": "deeplabv3_mobilenet_v3_large"},
        "status": {"observedGeneration": 1, "conditions": [ready]},
    }
    args: dict[str, Any] = {
        "trainers_wanted": 1,
        "devices_bound": 0,
        "devices_unbound": 0,
        "statefulset": None,
        "images": IMAGES,
        "now": NOW,
    }
    plan = decide_policy(pol, zoo=zoo, **args)
    conds = conditions(plan.status)
    assert conds["ModelZooResolved"] == ("False", "ModelZooMismatch")
    assert conds["Stalled"][0] == "True", "a person has to act"

    def messages(plan: Any) -> str:
        return " ".join(c["message"] for c in plan.status["conditions"])

    zoo["spec"] = {"studentArchitecture": "lraspp_mobilenet_v3_large"}
    plan = decide_policy(pol, zoo=zoo, **args)
    assert conditions(plan.status)["ModelZooResolved"] == ("True", "Succeeded")
    assert 'waiting for ModelZoo "zoo-q" to create its gating key' in messages(plan)
    assert not any(a.body["metadata"]["name"] == "pol-gating-token" for a in plan.apply)

    plan = decide_policy(pol, zoo=zoo, gating_key=b"k" * 32, **args)
    token = next(a.body for a in plan.apply if a.body["metadata"]["name"] == "pol-gating-token")
    assert base64.b64decode(token["data"]["token"]).decode() == mint_token(b"k" * 32, "pol")
    assert "gating key" not in messages(plan)


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
    pool = TrainerPool(Capacity.of(AdaptationPolicySpec.of({})))
    binding = edgedevice.resolve_binding(device(), policy(), pool)
    dev_plan = decide_device(
        device(), binding, pod=None, secret_exists=False, images=IMAGES, now=NOW
    )
    pol_plan = decide_policy(
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


def probe(container: dict[str, Any], kind: str, path: str) -> dict[str, Any]:
    found = container[kind]
    assert found["httpGet"] == {"path": path, "port": "metrics"}
    return dict(found)


def test_trainer_is_probed_for_readiness_and_liveness() -> None:
    pol = policy()
    sts = adaptationpolicy.stateful_set(
        Owner.of(ADAPTATION_POLICY, pol), AdaptationPolicySpec.of(pol["spec"]), 1, "h", "k", IMAGES
    )
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": keys.METRICS_PORT} in container["ports"]
    assert keys.METRICS_PORT == 9090
    # Ready once it serves; alive (and so not restarted) while it provisions its models, which
    # opens the endpoint first. A dead worker thread is noticed within half a minute.
    probe(container, "readinessProbe", "/readyz")
    live = probe(container, "livenessProbe", "/healthz")
    probe(container, "startupProbe", "/healthz")
    assert live["periodSeconds"] * live["failureThreshold"] <= 60
    assert live["failureThreshold"] >= 3
    assert 0 < live["timeoutSeconds"] < live["periodSeconds"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_edge_agent_is_probed_for_readiness_and_liveness() -> None:
    dev = device()
    pod = edgedevice.agent_pod(
        Owner.of(EDGE_DEVICE, dev), EdgeDeviceSpec.of(dev["spec"]), "", "pol", IMAGES
    )
    container = pod["spec"]["containers"][0]
    assert container["ports"] == [{"name": "metrics", "containerPort": keys.METRICS_PORT}]
    probe(container, "readinessProbe", "/readyz")
    live = probe(container, "livenessProbe", "/healthz")
    assert live["periodSeconds"] * live["failureThreshold"] <= 60
    assert live["failureThreshold"] >= 3
    assert 0 < live["timeoutSeconds"] < live["periodSeconds"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def failed(action: str, kind: str, name: str, error: str, refused: bool = True) -> ChildFailure:
    return ChildFailure(action, kind, name, error, refused=refused)


def test_a_child_that_cannot_be_created_shows_in_status() -> None:
    pool = TrainerPool(Capacity.of(AdaptationPolicySpec.of({})))
    dev = device(generation=3)
    binding = edgedevice.resolve_binding(dev, policy(), pool)
    plan = decide_device(dev, binding, pod=None, secret_exists=True, images=IMAGES, now=NOW)
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
        decide_device(
            dev, binding, pod=None, secret_exists=True, images=IMAGES, now="later"
        ).status,
        [failed("create", "Pod", "cam-agent", quota)],
        generation=3,
        now="later",
    )
    assert not status_differs(status, again)

    # Once the pod can be created, the decided status replaces the failure.
    recovered = decide_device(
        dev, binding, pod=None, secret_exists=True, images=IMAGES, now="later"
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


def test_the_trainers_http_port_is_open_to_the_operator_only() -> None:
    images = Images(network_policy=True, operator_namespace="edgeadapt-system")
    plan = decide_policy(
        policy(),
        zoo=None,
        trainers_wanted=1,
        devices_bound=1,
        devices_unbound=0,
        statefulset=None,
        images=images,
        now=NOW,
    )
    (np,) = [a.body for a in plan.apply if a.kind.kind == "NetworkPolicy"]
    grpc, http = np["spec"]["ingress"]
    assert "from" not in grpc  # agents connect from their edge nodes
    assert grpc["ports"] == [{"protocol": "TCP", "port": keys.TRAINER_GRPC_PORT}]
    assert http["ports"] == [{"protocol": "TCP", "port": keys.METRICS_PORT}]
    (source,) = http["from"]
    assert source["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "edgeadapt-system"
    }
    assert np["spec"]["podSelector"]["matchLabels"][keys.ADAPTATION_POLICY_LABEL] == "pol"
    without = decide_policy(
        policy(), zoo=None, trainers_wanted=1, devices_bound=1, devices_unbound=0,
        statefulset=None, images=IMAGES, now=NOW,
    )  # fmt: skip
    assert not [a for a in without.apply if a.kind.kind == "NetworkPolicy"]


# A policy with one trainer, not rolled out yet, and one device bound.
ONE_TRAINER: dict[str, Any] = {
    "zoo": None,
    "trainers_wanted": 1,
    "devices_bound": 1,
    "devices_unbound": 0,
    "statefulset": None,
    "images": IMAGES,
    "now": NOW,
}


def test_with_cert_manager_the_trainers_certificate_is_a_certificate_resource() -> None:
    images = dataclasses.replace(IMAGES, cert_issuer=IssuerRef.parse("ClusterIssuer/corp-ca"))
    common = ONE_TRAINER | {"images": images, "tls": None}
    waiting = decide_policy(policy(), **common)
    by_kind = {(a.kind.kind, a.name): a.body for a in waiting.apply}
    cert = by_kind[("Certificate", "pol-trainer-tls")]
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert cert["spec"]["secretName"] == "pol-trainer-tls"
    assert cert["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert "*.pol-trainer.ns.svc.cluster.local" in cert["spec"]["dnsNames"]
    assert (cert["spec"]["duration"], cert["spec"]["renewBefore"]) == ("2160h", "720h")
    # Its Secret carries our labels, so the operator sees it as the policy's.
    labels = cert["spec"]["secretTemplate"]["labels"]
    assert labels[keys.ADAPTATION_POLICY_LABEL] == "pol"
    assert labels[keys.MANAGED_BY] == keys.MANAGED_BY_VALUE
    assert cert["metadata"]["ownerReferences"][0]["uid"] == "uid-p"
    # The operator neither signs the certificate nor publishes a bundle before the issuer did.
    assert ("Secret", "pol-trainer-tls") not in by_kind
    assert ("ConfigMap", "pol-trainer-ca") not in by_kind
    ready = next(c for c in waiting.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "WaitingForCredentials"
    assert 'ClusterIssuer "corp-ca"' in ready["message"]
    issued = decide_policy(policy(), **common, issued_ca=CA.cert)
    by_kind = {(a.kind.kind, a.name): a.body for a in issued.apply}
    assert by_kind[("ConfigMap", "pol-trainer-ca")]["data"] == {"ca.crt": CA.cert.decode()}
    ready = next(c for c in issued.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] != "WaitingForCredentials"


def test_issuer_references_parse_or_say_what_is_expected() -> None:
    assert IssuerRef.parse("Issuer/x") == IssuerRef("Issuer", "x", "cert-manager.io")
    assert IssuerRef.parse("AWSPCAClusterIssuer.awspca.cert-manager.io/pca") == IssuerRef(
        "AWSPCAClusterIssuer", "pca", "awspca.cert-manager.io"
    )
    for bad in ("ClusterIssuer", "/x", "ClusterIssuer/", "a/b/c"):
        with pytest.raises(ValueError, match="Kind/name"):
            IssuerRef.parse(bad)


def test_issued_ca_takes_only_a_certificate() -> None:
    def secret(ca: bytes) -> dict[str, Any]:
        return {"data": {"ca.crt": security.b64(ca)}}

    assert security.issued_ca(secret(CA.cert)) == CA.cert
    assert security.issued_ca(secret(b"not a certificate")) is None
    assert security.issued_ca({"data": {}}) is None
    assert security.issued_ca(None) is None


def test_mutual_tls_issues_each_device_a_client_certificate_and_trainers_require_one() -> None:
    pol = policy(mutualTLS=True)
    plan = decide_policy(pol, **ONE_TRAINER)
    by_kind = {(a.kind.kind, a.name): a.body for a in plan.apply}
    assert by_kind[("ConfigMap", "pol-client-ca")]["data"] == {"ca.crt": CA.cert.decode()}
    trainer = by_kind[("StatefulSet", "pol-trainer")]["spec"]["template"]["spec"]
    args = trainer["containers"][0]["args"]
    assert args[args.index("--client-ca") + 1] == "/etc/edgeadapt/client-ca/ca.crt"
    pool = TrainerPool(Capacity.of(AdaptationPolicySpec.of({})))
    dev = device()
    binding = edgedevice.resolve_binding(dev, pol, pool)
    pair = security.client_pair(None, CA, "cam")
    assert common_name(pair.cert) == "cam"
    owner = Owner.of(EDGE_DEVICE, dev)
    token = security.device_token_secret(owner, KEY)

    def decide(published: bool) -> Plan:
        return edgedevice.decide(
            dev,
            binding,
            pod=None,
            token_secret=token,
            policy_key=KEY,
            ca_published=True,
            observation=None,
            images=IMAGES,
            now=NOW,
            now_ts=1e9,
            mutual_tls=True,
            client_tls=pair,
            client_tls_published=published,
        )

    waiting = decide(published=False)
    secrets = {a.name: a.body for a in waiting.apply if a.kind == SECRET}
    assert secrets["cam-agent-tls"]["type"] == "kubernetes.io/tls"
    assert not any(a.kind == POD for a in waiting.apply), "no pod before its certificate"
    agent = next(c for c in waiting.status["conditions"] if c["type"] == "AgentReady")
    assert "client certificate" in agent["message"]
    ready = decide(published=True)
    pod = next(a.body for a in ready.apply if a.kind == POD)
    args = pod["spec"]["containers"][0]["args"]
    assert args[args.index("--cert-file") + 1] == "/etc/edgeadapt/client-tls/tls.crt"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["client-tls"]["secret"]["secretName"] == "cam-agent-tls"


def test_a_client_certificate_is_kept_while_good_and_renewed_otherwise() -> None:
    import datetime

    pair = security.client_pair(None, CA, "cam")
    observed = {"data": {"tls.crt": security.b64(pair.cert), "tls.key": security.b64(pair.key)}}
    assert security.client_pair(observed, CA, "cam") == pair
    assert security.client_pair(observed, CA, "other") != pair  # another device's name
    assert security.client_pair(observed, new_ca("other-ca"), "cam") != pair
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=70)
    assert security.client_pair(observed, CA, "cam", now=later) != pair  # near its end
    assert security.client_pair({"data": {"tls.crt": "eA=="}}, CA, "cam") != pair


def test_policy_status_shows_each_trainers_gpu_and_a_full_one_gets_no_new_devices() -> None:
    gpu = {
        "available": True,
        "utilization": 0.634,
        "memory_used_bytes": 79 << 30,
        "memory_total_bytes": 80 << 30,
        "memory_low": True,
    }
    body = {"phase": "serving", "devices": [view("cam")], "gpu": gpu}
    full = TrainerObservation.of(body, 1e9)
    cpu = TrainerObservation.of({"phase": "serving", "gpu": {"available": False}}, 1e9)
    assert full.memory_low
    assert not cpu.memory_low
    gpus = observe.trainer_gpus({"pol-trainer-0": full, "pol-trainer-1": cpu})
    assert gpus == (
        {
            "trainer": "pol-trainer-0",
            "utilizationPercent": 63,
            "memoryUsedMiB": 79 * 1024,
            "memoryTotalMiB": 80 * 1024,
            "memoryLow": True,
        },
    )
    one = {"trainers_wanted": 1, "devices_bound": 1, "devices_unbound": 0}
    plan = decide_policy(
        policy(), zoo=None, statefulset=None, images=IMAGES, now=NOW,
        figures=PolicyFigures(gpus=gpus), **one,
    )  # fmt: skip
    assert plan.status is not None
    assert plan.status["trainerGPUs"] == [dict(gpus[0])]
    # The devices' controller: a new device skips the full trainer (capacity 1 x 2 slots).
    pool = TrainerPool(Capacity(slots_per_trainer=2, max_trainers=1), closed={0})
    binding = edgedevice.resolve_binding(device("cam-new"), policy(), pool)
    assert binding.trainer is None
    assert "report low GPU memory" in binding.message
