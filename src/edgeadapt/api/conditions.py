"""Condition types and reasons, and the one helper that changes a condition list.

Conditions follow ``metav1.Condition`` and kstatus: ``Ready`` on every kind; ``Reconciling`` and
``Stalled`` are abnormal-true and are removed rather than set False.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, TypedDict

Status = Literal["True", "False", "Unknown"]


class Condition(TypedDict, total=False):
    type: str
    status: Status
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: int


# Types shared by every kind.
READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
# EdgeDevice.
TRAINER_BOUND = "TrainerBound"
AGENT_READY = "AgentReady"
AGENT_CONNECTED = "AgentConnected"
MODEL_DEPLOYED = "ModelDeployed"
BANDWIDTH_LIMITED = "BandwidthLimited"  # informative: never holds Ready back
# ModelZoo.
STORAGE_BOUND = "StorageBound"
GATING_AVAILABLE = "GatingAvailable"
# AdaptationPolicy.
TRAINERS_AVAILABLE = "TrainersAvailable"
MODEL_ZOO_RESOLVED = "ModelZooResolved"


class Reason:
    """Condition reasons (CamelCase, for machines; the message is for people)."""

    SUCCEEDED = "Succeeded"
    """Everything the condition covers is as wanted."""
    PROGRESSING = "Progressing"
    """Children exist and are on their way (pods pending, rollouts under way)."""
    SUSPENDED = "Suspended"
    """spec.suspend is true: the operator keeps no workload running."""
    DEPENDENCY_NOT_READY = "DependencyNotReady"
    """A referenced object exists but is not Ready yet."""
    POLICY_NOT_FOUND = "PolicyNotFound"
    """The AdaptationPolicy named by spec.policyRef does not exist."""
    MODEL_ZOO_NOT_FOUND = "ModelZooNotFound"
    """The ModelZoo named by spec.modelZooRef does not exist."""
    MODEL_ZOO_MISMATCH = "ModelZooMismatch"
    """The ModelZoo holds experts of another architecture than the policy's student, so the
    policy's trainers could not run them (strategies recl and ams+recl)."""
    NOT_SELECTED = "NotSelected"
    """The policy the device names does not select it (its deviceSelector does not match)."""
    NO_TRAINER_CAPACITY = "NoTrainerCapacity"
    """Every trainer slot of the policy (maxReplicas x gpusPerTrainer x devicesPerGPU) is taken."""
    AGENT_PENDING = "AgentPending"
    """The edge-agent pod exists but is not running and ready."""
    AGENT_FAILED = "AgentFailed"
    """The edge-agent pod failed; it is replaced."""
    TRAINERS_PENDING = "TrainersPending"
    """Fewer trainer pods are ready than the policy wants."""
    STORAGE_PENDING = "StoragePending"
    """The zoo's claim is not bound to a volume."""
    GATING_PENDING = "GatingPending"
    """The gating Deployment has fewer available pods than wanted."""
    NOT_REFERENCED = "NotReferenced"
    """The policy names no ModelZoo, so there is nothing to resolve."""
    NOT_CONNECTED = "NotConnected"
    """The trainer is reachable and has no stream from the device's agent."""
    UNAUTHENTICATED = "Unauthenticated"
    """The trainer refused the agent's last call: its token is missing or wrong (the operator
    re-mints it from the policy's key)."""
    TRAINER_UNAVAILABLE = "TrainerUnavailable"
    """The device's trainer is not ready, or its /status did not answer."""
    MODEL_BEHIND = "ModelBehind"
    """The agent runs an older version than the trainer's current one (more than the update in
    flight), or one whose checksum differs from the trainer's for that version."""
    BUDGET_BELOW_POLICY = "BudgetBelowPolicy"
    """The device's link budget holds its sampling rate, update fraction or update interval
    below what the policy's parameters ask for; the message names which."""
    WITHIN_BUDGET = "WithinBudget"
    """The stream runs at the policy's parameters inside the device's link budget."""
    WAITING_FOR_CREDENTIALS = "WaitingForCredentials"
    """The policy's token key or TLS material does not exist yet."""
    MODEL_PROVISIONING_FAILED = "ModelProvisioningFailed"
    """A trainer could not fetch, verify or train the policy's teacher or student; the message
    names the source and the error."""
    CHILD_APPLY_FAILED = "ChildApplyFailed"
    """The API server refused (or did not answer) a write of a child; the message names the
    child and the error. Retried with backoff; the status recovers once the write succeeds."""


class Check(NamedTuple):
    """One thing a kind's readiness depends on, as observed: a condition's status, reason and
    message, and whether, when not True, it needs a person to act (kstatus ``Stalled``) rather
    than time (``Reconciling``)."""

    status: Status
    reason: str
    message: str
    stalled: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "True"


def now_rfc3339(now: datetime | None = None) -> str:
    """A timestamp as the API server writes them: UTC, seconds, 'Z'."""
    t = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    type_: str, status: Status, reason: str, message: str, *, generation: int
) -> Condition:
    """A condition without its transition time (set_conditions stamps that)."""
    return Condition(
        type=type_, status=status, reason=reason, message=message, observedGeneration=generation
    )


def set_conditions(
    current: Sequence[Mapping[str, Any]], desired: Iterable[Condition], *, now: str
) -> list[Condition]:
    """The new condition list: ``desired`` in order, each keeping the old lastTransitionTime
    unless its status flipped. Types absent from ``desired`` are dropped (this is how kstatus's
    abnormal-true Reconciling/Stalled are removed)."""
    old = {str(c.get("type")): c for c in current}
    out: list[Condition] = []
    for cond in desired:
        prev = old.get(cond["type"])
        new = Condition(**cond)
        if (
            prev is not None
            and prev.get("status") == cond["status"]
            and prev.get("lastTransitionTime")
        ):
            new["lastTransitionTime"] = str(prev["lastTransitionTime"])
        else:
            new["lastTransitionTime"] = now
        out.append(new)
    return out


def get_condition(status: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c  # type: ignore[no-any-return]
    return None


def is_ready(obj: Mapping[str, Any]) -> bool:
    """kstatus: Ready is True and the status describes the current generation."""
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    ready = get_condition(status, READY)
    return (
        ready is not None
        and ready.get("status") == "True"
        and status.get("observedGeneration") == generation
    )
