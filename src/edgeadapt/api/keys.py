"""Label, annotation and port names the operator puts on the objects it makes."""

from __future__ import annotations

from edgeadapt.api.v1alpha1 import GROUP

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "edgeadapt-operator"
NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
PART_OF = "app.kubernetes.io/part-of"

# Which custom resource a child belongs to (the owner's name); ownerReferences say the same to
# the garbage collector, the labels let the operator find children with one selector.
EDGE_DEVICE_LABEL = f"{GROUP}/edge-device"
MODEL_ZOO_LABEL = f"{GROUP}/model-zoo"
ADAPTATION_POLICY_LABEL = f"{GROUP}/adaptation-policy"

# Hash of a child's desired spec; a child whose hash differs from the desired one is rolled.
SPEC_HASH = f"{GROUP}/spec-hash"
# Hash of the trainer ConfigMap's data, stamped on the trainer pod template so edits roll it.
CONFIG_HASH = f"{GROUP}/config-hash"
# Fingerprint of the policy's token key on the trainer pod template: rotating the key rolls them.
TOKEN_KEY_HASH = f"{GROUP}/token-key-hash"

# KubeEdge's edge-node role label and taint.
EDGE_NODE_ROLE = "node-role.kubernetes.io/edge"
# The extended resource NVIDIA's device plugin advertises, and the taint GPU nodes usually carry.
GPU_RESOURCE = "nvidia.com/gpu"

TRAINER_GRPC_PORT = 50051
GATING_GRPC_PORT = 50052
METRICS_PORT = 9090
