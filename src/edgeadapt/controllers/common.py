"""Pieces every controller uses: the plan a decision returns, child identity, hashing, labels."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeadapt.api import keys
from edgeadapt.api.conditions import (
    READY,
    RECONCILING,
    STALLED,
    Check,
    Condition,
    Reason,
    condition,
    set_conditions,
)
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
NETWORK_POLICY = ChildKind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")
CHILD_KINDS = (POD, SECRET, SERVICE, CONFIG_MAP, PVC, DEPLOYMENT, STATEFUL_SET, NETWORK_POLICY)
# Only where the chart enables cert-manager (``Images.cert_issuer``): the CRD may not exist.
CERTIFICATE = ChildKind("cert-manager.io/v1", "Certificate", "certificates")


@dataclass(frozen=True)
class IssuerRef:
    """The cert-manager issuer that signs the trainers' certificates (``Kind/name``, or
    ``Kind.group/name`` for an external issuer)."""

    kind: str
    name: str
    group: str = "cert-manager.io"

    @classmethod
    def parse(cls, text: str) -> IssuerRef:
        kind, sep, name = text.strip().partition("/")
        kind, _, group = kind.partition(".")
        if not sep or not kind or not name or "/" in name:
            raise ValueError(
                f"issuer {text!r}: expected Kind/name, e.g. ClusterIssuer/edgeadapt-ca"
            )
        return cls(kind, name, group or "cert-manager.io")

    def reference(self) -> Body:
        return {"name": self.name, "kind": self.kind, "group": self.group}


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
        """The children's ownerReference to this object.

        It does not set ``blockOwnerDeletion``. Setting it to true needs ``update`` on the owner
        kind's ``finalizers`` subresource (``edgedevices/finalizers`` and so on) where the
        OwnerReferencesPermissionEnforcement admission plugin is on, and the operator is not
        granted that (``RBAC_RULES``, the chart): it writes no finalizers. All it would buy is
        foreground deletion of an owner waiting for its children, which nobody here relies on;
        background deletion, the default, garbage-collects the children all the same.
        """
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
        }

    def controls(self, child: Mapping[str, Any]) -> bool:
        """Whether ``child`` (any object's body) names this object as its controller."""
        refs = (child.get("metadata") or {}).get("ownerReferences") or []
        return any(r.get("uid") == self.uid and r.get("controller") for r in refs)


@dataclass(frozen=True)
class Images:
    """Container images and pull policy of the workloads, from the operator's settings."""

    # One runtime image carries every torch process; each workload names its command.
    trainer: str = "ghcr.io/edgeadapt/runtime:0.1.0"
    gating: str = "ghcr.io/edgeadapt/runtime:0.1.0"
    edge_agent: str = "ghcr.io/edgeadapt/runtime:0.1.0"
    pull_policy: str = "IfNotPresent"
    cluster_domain: str = "cluster.local"
    # Edge agents keep their model under <this>/<namespace>/<device> on their node.
    agent_state_path: str = "/var/lib/edgeadapt/devices"
    # A NetworkPolicy per policy's trainers: gRPC from anywhere (agents), the HTTP port (/status,
    # /metrics) only from the operator's pods in its namespace and from ``metrics_namespace``.
    network_policy: bool = False
    operator_namespace: str = ""
    metrics_namespace: str = ""
    # Trainers' certificates from cert-manager (a Certificate per policy) instead of the
    # operator's own CA.
    cert_issuer: IssuerRef | None = None

    def child_kinds(self) -> tuple[ChildKind, ...]:
        """The kinds the operator creates, watches and lists with these settings."""
        return CHILD_KINDS + ((CERTIFICATE,) if self.cert_issuer is not None else ())


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


def spec_hash_of(body: Mapping[str, Any] | None) -> str | None:
    """The spec hash a child carries (our last write of it), if any."""
    annotations = ((body or {}).get("metadata") or {}).get("annotations") or {}
    value = annotations.get(keys.SPEC_HASH)
    return None if value is None else str(value)


def rolled_out(
    observed: Mapping[str, Any] | None, desired: Mapping[str, Any], replicas: int
) -> bool:
    """Whether a Deployment or StatefulSet runs ``desired``: its controller has seen the latest
    generation, the spec hash is ours, and ``replicas`` pods are of the current revision."""
    if observed is None:
        return False
    status = observed.get("status") or {}
    meta = observed.get("metadata") or {}
    return (
        int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        and spec_hash_of(observed) == spec_hash_of(desired)
        and int(status.get("updatedReplicas") or 0) >= replicas
    )


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
        Reason.MODEL_ZOO_MISMATCH,
        Reason.NOT_SELECTED,
        Reason.NO_TRAINER_CAPACITY,
        Reason.AGENT_FAILED,
        Reason.CHILD_APPLY_FAILED,
        Reason.MODEL_PROVISIONING_FAILED,
        Reason.UNAUTHENTICATED,
    }
)


