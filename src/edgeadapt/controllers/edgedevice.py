"""EdgeDevice: an edge-agent pod on the device's KubeEdge node, a token Secret, a trainer binding.

Children (deterministic names, owned by the EdgeDevice):
- Secret ``<device>-agent-token``: the per-device token the agent presents to its trainer;
  created once and never rewritten (the token is made by the caller, this module stays pure).
- Pod ``<device>-agent``: the agent, pinned to ``spec.node.name`` or scheduled onto an edge node
  matching ``spec.node.selector``, tolerating the edge taint, told its trainer's endpoint. A pod's
  spec cannot change, so a changed desired spec (say, a new trainer) replaces the pod.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeadapt.api import keys
from edgeadapt.api.conditions import (
    AGENT_READY,
    READY,
    RECONCILING,
    STALLED,
    TRAINER_BOUND,
    Condition,
    Reason,
    Status,
    condition,
)
from edgeadapt.api.v1alpha1 import EDGE_DEVICE, GROUP
from edgeadapt.controllers.binding import Capacity, TrainerPool, label_selector_matches
from edgeadapt.controllers.common import (
    POD,
    SECRET,
    Apply,
    Body,
    Delete,
    Images,
    Owner,
    Plan,
    child_metadata,
    healthz_probe,
    pod_ready,
    rules,
    status_differs,
    status_with_conditions,
    transition_events,
)

RBAC_RULES = rules(
    (GROUP, "edgedevices", "get list watch"),
    (GROUP, "edgedevices/status", "get patch"),
    ("", "pods", "get list watch create delete"),
    ("", "secrets", "get list watch create delete"),
)

COMPONENT = "edge-agent"
TOKEN_KEY = "token"


def agent_pod_name(device: str) -> str:
    return f"{device}-agent"


def token_secret_name(device: str) -> str:
    return f"{device}-agent-token"


def trainer_pod_name(policy: str, index: int) -> str:
    return f"{policy}-trainer-{index}"


def trainer_endpoint(policy: str, index: int, namespace: str, cluster_domain: str) -> str:
    """The trainer pod's stable DNS name under the policy's headless Service, and its port."""
    host = f"{trainer_pod_name(policy, index)}.{policy}-trainer.{namespace}.svc.{cluster_domain}"
    return f"{host}:{keys.TRAINER_GRPC_PORT}"


@dataclass(frozen=True)
class Binding:
    """A device's binding: the trainer index, or why it has none."""

    trainer: int | None
    reason: str
    message: str
    policy: str

    @property
    def stalled(self) -> bool:
        return self.trainer is None and self.reason in (
            Reason.POLICY_NOT_FOUND,
            Reason.NOT_SELECTED,
            Reason.NO_TRAINER_CAPACITY,
        )


def resolve_binding(
    device: Mapping[str, Any],
    policy: Mapping[str, Any] | None,
    pool: TrainerPool | None,
) -> Binding:
    """Bind or release ``device`` in its policy's ``pool`` and say what came of it."""
    meta, spec = device["metadata"], device.get("spec") or {}
    name, namespace = meta["name"], meta["namespace"]
    policy_name = str((spec.get("policyRef") or {}).get("name", ""))
    if spec.get("suspend"):
        if pool is not None:
            pool.release(name)
        return Binding(None, Reason.SUSPENDED, "the device is suspended", policy_name)
    if policy is None or pool is None:
        return Binding(
            None,
            Reason.POLICY_NOT_FOUND,
            f'AdaptationPolicy "{policy_name}" not found in namespace "{namespace}"',
            policy_name,
        )
    pspec = policy.get("spec") or {}
    if pspec.get("suspend"):
        pool.release(name)
        return Binding(
            None, Reason.SUSPENDED, f'AdaptationPolicy "{policy_name}" is suspended', policy_name
        )
    if not label_selector_matches(pspec.get("deviceSelector"), meta.get("labels") or {}):
        pool.release(name)
        return Binding(
            None,
            Reason.NOT_SELECTED,
            f'the deviceSelector of AdaptationPolicy "{policy_name}" does not match this device',
            policy_name,
        )
    preferred = _trainer_index(policy_name, (device.get("status") or {}).get("trainer"))
    index = pool.bind(name, preferred)
    if index is None:
        cap = pool.capacity
        return Binding(
            None,
            Reason.NO_TRAINER_CAPACITY,
            f'AdaptationPolicy "{policy_name}" serves at most {cap.total} devices '
            f"({cap.max_trainers} trainers x {cap.slots_per_trainer} devices) and all are bound",
            policy_name,
        )
    return Binding(
        index,
        Reason.SUCCEEDED,
        f"bound to trainer {trainer_pod_name(policy_name, index)}",
        policy_name,
    )


