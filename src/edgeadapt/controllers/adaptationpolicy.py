"""AdaptationPolicy: the trainers that adapt its devices' models.

Children (deterministic names, owned by the AdaptationPolicy):
- ConfigMap ``<policy>-trainer``: the algorithm parameters as ``policy.json``, read by trainers.
- Service ``<policy>-trainer``: headless, the trainers' gRPC port; it gives every trainer pod the
  stable name ``<policy>-trainer-<i>.<policy>-trainer`` that bound devices are told.
- StatefulSet ``<policy>-trainer``: one pod per trainer, each requesting ``gpusPerTrainer``
  ``nvidia.com/gpu`` on GPU nodes. Its replica count is the number of trainers the bound devices
  need (see ``binding``); the ConfigMap's hash on the pod template rolls trainers on an edit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from edgeadapt.api import keys
from edgeadapt.api.conditions import (
    MODEL_ZOO_RESOLVED,
    READY,
    RECONCILING,
    STALLED,
    TRAINERS_AVAILABLE,
    Condition,
    Reason,
    Status,
    condition,
    is_ready,
)
from edgeadapt.api.v1alpha1 import ADAPTATION_POLICY, GROUP
from edgeadapt.controllers.binding import Capacity
from edgeadapt.controllers.common import (
    CONFIG_MAP,
    SERVICE,
    STATEFUL_SET,
    Apply,
    Body,
    Images,
    Owner,
    Plan,
    child_metadata,
    healthz_probe,
    rules,
    selector_labels,
    spec_hash,
    status_differs,
    status_with_conditions,
    transition_events,
)
from edgeadapt.controllers.modelzoo import gating_endpoint

RBAC_RULES = rules(
    (GROUP, "adaptationpolicies", "get list watch"),
    (GROUP, "adaptationpolicies/status", "get patch"),
    (GROUP, "modelzoos", "get list watch"),
    ("", "configmaps", "get list watch create patch"),
    ("", "services", "get list watch create patch"),
    ("apps", "statefulsets", "get list watch create patch"),
)

COMPONENT = "trainer"
CONFIG_FILE = "policy.json"


def trainer_name(policy: str) -> str:
    return f"{policy}-trainer"


def trainer_parameters(spec: Mapping[str, Any], namespace: str, images: Images) -> dict[str, Any]:
    """What the trainers read from their ConfigMap: the spec's algorithm parameters, resolved."""
    zoo = (spec.get("modelZooRef") or {}).get("name")
    return {
        "strategy": spec.get("strategy", "ams"),
        "ams": dict(spec.get("ams") or {}),
        "sampling": dict(spec.get("sampling") or {}),
        "scheduler": dict(spec.get("scheduler") or {}),
        "teacher": dict(spec.get("teacher") or {}),
        "gpu": dict(spec.get("gpu") or {}),
        "modelZoo": None
        if not zoo
        else {
            "name": zoo,
            "gatingEndpoint": gating_endpoint(zoo, namespace, images.cluster_domain),
        },
    }


def config_map(owner: Owner, params: Mapping[str, Any]) -> Body:
    data = {CONFIG_FILE: json.dumps(params, sort_keys=True, indent=2)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(
            owner, trainer_name(owner.name), keys.ADAPTATION_POLICY_LABEL, COMPONENT, data
        ),
        "data": data,
    }


