"""A real node that cannot come up says which step failed and where its log is, without hanging:
an image that does not build, containerd that does not start, a kubelet that does not register."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from edgeadapt.devcluster import LocalCluster, images
from edgeadapt.devcluster.node import NodeError, RealNodeSpec

pytestmark = pytest.mark.node


def test_an_image_that_does_not_build_names_the_image_and_its_log(tmp_path: Path) -> None:
    (tmp_path / "images" / "broken").mkdir(parents=True)
    (tmp_path / "images" / "broken" / "Dockerfile").write_text(
        "ARG BASE=python:3.11-slim\nFROM ${BASE}\nRUN python3 -c 'raise SystemExit(\"no wheel\")'\n"
    )
    started = time.monotonic()
    with pytest.raises(images.BuildError) as raised:
        images.build(log_dir=tmp_path / "logs", root=tmp_path)
    message = str(raised.value)
    assert "building image broken failed" in message
    assert str(tmp_path / "logs" / "broken.log") in message
    assert "no wheel" in (tmp_path / "logs" / "broken.log").read_text()
    assert time.monotonic() - started < 120


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Path:
    return tmp_path / "cluster"


def _start(cluster: LocalCluster, timeout: float) -> NodeError:
    started = time.monotonic()
    try:
        with pytest.raises(NodeError) as raised:
            cluster.start(nodes=[], timeout=timeout)
    finally:
        cluster.stop()
    assert time.monotonic() - started < timeout + 90
    return raised.value


def test_containerd_that_does_not_start_names_the_step_and_its_log(
    cluster_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    (fake / "containerd").write_text(
        "#!/bin/sh\necho 'containerd: cannot open the store' >&2\nexit 1\n"
    )
    (fake / "containerd").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    cluster = LocalCluster(cluster_dir, real_node=RealNodeSpec(), node_images=False)
    error = _start(cluster, timeout=60)
    assert "starting containerd" in str(error)
    assert str(cluster_dir / "logs" / "containerd.log") in str(error)
    assert "cannot open the store" in str(error)


def test_a_kubelet_that_does_not_register_names_the_step_and_its_log(cluster_dir: Path) -> None:
    # A node name the API server refuses (not a DNS-1123 subdomain): the kubelet runs, but its
    # node never registers.
    cluster = LocalCluster(cluster_dir, real_node=RealNodeSpec(name="Bad_Name"), node_images=False)
    error = _start(cluster, timeout=30)
    assert "the kubelet registering node Bad_Name" in str(error)
    assert str(cluster_dir / "logs" / "kubelet.log") in str(error)
