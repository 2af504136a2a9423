"""``python -m edgeadapt.devcluster up/env/down``: one command starts a detached control plane
and writes its kubeconfig; one command stops it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeadapt.devcluster.cluster import REPO

pytestmark = pytest.mark.integration


def devcluster(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeadapt.devcluster", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env=os.environ | {"PYTHONPATH": str(REPO / "src")},
    )


def test_up_writes_a_kubeconfig_and_down_stops_every_process(tmp_path: Path) -> None:
    workdir = tmp_path / "cluster"
    up = devcluster("up", "--dir", str(workdir), "--edge-nodes", "2", "--gpu-nodes", "1")
    assert f"export KUBECONFIG={workdir / 'kubeconfig'}" in up.stdout
    state = json.loads((workdir / "cluster.json").read_text())
    pids = list(state["pids"].values())
    try:
        env = devcluster("env", "--dir", str(workdir)).stdout
        assert f"export KUBECONFIG={workdir / 'kubeconfig'}" in env
        nodes = subprocess.run(
            [f"{state['bin_dir']}/kubectl", f"--kubeconfig={workdir / 'kubeconfig'}", "get",
             "nodes", "-o", "name"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.split()  # fmt: skip
        assert sorted(nodes) == ["node/edge-0", "node/edge-1", "node/gpu-0", "node/system-0"]
        again = subprocess.run(
            [sys.executable, "-m", "edgeadapt.devcluster", "up", "--dir", str(workdir)],
            check=False, capture_output=True, text=True, timeout=60,
            env=os.environ | {"PYTHONPATH": str(REPO / "src")},
        )  # fmt: skip
        assert again.returncode == 1
        assert "already recorded" in again.stderr
    finally:
        assert devcluster("down", "--dir", str(workdir)).stdout.strip() == "stopped"
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
    assert not (workdir / "cluster.json").exists()