def summary_conditions(
    checks: Sequence[Check], *, ready: str, generation: int, suspended: str | None = None
) -> list[Condition]:
    """Ready and kstatus's abnormal-true Reconciling or Stalled, the same way for every kind.

    ``checks`` are what the kind's readiness depends on, most fundamental first. All True:
    Ready=True with the ``ready`` message. Otherwise Ready=False with the first failing check's
    reason and message, plus ``Stalled`` (the first check that needs a person) or else
    ``Reconciling`` (reason ``Progressing``, or the check's own reason when it is an error that
    may clear: a refused write, a refused token). ``suspended``: only Ready=False, Suspended."""
    if suspended is not None:
        return [condition(READY, "False", Reason.SUSPENDED, suspended, generation=generation)]
    failing = [c for c in checks if not c.ok]
    if not failing:
        return [condition(READY, "True", Reason.SUCCEEDED, ready, generation=generation)]
    first = failing[0]
    out = [condition(READY, "False", first.reason, first.message, generation=generation)]
    stalled = next((c for c in failing if c.stalled), None)
    if stalled is not None:
        out.append(
            condition(STALLED, "True", stalled.reason, stalled.message, generation=generation)
        )
    else:
        reason = first.reason if first.reason in WARNING_REASONS else Reason.PROGRESSING
        out.append(condition(RECONCILING, "True", reason, first.message, generation=generation))
    return out


@dataclass(frozen=True)
class ChildFailure:
    """A write of a child that did not succeed: what was tried, on which child, and why.

    ``refused``: the API server answered no (a 4xx other than throttling: forbidden by a quota,
    an admission plugin or RBAC, invalid, a name taken by an object the owner does not control),
    which retrying alone will not change; otherwise it gave no usable answer (5xx, timeout)."""

    action: str  # create, patch or delete
    kind: str  # the child's kind, e.g. Pod
    name: str
    error: str  # what the API server said
    refused: bool = True

    def describe(self) -> str:
        return f'could not {self.action} {self.kind} "{self.name}": {self.error}'


MAX_FAILURE_MESSAGE = 4096


def child_failure_status(
    current_status: Mapping[str, Any] | None,
    decided_status: Mapping[str, Any] | None,
    failures: Sequence[ChildFailure],
    *,
    generation: int,
    now: str,
) -> Body:
    """The status to write when children could not be written.

    It is the decided status (or the current one, when the decision changed nothing) with Ready
    False for ``ChildApplyFailed``, the message naming every failed child and the API server's
    error, and ``Stalled`` when every failure is a refusal (someone has to act: raise the quota,
    remove the object in the way) or ``Reconciling`` when one may be transient. The
    kind's own conditions and summary fields stay as decided."""
    base = decided_status or current_status or {}
    message = "; ".join(f.describe() for f in failures)
    if len(message) > MAX_FAILURE_MESSAGE:
        message = message[: MAX_FAILURE_MESSAGE - 3] + "..."
    failed = Check("False", Reason.CHILD_APPLY_FAILED, message, all(f.refused for f in failures))
    conds = summary_conditions([failed], ready="", generation=generation)
    for c in base.get("conditions") or []:
        if c.get("type") not in (READY, RECONCILING, STALLED):
            kept = Condition(**c)  # type: ignore[typeddict-item]
            kept.pop("lastTransitionTime", None)
            conds.append(kept)
    fields = {k: v for k, v in base.items() if k not in ("conditions", "observedGeneration")}
    return status_with_conditions(current_status, conds, fields, generation=generation, now=now)


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


def http_probe(path: str, *, period: int, failures: int, timeout: int = 5) -> Body:
    """An HTTP probe of ``path`` (``/healthz`` or ``/readyz``, edgeadapt.telemetry) on the
    container's ``metrics`` port: it fails after ``failures`` consecutive failed checks
    ``period`` seconds apart."""
    return {
        "httpGet": {"path": path, "port": "metrics"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def hardened() -> Body:
    """The container security context of every workload: no privilege escalation, no
    capabilities, a read-only root file system (the pods mount what they write)."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def rules(*entries: tuple[str, str, str]) -> list[Rule]:
    """RBAC rules from (apiGroup, resource, space-separated verbs) triples."""
    return [
        {"apiGroups": [group], "resources": [resource], "verbs": verbs.split()}
        for group, resource, verbs in entries
    ]
