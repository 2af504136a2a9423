"""The operator's cache bookkeeping, without an API server (no request is sent)."""

from __future__ import annotations

import asyncio
from typing import Any

from edgeadapt.api.keys import MODEL_ZOO_LABEL as ZOO
from edgeadapt.controllers.base import Controller
from edgeadapt.operator.manager import Manager, slim


def body(kind: str, ns: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "edgeadapt.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns, "uid": f"{ns}/{name}", "generation": 1},
        "spec": spec,
    }


def test_devices_are_tracked_per_namespace_and_policy() -> None:
    async def scenario() -> tuple[Manager, set[str]]:
        mgr = Manager(kube=None)  # type: ignore[arg-type]
        for ns in ("a", "b"):
            mgr.on_event("adaptationpolicies", None, body("AdaptationPolicy", ns, "p"))
            mgr.on_event(
                "edgedevices", None, body("EdgeDevice", ns, "cam", policyRef={"name": "p"})
            )
        mgr.on_event("edgedevices", "DELETED", body("EdgeDevice", "a", "cam"))
        still_there = set(mgr.bindings.devices_by_policy[("b", "p")])
        mgr.on_event(
            "edgedevices", "MODIFIED", body("EdgeDevice", "b", "cam", policyRef={"name": "q"})
        )
        return mgr, still_there

    mgr, still_there = asyncio.run(scenario())
    assert still_there == {"cam"}  # deleting a/cam leaves b/cam alone
    assert mgr.bindings.devices_by_policy[("a", "p")] == set()
    assert mgr.bindings.devices_by_policy[("b", "p")] == set()
    assert mgr.bindings.devices_by_policy[("b", "q")] == {"cam"}
    assert ("edgedevices", "a", "cam") not in mgr.cache.objects
    assert set(mgr.bindings.pools) == {("a", "p"), ("b", "p")}


def test_child_events_queue_the_owner_and_keep_only_what_is_read() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "cam-agent",
            "namespace": "a",
            "labels": {"edgeadapt.io/edge-device": "cam"},
            "annotations": {"edgeadapt.io/spec-hash": "h", "other": "x" * 1000},
        },
        "spec": {"nodeName": "edge-0", "containers": [{"name": "c"}]},
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "PodScheduled", "status": "True"},
            ],
            "containerStatuses": [{"name": "c"}],
        },
    }
    assert slim(pod, child=True) == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "cam-agent",
            "namespace": "a",
            "labels": {"edgeadapt.io/edge-device": "cam"},
            "annotations": {"edgeadapt.io/spec-hash": "h"},
        },
        "spec": {"nodeName": "edge-0"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }

    async def scenario() -> int:
        mgr = Manager(kube=None)  # type: ignore[arg-type]
        mgr.on_event("pods", "ADDED", pod)
        mgr.on_event("pods", "MODIFIED", pod)  # the same owner is queued once
        gating = {"metadata": {"name": "z-gating-1", "namespace": "a", "labels": {ZOO: "z"}}}
        mgr.on_event("pods", "ADDED", gating)  # its Deployment speaks for it: ignored
        assert ("pods", "a", "z-gating-1") not in mgr.cache.children
        return len(mgr.queue)

    assert asyncio.run(scenario()) == 1


def test_each_kind_has_one_controller_owning_its_label_and_rules() -> None:
    mgr = Manager(kube=None)  # type: ignore[arg-type]
    assert set(mgr.controllers) == {"edgedevices", "adaptationpolicies", "modelzoos"}
    labels = [c.owner_label for c in mgr.controllers.values()]
    assert len(set(labels)) == 3
    for plural, controller in mgr.controllers.items():
        assert isinstance(controller, Controller)
        assert controller.kind.plural == plural
        # A controller may read and write the status of its own kind.
        assert {"apiGroups": ["edgeadapt.io"], "resources": [f"{plural}/status"],
                "verbs": ["get", "patch"]} in controller.rbac  # fmt: skip
