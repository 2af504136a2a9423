"""What a controller is, and the cache it observes.

One ``Controller`` per kind owns everything about that kind: which label its children carry (how
a child's watch event finds its owner), how storing or forgetting one of its objects changes
what else must be looked at (a policy's devices, a zoo's policies), how it observes the cache
into the inputs of its pure ``decide``, and the RBAC rules it needs. The generic manager
(``edgeadapt.operator.manager``) feeds the ``Cache`` from watch events, runs the work queue and
applies the ``Plan`` a controller returns; it knows no kind by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from edgeadapt.api.v1alpha1 import Kind
from edgeadapt.controllers import security
from edgeadapt.controllers.common import SECRET, Body, ChildKind, Images, Plan, Rule
from edgeadapt.controllers.observe import TrainerObservation
from edgeadapt.pki import KeyPair

Key = tuple[str, str, str]  # (plural, namespace, name)
Enqueue = Callable[[Key, float], None]


@dataclass
class Cache:
    """Slim copies of the three kinds and of their children, the trainers' last ``/status``
    answers, and the operator's CA: everything a controller observes. Fed by the manager."""

    images: Images
    enqueue: Enqueue
    objects: dict[Key, Body] = field(default_factory=dict)
    children: dict[Key, Body] = field(default_factory=dict)
    observations: dict[tuple[str, str, int], TrainerObservation] = field(default_factory=dict)
    # (namespace, zoo) -> its gating service's last /status answer (None: not reachable)
    zoo_status: dict[tuple[str, str], dict[str, Any] | None] = field(default_factory=dict)
    ca: KeyPair | None = None

    def get(self, kind: Kind, namespace: str, name: str | None) -> Body | None:
        return self.objects.get((kind.plural, namespace, name)) if name else None

    def child(self, kind: ChildKind, namespace: str, name: str) -> Body | None:
        return self.children.get((kind.plural, namespace, name))

    def queue(self, kind: Kind, namespace: str, name: str, delay: float = 0.0) -> None:
        self.enqueue((kind.plural, namespace, name), delay)

    def token_key(self, namespace: str, policy: str) -> bytes | None:
        """The policy's token key, once its Secret exists."""
        secret = self.child(SECRET, namespace, security.token_key_secret_name(policy))
        return security.token_key_of(secret)


@runtime_checkable
class Controller(Protocol):
    """One kind's controller (see the module's docstring)."""

    kind: Kind
    owner_label: str
    """The label every child of this kind carries, valued with the owner's name."""
    rbac: Sequence[Rule]
    ignores: tuple[ChildKind, ...]
    """Child kinds whose events it does not need (another child of it speaks for them)."""

    def stored(self, obj: Body) -> None:
        """An object of this kind was added or changed (``obj`` is its slim copy, cached)."""

    def forgotten(self, namespace: str, name: str) -> None:
        """An object of this kind was deleted (it has left the cache)."""

    def primed(self) -> None:
        """The start-up listing of everything is in the cache."""

    def reconcile(self, obj: Body) -> Plan:
        """Observe the cache and decide: the children and status ``obj`` should have."""
