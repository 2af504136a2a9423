"""A real local Kubernetes control plane for development, tests and benchmarks.

etcd, kube-apiserver (RBAC, service accounts, the default admission chain, audit log),
kube-controller-manager, kube-scheduler and kwok (simulated GPU and KubeEdge edge nodes), all as
local processes built from source by ``scripts/k8s-tools.sh``. ``python -m edgeadapt.devcluster
up`` starts one and writes its kubeconfig; ``down`` stops it.
"""

from edgeadapt.devcluster.cluster import LocalCluster, NodePool, default_nodes

__all__ = ["LocalCluster", "NodePool", "default_nodes"]
