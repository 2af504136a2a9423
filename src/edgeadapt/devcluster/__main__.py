"""``python -m edgeadapt.devcluster up|down|env|images``: the local cluster from a shell.

``up`` builds the programs if needed, starts the control plane with its processes detached,
writes ``<dir>/kubeconfig`` and returns; ``down`` stops it; ``env`` prints shell exports
(KUBECONFIG, PATH with kubectl/helm). The default dir is ``.cluster`` in the current folder.

``up --real-node`` adds a real node: containerd, runc and CNI under a kubelet, kube-proxy and
CoreDNS (root and scripts/node-host.sh's Debian packages needed), with the project's images built
(``images``: build them alone and print their figures) and imported, so pods' containers run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from edgeadapt.devcluster import images
from edgeadapt.devcluster.cluster import LocalCluster, NodePool, default_nodes
from edgeadapt.devcluster.node import NodeError, RealNodeSpec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeadapt.devcluster", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "env", "images"])
    parser.add_argument("--dir", type=Path, default=Path(".cluster"), help="state folder")
    parser.add_argument("--edge-nodes", type=int, default=None,
                        help="simulated edge nodes (default 3; 0 with --real-node)")  # fmt: skip
    parser.add_argument("--gpu-nodes", type=int, default=None,
                        help="simulated GPU nodes (default 2; 0 with --real-node)")  # fmt: skip
    parser.add_argument("--real-node", action="store_true",
                        help="also start a real kubelet node; it plays the examples' edge node "
                        "edge-0 (KubeEdge edge label, Jetson) and a GPU node")  # fmt: skip
    parser.add_argument("--node-name", default="edge-0", help="the real node's name")
    parser.add_argument("--node-gpus", type=int, default=1,
                        help="nvidia.com/gpu the real node advertises")  # fmt: skip
    parser.add_argument("--node-edge-taint", action="store_true",
                        help="also taint it as KubeEdge edge nodes are (then only edge workloads "
                        "run there)")  # fmt: skip
    parser.add_argument("--no-images", action="store_true",
                        help="do not build or import the project's images")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workdir = args.dir.resolve()
    if args.action == "images":
        return _images()
    if args.action == "down":
        stopped = LocalCluster.stop_detached(workdir)
        print("stopped" if stopped else f"no cluster recorded in {workdir}")
        return 0
    if args.action == "env":
        return _env(workdir)
    return _up(args, workdir)


def _images() -> int:
    started = time.monotonic()
    try:
        built = images.build()
    except images.BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    for report in images.reports(built):
        print(json.dumps(report))
    print(f"images ready in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return 0


def _env(workdir: Path) -> int:
    state = workdir / "cluster.json"
    if not state.exists():
        print(f"no cluster recorded in {workdir}", file=sys.stderr)
        return 1
    info = json.loads(state.read_text())
    print(f"export KUBECONFIG={info['kubeconfig']}")
    print(f"export PATH={info['bin_dir']}:$PATH")
    return 0


def _up(args: argparse.Namespace, workdir: Path) -> int:
    if (workdir / "cluster.json").exists():
        print(f"a cluster is already recorded in {workdir}; run down first", file=sys.stderr)
        return 1
    spec = None
    if args.real_node:
        spec = RealNodeSpec(
            name=args.node_name,
            gpus=args.node_gpus,
            edge=True,
            edge_taint=args.node_edge_taint,
        )
    cluster = LocalCluster(workdir, real_node=spec, node_images=not args.no_images)
    # With a real node, pods should land on it: no simulated nodes unless asked for.
    gpu_nodes = args.gpu_nodes if args.gpu_nodes is not None else (0 if args.real_node else 2)
    edge_nodes = args.edge_nodes if args.edge_nodes is not None else (0 if args.real_node else 3)
    nodes = [
        NodePool("gpu", gpu_nodes, "gpu"),
        NodePool("edge", edge_nodes, "edge"),
        *[p for p in default_nodes() if p.kind == "system" and not args.real_node],
    ]
    started = time.monotonic()
    try:
        cluster.start(nodes)
    except (NodeError, images.BuildError) as exc:
        cluster.stop()
        print(f"devcluster up: {exc}", file=sys.stderr)
        return 1
    except BaseException:
        cluster.stop()
        raise
    print(f"control plane up at {cluster.server} in {time.monotonic() - started:.0f}s")
    if cluster.node is not None:
        t = cluster.node.timings
        print(
            f"real node {cluster.node.spec.name} ({cluster.node.ip}) Ready: kubelet "
            f"{t['kubelet_ready_s']:.0f}s, images imported in {t['images_import_s']:.0f}s"
        )
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    print(f"export PATH={cluster.bin_dir}:$PATH")
    return 0


if __name__ == "__main__":
    sys.exit(main())
