"""Pieces every controller uses: the plan a decision returns, child identity, hashing, labels."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeadapt.api import keys
from edgeadapt.api.conditions import Condition, Reason, set_conditions
from edgeadapt.api.v1alpha1 import API_VERSION, Kind

Body = dict[str, Any]
Rule = dict[str, list[str]]


@dataclass(frozen=True)
class ChildKind:
    """A built-in kind the operator creates, and how to address it."""

    api_version: str
    kind: str
    plural: str

    def path(self, namespace: str, name: str | None = None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        base = f"{prefix}/namespaces/{namespace}/{self.plural}"
        return base if name is None else f"{base}/{name}"


POD = ChildKind("v1", "Pod", "pods")
SECRET = ChildKind("v1", "Secret", "secrets")
SERVICE = ChildKind("v1", "Service", "services")
CONFIG_MAP = ChildKind("v1", "ConfigMap", "configmaps")
PVC = ChildKind("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
DEPLOYMENT = ChildKind("apps/v1", "Deployment", "deployments")
STATEFUL_SET = ChildKind("apps/v1", "StatefulSet", "statefulsets")
CHILD_KINDS = (POD, SECRET, SERVICE, CONFIG_MAP, PVC, DEPLOYMENT, STATEFUL_SET)


@dataclass(frozen=True)
class Owner:
    """The custom resource a decision is about: enough to own children and write status."""

    kind: Kind
    namespace: str
    name: str
    uid: str
    generation: int

    @classmethod
    def of(cls, kind: Kind, body: Mapping[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(
            kind, meta["namespace"], meta["name"], meta["uid"], int(meta.get("generation", 1))
        )

    def reference(self) -> Body:
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class Images:
    """Container images and pull policy of the workloads, from the operator's settings."""

    trainer: str = "ghcr.io/edgeadapt/trainer:0.1.0"
    gating: str = "ghcr.io/edgeadapt/gating:0.1.0"
    edge_agent: str = "ghcr.io/edgeadapt/edge-agent:0.1.0"
    pull_policy: str = "IfNotPresent"
    cluster_domain: str = "cluster.local"


@dataclass
class Apply:
    """Make the child exist as ``body``.

    ``mode``: ``create`` creates it if absent and leaves an existing one alone; ``patch`` also
    merge-patches an existing one whose spec hash differs; ``replace`` deletes an existing one
    whose hash differs (for pods, whose spec cannot change) so that it is created afresh.
    """

    kind: ChildKind
    body: Body
    mode: str = "patch"

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])


@dataclass
class Delete:
    kind: ChildKind
    name: str


@dataclass
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Plan:
    """What one reconcile decided: children to apply or delete, the status, events to post."""

    apply: list[Apply] = field(default_factory=list)
    delete: list[Delete] = field(default_factory=list)
    status: Body = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


def spec_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able value."""
    raw = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def child_metadata(owner: Owner, name: str, owner_label: str, component: str, payload: Any) -> Body:
    """Metadata of a child: deterministic name, our labels, owner reference, spec hash."""
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": selector_labels(owner_label, owner.name, component)
        | {keys.MANAGED_BY: keys.MANAGED_BY_VALUE, keys.PART_OF: "edgeadapt"},
        "annotations": {keys.SPEC_HASH: spec_hash(payload)},
        "ownerReferences": [owner.reference()],
    }


def selector_labels(owner_label: str, owner_name: str, component: str) -> dict[str, str]:
    return {
        keys.NAME: component,
        keys.INSTANCE: owner_name,
        owner_label: owner_name,
    }


def status_with_conditions(
    current_status: Mapping[str, Any] | None,
    conditions: Sequence[Condition],
    fields: Mapping[str, Any],
    *,
    generation: int,
    now: str,
) -> Body:
    """The operator's part of a new status: observedGeneration, conditions, summary fields."""
    old = (current_status or {}).get("conditions") or []
    return {
        "observedGeneration": generation,
        "conditions": set_conditions(old, conditions, now=now),
        **fields,
    }


def status_differs(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """Whether writing ``desired`` (the operator's fields only) would change anything."""
    cur = current or {}
    return any(cur.get(k) != v for k, v in desired.items())


# Ready=False reasons that need someone's attention; the others are progress.
WARNING_REASONS = frozenset(
    {
        Reason.POLICY_NOT_FOUND,
        Reason.MODEL_ZOO_NOT_FOUND,
        Reason.NOT_SELECTED,
        Reason.NO_TRAINER_CAPACITY,
        Reason.AGENT_FAILED,
    }
)


def transition_events(
    current: Mapping[str, Any] | None, desired: Mapping[str, Any], kind: str
) -> list[Event]:
    """One event when the Ready condition changes status or reason. A new object's first,
    ordinary progress (no Ready condition yet, now Ready=False for a Normal reason) is not worth
    an event: at fleet scale that would be one write per object for nothing."""

    def ready(status: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
        for c in (status or {}).get("conditions") or []:
            if c.get("type") == "Ready":
                return c.get("status"), c.get("reason")
        return None, None

    before, after = ready(current), ready(desired)
    if before == after:
        return []
    status, reason = after
    message = next(
        (c.get("message", "") for c in desired.get("conditions", []) if c.get("type") == "Ready"),
        "",
    )
    etype = "Warning" if reason in WARNING_REASONS else "Normal"
    if before == (None, None) and status == "False" and etype == "Normal":
        return []
    return [Event(etype, str(reason), f"{kind} Ready={status}: {message}")]


def pod_ready(pod: Mapping[str, Any] | None) -> bool:
    """A pod that runs and whose Ready condition is True."""
    if not pod:
        return False
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def rules(*entries: tuple[str, str, str]) -> list[Rule]:
    """RBAC rules from (apiGroup, resource, space-separated verbs) triples."""
    return [
        {"apiGroups": [group], "resources": [resource], "verbs": verbs.split()}
        for group, resource, verbs in entries
    ]