def _trainer_index(policy: str, trainer: Any) -> int | None:
    prefix = f"{policy}-trainer-"
    if isinstance(trainer, str) and trainer.startswith(prefix) and trainer[len(prefix) :].isdigit():
        return int(trainer[len(prefix) :])
    return None


def new_pool(policy: Mapping[str, Any]) -> TrainerPool:
    return TrainerPool(Capacity.of(policy.get("spec") or {}))


def token_secret(owner: Owner, token: str) -> Body:
    data = {TOKEN_KEY: base64.b64encode(token.encode()).decode()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": child_metadata(
            owner, token_secret_name(owner.name), keys.EDGE_DEVICE_LABEL, COMPONENT, "token"
        ),
        "type": "Opaque",
        "data": data,
    }


def agent_pod(owner: Owner, spec: Mapping[str, Any], endpoint: str, images: Images) -> Body:
    node = spec.get("node") or {}
    video = spec.get("video") or {}
    link = spec.get("link") or {}
    env = [
        {"name": "EDGEADAPT_DEVICE", "value": owner.name},
        {"name": "EDGEADAPT_NAMESPACE", "value": owner.namespace},
        {"name": "EDGEADAPT_TRAINER_ENDPOINT", "value": endpoint},
        {"name": "EDGEADAPT_VIDEO_URI", "value": str(video.get("uri", ""))},
        {"name": "EDGEADAPT_VIDEO_FPS", "value": str(video.get("fps", 30))},
        {"name": "EDGEADAPT_TASK", "value": str(spec.get("task", "segmentation"))},
        {"name": "EDGEADAPT_STUDENT", "value": str(spec.get("studentArchitecture", ""))},
        {"name": "EDGEADAPT_UPLINK_KBPS", "value": str(link.get("uplinkKbps", 300))},
        {"name": "EDGEADAPT_DOWNLINK_KBPS", "value": str(link.get("downlinkKbps", 200))},
        {
            "name": "EDGEADAPT_TOKEN",
            "valueFrom": {
                "secretKeyRef": {"name": token_secret_name(owner.name), "key": TOKEN_KEY}
            },
        },
    ]
    pod_spec: Body = {
        "restartPolicy": "Always",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "tolerations": [
            {"key": keys.EDGE_NODE_ROLE, "operator": "Exists", "effect": "NoSchedule"},
            {"key": keys.EDGE_NODE_ROLE, "operator": "Exists", "effect": "NoExecute"},
        ],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
        "containers": [
            {
                "name": "edge-agent",
                "image": images.edge_agent,
                "imagePullPolicy": images.pull_policy,
                "command": ["python", "-m", "edgeadapt.edge_agent"],
                "env": env,
                "ports": [{"name": "metrics", "containerPort": keys.METRICS_PORT}],
                # /healthz answers 503 once a thread the agent needs has died; the kubelet then
                # restarts it. The endpoint opens after the student is loaded, which an edge
                # board may take a while over: the startup probe allows 2 minutes.
                "startupProbe": healthz_probe(period=5, failures=24),
                "livenessProbe": healthz_probe(period=10, failures=3),
                "resources": {
                    "requests": {"cpu": "100m", "memory": "256Mi"},
                    "limits": {"memory": "1Gi"},
                },
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
    }
    if node.get("name"):
        pod_spec["nodeName"] = node["name"]
    else:
        pod_spec["nodeSelector"] = {keys.EDGE_NODE_ROLE: ""} | dict(node.get("selector") or {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": child_metadata(
            owner, agent_pod_name(owner.name), keys.EDGE_DEVICE_LABEL, COMPONENT, pod_spec
        ),
        "spec": pod_spec,
    }


def decide(
    device: Mapping[str, Any],
    binding: Binding,
    *,
    pod: Mapping[str, Any] | None,
    secret_exists: bool,
    token: str,
    images: Images,
    now: str,
) -> Plan:
    """Desired children and status of one EdgeDevice from what was observed."""
    owner = Owner.of(EDGE_DEVICE, device)
    spec = device.get("spec") or {}
    gen = owner.generation
    plan = Plan()
    suspended = bool(spec.get("suspend"))

    if not secret_exists:
        plan.apply.append(Apply(SECRET, token_secret(owner, token), mode="create"))

    endpoint = ""
    if binding.trainer is not None:
        endpoint = trainer_endpoint(
            binding.policy, binding.trainer, owner.namespace, images.cluster_domain
        )
    desired_pod = agent_pod(owner, spec, endpoint, images)
    pod_name = agent_pod_name(owner.name)
    agent: tuple[Status, str, str]  # status, reason, message
    pod_state = _pod_state(pod, desired_pod)
    if suspended:
        if pod is not None:
            plan.delete.append(Delete(POD, pod_name))
        agent = ("False", Reason.SUSPENDED, "the device is suspended")
    elif pod_state == "stale":
        plan.delete.append(Delete(POD, pod_name))
        agent = ("False", Reason.AGENT_PENDING, f"replacing pod {pod_name} with the new spec")
    elif pod_state == "failed":
        plan.delete.append(Delete(POD, pod_name))
        agent = ("False", Reason.AGENT_FAILED, f"pod {pod_name} failed; replacing it")
    elif pod_state == "missing":
        plan.apply.append(Apply(POD, desired_pod, mode="replace"))
        agent = ("False", Reason.AGENT_PENDING, f"creating pod {pod_name}")
    elif pod_state == "ready":
        assert pod is not None
        agent = ("True", Reason.SUCCEEDED, f"pod {pod_name} runs on node {_node_of(pod)}")
    else:
        phase = ((pod or {}).get("status") or {}).get("phase", "Unknown")
        agent = ("False", Reason.AGENT_PENDING, f"pod {pod_name} is {phase}")

    bound = binding.trainer is not None
    bound_status: Status = "True" if bound else "False"
    conds: list[Condition] = []
    if suspended:
        ready = condition(
            READY, "False", Reason.SUSPENDED, "the device is suspended", generation=gen
        )
    elif not bound:
        ready = condition(READY, "False", binding.reason, binding.message, generation=gen)
    elif agent[0] != "True":
        ready = condition(READY, "False", agent[1], agent[2], generation=gen)
    else:
        ready = condition(
            READY, "True", Reason.SUCCEEDED, f"{agent[2]}; {binding.message}", generation=gen
        )
    conds.append(ready)
    if not suspended and agent[0] != "True" and not binding.stalled:
        conds.append(condition(RECONCILING, "True", Reason.PROGRESSING, agent[2], generation=gen))
    if not suspended and binding.stalled:
        conds.append(condition(STALLED, "True", binding.reason, binding.message, generation=gen))
    conds.append(
        condition(
            TRAINER_BOUND,
            bound_status,
            binding.reason,
            binding.message,
            generation=gen,
        )
    )
    conds.append(condition(AGENT_READY, agent[0], agent[1], agent[2], generation=gen))

    current = device.get("status") or {}
    fields = {
        "nodeName": _node_of(pod) if pod_state in {"ready", "pending"} else None,
        "trainer": None
        if binding.trainer is None
        else trainer_pod_name(binding.policy, binding.trainer),
        "trainerEndpoint": endpoint or None,
        "agentPod": None if suspended else pod_name,
    }
    status = status_with_conditions(current, conds, fields, generation=gen, now=now)
    if status_differs(current, status):
        plan.status = status
        plan.events = transition_events(current, status, "EdgeDevice")
    return plan


def _pod_state(pod: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> str:
    if pod is None:
        return "missing"
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return "terminating"
    want = desired["metadata"]["annotations"][keys.SPEC_HASH]
    if (meta.get("annotations") or {}).get(keys.SPEC_HASH) != want:
        return "stale"
    phase = (pod.get("status") or {}).get("phase")
    if phase in ("Failed", "Succeeded"):
        return "failed"
    return "ready" if pod_ready(pod) else "pending"


def _node_of(pod: Mapping[str, Any] | None) -> str | None:
    node = ((pod or {}).get("spec") or {}).get("nodeName")
    return str(node) if node else None
