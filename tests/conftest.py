"""Shared fixtures. ``local_cluster`` starts one real control plane for the whole session (the
integration and e2e tiers use it); the programs are built on first use and cached."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgeadapt.devcluster import LocalCluster


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("control-plane"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
