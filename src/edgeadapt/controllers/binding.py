"""Binding EdgeDevices to the trainers of their AdaptationPolicy, within GPU capacity.

A trainer serves ``gpusPerTrainer x devicesPerGPU`` devices and a policy runs at most
``maxReplicas`` trainers. Devices keep the trainer they hold while it stays within capacity, so a
new device never moves an old one. New devices fill the lowest-numbered trainer with a free slot,
which packs devices onto as few trainers (GPUs) as possible; the policy runs trainers 0..n-1 where
n-1 is the highest one in use. A restarted operator rebuilds the pool from the bindings the
devices' statuses show (``preferred``). A trainer that reports less free GPU memory than its
headroom is ``closed``: it takes no new devices, and those it serves stay.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeadapt.api.specs import AdaptationPolicySpec


@dataclass(frozen=True)
class Capacity:
    slots_per_trainer: int
    max_trainers: int

    @classmethod
    def of(cls, spec: AdaptationPolicySpec) -> Capacity:
        return cls(slots_per_trainer=spec.slots_per_trainer, max_trainers=spec.max_trainers)

    @property
    def total(self) -> int:
        return self.slots_per_trainer * self.max_trainers


@dataclass
class TrainerPool:
    """The bindings of one policy's devices. Pure bookkeeping, no I/O."""

    capacity: Capacity
    bound: dict[str, int] = field(default_factory=dict)
    load: dict[int, int] = field(default_factory=dict)
    closed: set[int] = field(default_factory=set)  # trainers that take no new devices (memory)

    def trainer_of(self, device: str) -> int | None:
        return self.bound.get(device)

    def bind(self, device: str, preferred: int | None = None) -> int | None:
        """The trainer index ``device`` is bound to, binding it if needed; None when full."""
        current = self.bound.get(device)
        if current is not None:
            return current
        cap = self.capacity
        if (
            preferred is not None
            and 0 <= preferred < cap.max_trainers
            and self.load.get(preferred, 0) < cap.slots_per_trainer
        ):
            return self._take(device, preferred)
        for index in range(cap.max_trainers):
            if index not in self.closed and self.load.get(index, 0) < cap.slots_per_trainer:
                return self._take(device, index)
        return None

    def release(self, device: str) -> bool:
        index = self.bound.pop(device, None)
        if index is None:
            return False
        self.load[index] -= 1
        if self.load[index] == 0:
            del self.load[index]
        return True

    def resize(self, capacity: Capacity) -> list[str]:
        """Apply a new capacity; returns the devices that lost their trainer (to be rebound)."""
        self.capacity = capacity
        evicted: list[str] = []
        per_trainer: dict[int, list[str]] = {}
        for device, index in sorted(self.bound.items()):
            per_trainer.setdefault(index, []).append(device)
        for index, devices in per_trainer.items():
            keep = 0 if index >= capacity.max_trainers else capacity.slots_per_trainer
            evicted.extend(devices[keep:])
        for device in evicted:
            self.release(device)
        return evicted

    @property
    def trainers_wanted(self) -> int:
        return max(self.load) + 1 if self.load else 0

    @property
    def devices_bound(self) -> int:
        return len(self.bound)

    def _take(self, device: str, index: int) -> int:
        self.bound[device] = index
        self.load[index] = self.load.get(index, 0) + 1
        return index


@dataclass
class Bindings:
    """Every policy's trainer pool and which policy each device names, per namespace: the state
    the EdgeDevice and AdaptationPolicy controllers share (devices bind, policies resize)."""

    pools: dict[tuple[str, str], TrainerPool] = field(default_factory=dict)
    devices_by_policy: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    device_ref: dict[tuple[str, str], str] = field(default_factory=dict)  # spec.policyRef
    device_policy: dict[tuple[str, str], str] = field(default_factory=dict)  # last bound under

    def refer(self, namespace: str, device: str, policy: str) -> None:
        """``device`` names ``policy`` in its spec now."""
        previous = self.device_ref.get((namespace, device))
        if previous == policy:
            return
        if previous is not None:
            self.devices_by_policy.get((namespace, previous), set()).discard(device)
        self.device_ref[(namespace, device)] = policy
        self.devices_by_policy.setdefault((namespace, policy), set()).add(device)

    def devices(self, namespace: str, policy: str) -> tuple[str, ...]:
        """The devices that name ``policy`` (bound or not)."""
        return tuple(self.devices_by_policy.get((namespace, policy), ()))

    def move(self, namespace: str, device: str, policy: str) -> str | None:
        """``device`` is decided under ``policy`` now; the policy whose pool released it by
        that, if another one held it."""
        old = self.device_policy.get((namespace, device))
        self.device_policy[(namespace, device)] = policy
        if old is None or old == policy:
            return None
        pool = self.pools.get((namespace, old))
        return old if pool is not None and pool.release(device) else None

    def forget_device(self, namespace: str, device: str) -> str | None:
        """``device`` is gone; the policy whose pool released it, if one held it."""
        ref = self.device_ref.pop((namespace, device), None)
        if ref is not None:
            self.devices_by_policy.get((namespace, ref), set()).discard(device)
        old = self.device_policy.pop((namespace, device), None)
        pool = self.pools.get((namespace, old)) if old is not None else None
        return old if pool is not None and pool.release(device) else None


def label_selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy a metav1.LabelSelector (matchLabels and matchExpressions)."""
    if not selector:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    return all(_requirement_met(expr, labels) for expr in selector.get("matchExpressions") or [])


def _requirement_met(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = expr["key"], expr["operator"], expr.get("values") or []
    present = key in labels
    if op == "In":
        return present and labels[key] in values
    if op == "NotIn":
        return not (present and labels[key] in values)
    if op == "Exists":
        return present
    return not present  # DoesNotExist
