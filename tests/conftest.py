"""Shared fixtures. ``local_cluster`` starts one real control plane for the whole session (the
integration and e2e tiers use it). Its programs are built from source on first use and cached
(``scripts/k8s-tools.sh``); the build runs once, before the first test, when any collected test
needs the control plane, so that it does not count against one test's time limit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeadapt.devcluster import LocalCluster
from edgeadapt.devcluster.cluster import build_tools

CONTROL_PLANE_MARKERS = ("integration", "e2e")
_bin_dir: list[Path] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    needs = any(
        item.get_closest_marker(m) is not None
        for item in session.items
        for m in CONTROL_PLANE_MARKERS
    )
    if needs and not session.config.option.collectonly:
        started = time.monotonic()
        _bin_dir.append(build_tools())
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"control-plane programs ready in {time.monotonic() - started:.0f}s: {_bin_dir[0]}"
            )


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(
        tmp_path_factory.mktemp("control-plane"), bin_dir=_bin_dir[0] if _bin_dir else None
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
