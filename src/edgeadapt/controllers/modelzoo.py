"""ModelZoo: the storage of the zoo's experts and the gating service that picks among them.

Children (deterministic names, owned by the ModelZoo):
- PersistentVolumeClaim ``<zoo>-store``: experts and the gating network; grows with
  ``spec.storage.size`` (a claim never shrinks, and the schema refuses a smaller size).
- Deployment ``<zoo>-gating``: the gating service, mounting the claim.
- Service ``<zoo>-gating``: its gRPC port, which the trainers of policies using the zoo call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgeadapt.api import keys
from edgeadapt.api.conditions import (
    GATING_AVAILABLE,
    STORAGE_BOUND,
    Check,
    Reason,
    Status,
    condition,
    now_rfc3339,
)
from edgeadapt.api.specs import AdaptationPolicySpec, ModelZooSpec
from edgeadapt.api.v1alpha1 import ADAPTATION_POLICY, GROUP, MODEL_ZOO, Kind
from edgeadapt.controllers.base import Cache
from edgeadapt.controllers.common import (
    DEPLOYMENT,
    POD,
    PVC,
    SERVICE,
    Apply,
    Body,
    ChildKind,
    Images,
    Owner,
    Plan,
    Rule,
    child_metadata,
    hardened,
    rolled_out,
    rules,
    selector_labels,
    status_differs,
    status_with_conditions,
    summary_conditions,
    transition_events,
)

RBAC_RULES = rules(
    (GROUP, "modelzoos", "get list watch"),
    (GROUP, "modelzoos/status", "get patch"),
    ("", "persistentvolumeclaims", "get list watch create patch"),
    ("", "services", "get list watch create patch"),
    ("apps", "deployments", "get list watch create patch"),
)

COMPONENT = "gating"
STORE_MOUNT = "/var/lib/edgeadapt/zoo"


def gating_name(zoo: str) -> str:
    return f"{zoo}-gating"


def store_name(zoo: str) -> str:
    return f"{zoo}-store"


def gating_endpoint(zoo: str, namespace: str, cluster_domain: str) -> str:
    return f"{gating_name(zoo)}.{namespace}.svc.{cluster_domain}:{keys.GATING_GRPC_PORT}"


def claim(owner: Owner, spec: ModelZooSpec) -> Body:
    pvc_spec: Body = {
        "accessModes": [spec.access_mode],
        "resources": {"requests": {"storage": spec.storage_size}},
    }
    if spec.storage_class:
        pvc_spec["storageClassName"] = spec.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": child_metadata(
            owner, store_name(owner.name), keys.MODEL_ZOO_LABEL, "store", pvc_spec
        ),
        "spec": pvc_spec,
    }


def deployment(owner: Owner, spec: ModelZooSpec, images: Images) -> Body:
    labels = selector_labels(keys.MODEL_ZOO_LABEL, owner.name, COMPONENT)
    env = {
        "EDGEADAPT_MODEL_ZOO": owner.name,
        "EDGEADAPT_NAMESPACE": owner.namespace,
        "EDGEADAPT_ZOO_DIR": STORE_MOUNT,
        "EDGEADAPT_TASK": spec.task,
        "EDGEADAPT_STUDENT": spec.student_architecture,
        "EDGEADAPT_GATING_TOP_K": str(spec.top_k),
        "EDGEADAPT_ADMISSION_MARGIN_ALPHA": str(spec.admission_margin_alpha),
        "EDGEADAPT_QUEUE_THRESHOLD_GAMMA": str(spec.queue_threshold_gamma),
        "EDGEADAPT_PRUNING_ETA": str(spec.pruning_eta),
        "EDGEADAPT_PRUNING_Q": str(spec.pruning_q),
    }
    dep_spec = {
        "replicas": spec.gating_replicas,
        "selector": {"matchLabels": labels},
        "strategy": {"type": "Recreate"}
        if spec.access_mode != "ReadWriteMany"
        else {"type": "RollingUpdate"},
        "template": {
            "metadata": {"labels": labels | {keys.MANAGED_BY: keys.MANAGED_BY_VALUE}},
            "spec": {
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
                "containers": [
                    {
                        "name": "gating",
                        "image": images.gating,
                        "imagePullPolicy": images.pull_policy,
                        "command": ["python", "-m", "edgeadapt.gating"],
                        "env": [{"name": k, "value": v} for k, v in env.items()],
                        "ports": [
                            {"name": "grpc", "containerPort": keys.GATING_GRPC_PORT},
                            {"name": "metrics", "containerPort": keys.METRICS_PORT},
                        ],
                        "readinessProbe": {
                            "grpc": {"port": keys.GATING_GRPC_PORT},
                            "periodSeconds": 10,
                        },
                        "resources": {
                            "requests": {"cpu": "500m", "memory": "1Gi"},
                            "limits": {"memory": "4Gi"},
                        },
                        "securityContext": hardened(),
                        "volumeMounts": [{"name": "store", "mountPath": STORE_MOUNT}],
                    }
                ],
                "volumes": [
                    {
                        "name": "store",
                        "persistentVolumeClaim": {"claimName": store_name(owner.name)},
                    }
                ],
            },
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(
            owner, gating_name(owner.name), keys.MODEL_ZOO_LABEL, COMPONENT, dep_spec
        ),
        "spec": dep_spec,
    }


def service(owner: Owner) -> Body:
    spec = {
        "type": "ClusterIP",
        "selector": selector_labels(keys.MODEL_ZOO_LABEL, owner.name, COMPONENT),
        "ports": [
            {"name": "grpc", "port": keys.GATING_GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"}
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(
            owner, gating_name(owner.name), keys.MODEL_ZOO_LABEL, COMPONENT, spec
        ),
        "spec": spec,
    }


def decide(
    zoo: Mapping[str, Any],
    *,
    pvc: Mapping[str, Any] | None,
    deployment_obs: Mapping[str, Any] | None,
    images: Images,
    now: str,
) -> Plan:
    """Desired children and status of one ModelZoo."""
    owner = Owner.of(MODEL_ZOO, zoo)
    spec = ModelZooSpec.of(zoo.get("spec"))
    gen = owner.generation
    dep = deployment(owner, spec, images)
    plan = Plan(
        apply=[
            Apply(PVC, claim(owner, spec)),
            Apply(DEPLOYMENT, dep),
            Apply(SERVICE, service(owner)),
        ]
    )

    phase = ((pvc or {}).get("status") or {}).get("phase")
    pvc_name = store_name(owner.name)
    storage: tuple[Status, str, str]
    gating: tuple[Status, str, str]
    if phase == "Bound":
        storage = ("True", Reason.SUCCEEDED, f"claim {pvc_name} is bound")
    else:
        storage = ("False", Reason.STORAGE_PENDING, f"claim {pvc_name} is {phase or 'absent'}")

    want = int(dep["spec"]["replicas"])
    dstatus = (deployment_obs or {}).get("status") or {}
    available = int(dstatus.get("availableReplicas") or 0)
    if rolled_out(deployment_obs, dep, want) and available >= want:
        gating = ("True", Reason.SUCCEEDED, f"{available}/{want} gating pods available")
    else:
        gating = ("False", Reason.GATING_PENDING, f"{available}/{want} gating pods available")

    conds = summary_conditions(
        [Check(*storage), Check(*gating)],
        ready="storage bound, gating available",
        generation=gen,
    )
    conds.append(condition(STORAGE_BOUND, *storage, generation=gen))
    conds.append(condition(GATING_AVAILABLE, *gating, generation=gen))

    current = zoo.get("status") or {}
    status = status_with_conditions(
        current,
        conds,
        {"readyReplicas": int(dstatus.get("readyReplicas") or 0)},
        generation=gen,
        now=now,
    )
    if status_differs(current, status):
        plan.status = status
        plan.events = transition_events(current, status, "ModelZoo")
    return plan


@dataclass
class ModelZooController:
    """ModelZoos: observes the zoo's claim and gating Deployment for ``decide``; a zoo's change
    makes the policies that name it look again (their ``ModelZooResolved``)."""

    cache: Cache
    kind: Kind = MODEL_ZOO
    owner_label: str = keys.MODEL_ZOO_LABEL
    rbac: Sequence[Rule] = tuple(RBAC_RULES)
    ignores: tuple[ChildKind, ...] = (POD,)  # gating pods: their Deployment speaks for them

    def stored(self, obj: Body) -> None:
        self._queue_policies(obj["metadata"]["namespace"], obj["metadata"]["name"])

    def forgotten(self, namespace: str, name: str) -> None:
        self._queue_policies(namespace, name)

    def primed(self) -> None:
        pass

    def reconcile(self, zoo: Body) -> Plan:
        ns, name = zoo["metadata"]["namespace"], zoo["metadata"]["name"]
        return decide(
            zoo,
            pvc=self.cache.child(PVC, ns, store_name(name)),
            deployment_obs=self.cache.child(DEPLOYMENT, ns, gating_name(name)),
            images=self.cache.images,
            now=now_rfc3339(),
        )

    def _queue_policies(self, ns: str, zoo: str) -> None:
        for (plural, pns, name), policy in list(self.cache.objects.items()):
            if (
                plural == ADAPTATION_POLICY.plural
                and pns == ns
                and AdaptationPolicySpec.of(policy["spec"]).model_zoo == zoo
            ):
                self.cache.queue(ADAPTATION_POLICY, ns, name)
