from __future__ import annotations

import os

import pytest

from edgeadapt.operator.__main__ import kopf_arguments


def test_cluster_wide_by_default() -> None:
    assert kopf_arguments([]) == [
        "run", "--standalone", "-m", "edgeadapt.operator.handlers", "--all-namespaces",
    ]  # fmt: skip


def test_namespaces_are_passed_on_and_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEADAPT_WATCH_NAMESPACES", raising=False)
    args = kopf_arguments(["-n", "a", "--namespace=b", "--liveness=http://0.0.0.0:8080/healthz"])
    assert "--all-namespaces" not in args
    assert args[4:] == ["-n", "a", "--namespace=b", "--liveness=http://0.0.0.0:8080/healthz"]
    assert os.environ["EDGEADAPT_WATCH_NAMESPACES"] == "a,b"
