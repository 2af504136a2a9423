from __future__ import annotations

from typing import Any

from edgeadapt.api.conditions import Check, condition, is_ready, now_rfc3339, set_conditions
from edgeadapt.controllers.common import summary_conditions


def test_transition_time_is_kept_unless_the_status_flips() -> None:
    first = set_conditions(
        [], [condition("Ready", "False", "AgentPending", "x", generation=1)], now="t1"
    )
    assert first[0]["lastTransitionTime"] == "t1"
    same = set_conditions(
        first, [condition("Ready", "False", "PolicyNotFound", "y", generation=2)], now="t2"
    )
    assert same[0]["lastTransitionTime"] == "t1"
    assert same[0]["reason"] == "PolicyNotFound"
    assert same[0]["observedGeneration"] == 2
    flipped = set_conditions(
        same, [condition("Ready", "True", "Succeeded", "", generation=2)], now="t3"
    )
    assert flipped[0]["lastTransitionTime"] == "t3"


def test_absent_types_are_removed() -> None:
    conds = set_conditions(
        [],
        [
            condition("Ready", "False", "AgentPending", "", generation=1),
            condition("Reconciling", "True", "Progressing", "", generation=1),
        ],
        now="t1",
    )
    after = set_conditions(
        conds, [condition("Ready", "True", "Succeeded", "", generation=1)], now="t2"
    )
    assert [c["type"] for c in after] == ["Ready"]


def test_is_ready_needs_the_current_generation() -> None:
    ready = {"type": "Ready", "status": "True"}
    obj = {
        "metadata": {"generation": 2},
        "status": {"observedGeneration": 1, "conditions": [ready]},
    }
    assert not is_ready(obj)
    obj["status"]["observedGeneration"] = 2  # type: ignore[index]
    assert is_ready(obj)


def test_timestamps_are_rfc3339_utc_seconds() -> None:
    stamp = now_rfc3339()
    assert stamp.endswith("Z")
    assert len(stamp) == len("2026-01-01T00:00:00Z")


def _summary(checks: list[Check], **kw: Any) -> dict[str, tuple[str, str, str]]:
    conds = summary_conditions(checks, ready="all good", generation=3, **kw)
    assert all(c["observedGeneration"] == 3 for c in conds)
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in conds}


def test_every_kind_summarises_readiness_the_same_way() -> None:
    ok = Check("True", "Succeeded", "fine")
    pending = Check("False", "AgentPending", "pod is Pending")
    refused = Check("False", "ChildApplyFailed", "create Pod x: quota", stalled=False)
    missing = Check("False", "PolicyNotFound", "no policy", stalled=True)
    assert _summary([ok, ok]) == {"Ready": ("True", "Succeeded", "all good")}
    # The first failing check names Ready; ordinary progress is Reconciling/Progressing.
    assert _summary([ok, pending, missing]) == {
        "Ready": ("False", "AgentPending", "pod is Pending"),
        "Stalled": ("True", "PolicyNotFound", "no policy"),  # any check needing a person
    }
    assert _summary([pending, ok]) == {
        "Ready": ("False", "AgentPending", "pod is Pending"),
        "Reconciling": ("True", "Progressing", "pod is Pending"),
    }
    # An error that may clear keeps its own reason on Reconciling.
    assert _summary([refused])["Reconciling"] == ("True", "ChildApplyFailed", "create Pod x: quota")
    assert _summary([missing, pending], suspended="suspended") == {
        "Ready": ("False", "Suspended", "suspended")
    }