def service(owner: Owner) -> Body:
    spec = {
        "clusterIP": "None",
        "publishNotReadyAddresses": False,
        "selector": selector_labels(keys.ADAPTATION_POLICY_LABEL, owner.name, COMPONENT),
        "ports": [
            {
                "name": "grpc",
                "port": keys.TRAINER_GRPC_PORT,
                "targetPort": "grpc",
                "protocol": "TCP",
            }
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(
            owner, trainer_name(owner.name), keys.ADAPTATION_POLICY_LABEL, COMPONENT, spec
        ),
        "spec": spec,
    }


# A trainer's CPU and memory unless spec.trainers.resources says otherwise: a GPU server's share.
DEFAULT_REQUESTS = {"cpu": "2", "memory": "8Gi"}
DEFAULT_LIMITS = {"memory": "16Gi"}


def trainer_resources(spec: Mapping[str, Any], gpus: int) -> dict[str, dict[str, str]]:
    """The trainer container's resources: spec.trainers.resources over the defaults, and the
    policy's GPUs as both request and limit."""
    given = ((spec.get("trainers") or {}).get("resources")) or {}
    requests = DEFAULT_REQUESTS | {k: str(v) for k, v in (given.get("requests") or {}).items()}
    limits = DEFAULT_LIMITS | {k: str(v) for k, v in (given.get("limits") or {}).items()}
    return {
        "requests": requests | {keys.GPU_RESOURCE: str(gpus)},
        "limits": limits | {keys.GPU_RESOURCE: str(gpus)},
    }


def stateful_set(
    owner: Owner, spec: Mapping[str, Any], replicas: int, config_hash: str, images: Images
) -> Body:
    gpus = int((spec.get("gpu") or {}).get("gpusPerTrainer", 1))
    labels = selector_labels(keys.ADAPTATION_POLICY_LABEL, owner.name, COMPONENT)
    name = trainer_name(owner.name)
    template = {
        "metadata": {
            "labels": labels | {keys.MANAGED_BY: keys.MANAGED_BY_VALUE},
            "annotations": {keys.CONFIG_HASH: config_hash},
        },
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "tolerations": [
                {"key": keys.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
            ],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
            "containers": [
                {
                    "name": "trainer",
                    "image": images.trainer,
                    "imagePullPolicy": images.pull_policy,
                    "command": ["python", "-m", "edgeadapt.trainer"],
                    "args": ["--config", f"/etc/edgeadapt/{CONFIG_FILE}"],
                    "env": [
                        {"name": "EDGEADAPT_POLICY", "value": owner.name},
                        {
                            "name": "EDGEADAPT_TRAINER_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                        },
                        {"name": "EDGEADAPT_NAMESPACE", "value": owner.namespace},
                    ],
                    "ports": [
                        {"name": "grpc", "containerPort": keys.TRAINER_GRPC_PORT},
                        {"name": "metrics", "containerPort": keys.METRICS_PORT},
                    ],
                    # The gRPC port speaks TLS, which the kubelet's gRPC probe does not; the
                    # trainer's HTTP endpoint reports the same serving state. Its /healthz
                    # answers 503 when a worker thread the trainer needs has died, and the
                    # liveness probe then has the kubelet restart it. The endpoint opens only
                    # after the teacher and student are loaded (30-60 s, more from a cold
                    # volume), so the startup probe allows 5 minutes before liveness counts.
                    "readinessProbe": {
                        "httpGet": {"path": "/healthz", "port": "metrics"},
                        "periodSeconds": 10,
                    },
                    "startupProbe": healthz_probe(period=10, failures=30),
                    "livenessProbe": healthz_probe(period=10, failures=3),
                    "resources": trainer_resources(spec, gpus),
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [
                        {"name": "config", "mountPath": "/etc/edgeadapt", "readOnly": True},
                        {"name": "work", "mountPath": "/var/lib/edgeadapt"},
                    ],
                }
            ],
            "volumes": [
                {"name": "config", "configMap": {"name": name}},
                {"name": "work", "emptyDir": {}},
            ],
        },
    }
    sts_spec = {
        "replicas": replicas,
        "serviceName": name,
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": labels},
        "template": template,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": child_metadata(owner, name, keys.ADAPTATION_POLICY_LABEL, COMPONENT, sts_spec),
        "spec": sts_spec,
    }


def decide(
    policy: Mapping[str, Any],
    *,
    zoo: Mapping[str, Any] | None,
    trainers_wanted: int,
    devices_bound: int,
    devices_unbound: int,
    statefulset: Mapping[str, Any] | None,
    images: Images,
    now: str,
) -> Plan:
    """Desired children and status of one AdaptationPolicy."""
    owner = Owner.of(ADAPTATION_POLICY, policy)
    spec = policy.get("spec") or {}
    gen = owner.generation
    suspended = bool(spec.get("suspend"))
    replicas = 0 if suspended else trainers_wanted

    params = trainer_parameters(spec, owner.namespace, images)
    cm = config_map(owner, params)
    plan = Plan(
        apply=[
            Apply(CONFIG_MAP, cm),
            Apply(SERVICE, service(owner)),
            Apply(
                STATEFUL_SET,
                stateful_set(owner, spec, replicas, spec_hash(cm["data"]), images),
            ),
        ]
    )

    sts_status = (statefulset or {}).get("status") or {}
    ready_trainers = int(sts_status.get("readyReplicas") or 0)
    sts_current = statefulset is not None and int(sts_status.get("observedGeneration") or 0) >= int(
        ((statefulset or {}).get("metadata") or {}).get("generation") or 0
    )
    want_hash = plan.apply[2].body["metadata"]["annotations"][keys.SPEC_HASH]
    sts_hash = (((statefulset or {}).get("metadata") or {}).get("annotations") or {}).get(
        keys.SPEC_HASH
    )
    rolled_out = (
        statefulset is not None
        and sts_current
        and sts_hash == want_hash
        and int(sts_status.get("updatedReplicas") or 0) >= replicas
    )
    trainers: tuple[Status, str, str]
    zoo_cond: tuple[Status, str, str]
    if rolled_out and ready_trainers >= replicas:
        trainers = ("True", Reason.SUCCEEDED, f"{ready_trainers}/{replicas} trainers ready")
    else:
        trainers = (
            "False",
            Reason.TRAINERS_PENDING,
            f"{ready_trainers}/{replicas} trainers ready" if rolled_out else "rolling out trainers",
        )

    zoo_name = (spec.get("modelZooRef") or {}).get("name")
    if not zoo_name:
        zoo_cond = ("True", Reason.NOT_REFERENCED, "the policy uses no ModelZoo")
    elif zoo is None:
        zoo_cond = (
            "False",
            Reason.MODEL_ZOO_NOT_FOUND,
            f'ModelZoo "{zoo_name}" not found in namespace "{owner.namespace}"',
        )
    elif not is_ready(zoo):
        zoo_cond = ("False", Reason.DEPENDENCY_NOT_READY, f'ModelZoo "{zoo_name}" is not Ready')
    else:
        zoo_cond = ("True", Reason.SUCCEEDED, f'ModelZoo "{zoo_name}" is Ready')

    conds: list[Condition] = []
    if suspended:
        conds.append(
            condition(READY, "False", Reason.SUSPENDED, "the policy is suspended", generation=gen)
        )
    elif zoo_cond[0] != "True":
        conds.append(condition(READY, "False", zoo_cond[1], zoo_cond[2], generation=gen))
        if zoo_cond[1] == Reason.MODEL_ZOO_NOT_FOUND:
            conds.append(condition(STALLED, "True", zoo_cond[1], zoo_cond[2], generation=gen))
    elif trainers[0] != "True":
        conds.append(condition(READY, "False", trainers[1], trainers[2], generation=gen))
    else:
        conds.append(
            condition(
                READY,
                "True",
                Reason.SUCCEEDED,
                f"{devices_bound} devices bound to {replicas} trainers",
                generation=gen,
            )
        )
    if not suspended and trainers[0] != "True":
        conds.append(
            condition(RECONCILING, "True", Reason.PROGRESSING, trainers[2], generation=gen)
        )
    conds.append(condition(TRAINERS_AVAILABLE, *trainers, generation=gen))
    conds.append(condition(MODEL_ZOO_RESOLVED, *zoo_cond, generation=gen))

    current = policy.get("status") or {}
    fields = {
        "trainers": replicas,
        "readyTrainers": ready_trainers,
        "devicesBound": devices_bound,
        "devicesUnbound": devices_unbound,
        "capacity": Capacity.of(spec).total,
    }
    status = status_with_conditions(current, conds, fields, generation=gen, now=now)
    if status_differs(current, status):
        plan.status = status
        plan.events = transition_events(current, status, "AdaptationPolicy")
    return plan
