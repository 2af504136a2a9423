"""``python -m edgeadapt.devcluster up|down|env``: the local control plane from a shell.

``up`` builds the programs if needed, starts the control plane with its processes detached,
writes ``<dir>/kubeconfig`` and returns; ``down`` stops it; ``env`` prints shell exports
(KUBECONFIG, PATH with kubectl/helm). The default dir is ``.cluster`` in the current folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgeadapt.devcluster.cluster import LocalCluster, NodePool, default_nodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeadapt.devcluster", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "env"])
    parser.add_argument("--dir", type=Path, default=Path(".cluster"), help="state folder")
    parser.add_argument("--edge-nodes", type=int, default=3, help="KubeEdge edge nodes")
    parser.add_argument("--gpu-nodes", type=int, default=2, help="GPU nodes (8 GPUs each)")
    args = parser.parse_args(argv)
    workdir = args.dir.resolve()
    state = workdir / "cluster.json"
    if args.action == "down":
        stopped = LocalCluster.stop_detached(workdir)
        print("stopped" if stopped else f"no cluster recorded in {workdir}")
        return 0
    if args.action == "env":
        if not state.exists():
            print(f"no cluster recorded in {workdir}", file=sys.stderr)
            return 1
        info = json.loads(state.read_text())
        print(f"export KUBECONFIG={info['kubeconfig']}")
        print(f"export PATH={info['bin_dir']}:$PATH")
        return 0
    if state.exists():
        print(f"a cluster is already recorded in {workdir}; run down first", file=sys.stderr)
        return 1
    cluster = LocalCluster(workdir)
    nodes = [
        NodePool("gpu", args.gpu_nodes, "gpu"),
        NodePool("edge", args.edge_nodes, "edge"),
        *[p for p in default_nodes() if p.kind == "system"],
    ]
    try:
        cluster.start(nodes)
    except BaseException:
        cluster.stop()
        raise
    print(f"control plane up at {cluster.server}")
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    print(f"export PATH={cluster.bin_dir}:$PATH")
    return 0


if __name__ == "__main__":
    sys.exit(main())
