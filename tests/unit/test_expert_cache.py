"""The agent's expert cache and switching the edge model to a cached expert."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeadapt.adapt.ams import EdgeModel
from edgeadapt.adapt.update import model_checksum, parameter_vector
from edgeadapt.edge_agent.experts import INDEX, ExpertCache
from edgeadapt.models.zoo import build_student

N = 100


def vec(seed: int, n: int = N) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_least_recently_used_experts_leave_first_and_the_cache_survives_a_restart(
    tmp_path: Path,
) -> None:
    cache = ExpertCache(2, N, tmp_path)
    ca, cb, cc = (cache.put(e, vec(i)) for i, e in enumerate(("a", "b", "c")))
    assert [e for e, _ in cache.entries()] == ["b", "c"], "a was used least recently"
    assert cache.get("a", ca or 0) is None
    got = cache.get("b", cb or 0)
    assert got is not None
    assert torch.equal(got, vec(1))
    assert [e for e, _ in cache.entries()] == ["c", "b"], "a get makes it most recent"
    restarted = ExpertCache(2, N, tmp_path)
    assert restarted.entries() == [("c", cc), ("b", cb)]
    assert len(list(tmp_path.glob("*.pt"))) == 2, "evicted experts leave the disk"
    smaller = ExpertCache(1, N, tmp_path)
    assert [e for e, _ in smaller.entries()] == ["b"]


def test_a_corrupt_or_mismatched_expert_is_never_returned(tmp_path: Path) -> None:
    cache = ExpertCache(3, N, tmp_path)
    checksum = cache.put("a", vec(0))
    assert checksum == model_checksum(vec(0))
    assert cache.get("a", checksum ^ 1) is None, "another checksum is another model"
    path = next(tmp_path.glob("*.pt"))
    path.write_bytes(path.read_bytes()[:200])  # truncated on disk
    assert cache.get("a", checksum) is None
    assert cache.corrupt == 1
    assert cache.entries() == [], "a corrupt expert is dropped"
    (tmp_path / INDEX).write_text("not json")
    assert ExpertCache(3, N, tmp_path).entries() == []
    (tmp_path / INDEX).write_text(json.dumps([["ghost", 1]]))
    assert ExpertCache(3, N, tmp_path).entries() == [], "an entry without its file is gone"


def test_a_cache_of_size_zero_keeps_nothing_and_a_wrong_size_is_refused(tmp_path: Path) -> None:
    assert ExpertCache(0, N, tmp_path).put("a", vec(0)) is None
    with pytest.raises(ValueError, match="parameters"):
        ExpertCache(2, N, tmp_path).put("a", vec(0, N + 1))
    with pytest.raises(ValueError, match="negative"):
        ExpertCache(-1, N)
    memory = ExpertCache(1, N)
    checksum = memory.put("a", vec(0))
    assert checksum is not None
    assert memory.get("a", checksum) is not None


def test_the_edge_switches_only_from_its_version_to_the_named_checksum() -> None:
    edge = EdgeModel(build_student(3, width_mult=0.25))
    expert = parameter_vector(edge.active).clone() + 0.01
    checksum = model_checksum(expert)
    assert not edge.switch(expert, 2, 1, checksum), "the edge is at version 0, not 1"
    assert "edge is at 0" in edge.last_error
    assert not edge.switch(expert, 1, 0, checksum ^ 1)
    assert "checksum" in edge.last_error
    assert edge.rejected == 2
    assert edge.version == 0
    assert edge.switch(expert, 1, 0, checksum)
    assert edge.version == 1
    assert edge.checksum() == checksum
    assert torch.equal(parameter_vector(edge.inactive), expert), "both copies hold the expert"
