"""Shared fixtures. ``local_cluster`` starts one real control plane for the whole session (the
integration and e2e tiers use it). Its programs are built from source on first use and cached
(``scripts/k8s-tools.sh``); the build runs once, before the first test, when any collected test
needs the control plane, so that it does not count against one test's time limit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeadapt.devcluster import LocalCluster, images
from edgeadapt.devcluster.cluster import NODE_PROGRAMS, PROGRAMS, build_tools
from edgeadapt.devcluster.node import RealNodeSpec

CONTROL_PLANE_MARKERS = ("integration", "e2e", "node")
_bin_dir: list[Path] = []
# The real-node tier: the examples pin one EdgeDevice to the node edge-0 and place the other on a
# Jetson edge node; the real node is both, and advertises a GPU for the trainer.
REAL_NODE = RealNodeSpec(name="edge-0", gpus=2, edge=True)  # two trainers fit


def pytest_collection_finish(session: pytest.Session) -> None:
    needs = any(
        item.get_closest_marker(m) is not None
        for item in session.items
        for m in CONTROL_PLANE_MARKERS
    )
    real_node = any(item.get_closest_marker("node") is not None for item in session.items)
    if needs and not session.config.option.collectonly:
        started = time.monotonic()
        _bin_dir.append(build_tools(PROGRAMS + (NODE_PROGRAMS if real_node else ())))
        if real_node:  # outside any test's time limit too: the first build takes minutes
            images.build()
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


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A control plane whose one node is a real kubelet (containerd, runc, CNI, kube-proxy,
    CoreDNS) running the project's images, built first if their content changed. Module-scoped:
    its pods stop with the module, before other tiers run."""
    cluster = LocalCluster(
        tmp_path_factory.mktemp("real-node"),
        bin_dir=_bin_dir[0] if _bin_dir else None,
        real_node=REAL_NODE,
    )
    try:
        cluster.start(nodes=[])
        yield cluster
    finally:
        cluster.stop()
