from __future__ import annotations

from edgeadapt.api.specs import AdaptationPolicySpec
from edgeadapt.controllers.binding import Capacity, TrainerPool, label_selector_matches


def test_devices_pack_onto_the_fewest_trainers_within_capacity() -> None:
    pool = TrainerPool(Capacity(slots_per_trainer=2, max_trainers=2))
    assert [pool.bind(d) for d in ("a", "b", "c", "d")] == [0, 0, 1, 1]
    assert pool.bind("e") is None
    assert pool.trainers_wanted == 2
    assert pool.devices_bound == 4


def test_binding_is_stable_and_freed_slots_are_reused() -> None:
    pool = TrainerPool(Capacity(slots_per_trainer=1, max_trainers=3))
    for d in ("a", "b", "c"):
        pool.bind(d)
    assert pool.bind("b") == 1  # already bound: unchanged
    assert pool.release("a")
    assert not pool.release("a")
    assert pool.bind("z") == 0
    assert pool.trainer_of("c") == 2


def test_preferred_trainer_is_honoured_when_it_has_room() -> None:
    pool = TrainerPool(Capacity(slots_per_trainer=1, max_trainers=3))
    assert pool.bind("x", preferred=2) == 2
    assert pool.bind("y", preferred=2) == 0  # full: next free
    assert pool.bind("w", preferred=7) == 1  # out of range: ignored
    assert pool.trainers_wanted == 3


def test_shrinking_capacity_evicts_the_devices_over_it() -> None:
    pool = TrainerPool(Capacity(slots_per_trainer=3, max_trainers=2))
    for d in ("a", "b", "c", "d", "e"):
        pool.bind(d)
    evicted = pool.resize(Capacity(slots_per_trainer=2, max_trainers=1))
    assert sorted(evicted) == ["c", "d", "e"]
    assert sorted(pool.bound) == ["a", "b"]
    assert pool.trainers_wanted == 1


def test_capacity_comes_from_the_policy_spec_with_schema_defaults() -> None:
    spec = {"gpu": {"gpusPerTrainer": 2, "devicesPerGPU": 9}, "trainers": {"maxReplicas": 3}}
    cap = Capacity.of(AdaptationPolicySpec.of(spec))
    assert (cap.slots_per_trainer, cap.max_trainers, cap.total) == (18, 3, 54)
    assert Capacity.of(AdaptationPolicySpec.of({})).total == 8 * 4


def test_label_selector_semantics() -> None:
    labels = {"site": "downtown", "tier": "a"}
    assert label_selector_matches(None, labels)
    assert label_selector_matches({"matchLabels": {"site": "downtown"}}, labels)
    assert not label_selector_matches({"matchLabels": {"site": "uptown"}}, labels)
    expr = {"key": "tier", "operator": "In", "values": ["a", "b"]}
    assert label_selector_matches({"matchExpressions": [expr]}, labels)
    assert not label_selector_matches(
        {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}, labels
    )
    assert label_selector_matches(
        {"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}, labels
    )
    assert not label_selector_matches(
        {"matchExpressions": [{"key": "x", "operator": "Exists"}]}, labels
    )


def test_a_trainer_short_of_gpu_memory_takes_no_new_devices_and_keeps_its_own() -> None:
    pool = TrainerPool(Capacity(slots_per_trainer=2, max_trainers=3))
    assert pool.bind("a") == 0
    pool.closed = {0}
    assert pool.bind("b") == 1, "trainer 0 has a free slot but reports low GPU memory"
    assert pool.bind("a") == 0, "a device it serves stays"
    assert pool.bind("c", preferred=0) == 0, "a device it served before a restart stays too"
    pool.closed = {0, 1, 2}
    assert pool.bind("d") is None
    pool.closed = set()
    assert pool.bind("d") == 1
