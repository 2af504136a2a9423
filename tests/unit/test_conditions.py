from __future__ import annotations

from edgeadapt.api.conditions import condition, is_ready, now_rfc3339, set_conditions


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
