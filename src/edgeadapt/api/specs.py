"""Typed views of the three kinds' ``spec``, read after the CRD's own defaults are applied.

``EdgeDeviceSpec.of(body["spec"])`` and its siblings are how the controllers read a spec: the
schema's defaults come from the CRD (``schema.defaulted``), so a field the CRD defaults is never
defaulted again here, and a field renamed in the CRD fails here, in one place. Algorithm
parameters the trainers read as a whole (``ams``, ``sampling``) and shapes the controllers pass
on unchanged (``resources``, ``deviceSelector``, a weights source) stay mappings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeadapt.api.schema import defaulted
from edgeadapt.api.v1alpha1 import ADAPTATION_POLICY, EDGE_DEVICE, MODEL_ZOO


@dataclass(frozen=True)
class EdgeDeviceSpec:
    policy: str
    video_uri: str
    task: str
    uplink_kbps: int
    downlink_kbps: int
    expert_cache: int
    node_name: str | None
    node_selector: Mapping[str, str]
    suspend: bool

    @classmethod
    def of(cls, spec: Mapping[str, Any] | None) -> EdgeDeviceSpec:
        s = defaulted(EDGE_DEVICE, spec)
        node = s.get("node") or {}
        return cls(
            policy=str((s.get("policyRef") or {}).get("name", "")),
            video_uri=str((s.get("video") or {}).get("uri", "")),
            task=str(s["task"]),
            uplink_kbps=int(s["link"]["uplinkKbps"]),
            downlink_kbps=int(s["link"]["downlinkKbps"]),
            expert_cache=int(s["expertCache"]["experts"]),
            node_name=str(node["name"]) if node.get("name") else None,
            node_selector={str(k): str(v) for k, v in (node.get("selector") or {}).items()},
            suspend=bool(s["suspend"]),
        )


@dataclass(frozen=True)
class ModelSpec:
    """A teacher or student: a torchvision builder and where its weights come from."""

    architecture: str
    weights: Mapping[str, Any]

    @classmethod
    def of(cls, section: Mapping[str, Any]) -> ModelSpec:
        return cls(str(section["architecture"]), dict(section["weights"]))


@dataclass(frozen=True)
class AdaptationPolicySpec:
    strategy: str
    ams: Mapping[str, Any]
    recl: Mapping[str, Any]
    scheduler: Mapping[str, Any]
    sampling: Mapping[str, Any]
    teacher: ModelSpec
    student: ModelSpec
    gpus_per_trainer: int
    devices_per_gpu: int
    max_trainers: int
    storage_size: str
    storage_class: str | None
    resources: Mapping[str, Any]
    device_selector: Mapping[str, Any] | None
    model_zoo: str | None
    mutual_tls: bool
    suspend: bool

    @classmethod
    def of(cls, spec: Mapping[str, Any] | None) -> AdaptationPolicySpec:
        s = defaulted(ADAPTATION_POLICY, spec)
        trainers = s["trainers"]
        return cls(
            strategy=str(s["strategy"]),
            ams=s["ams"],
            recl=s["recl"],
            scheduler=s["scheduler"],
            sampling=s["sampling"],
            teacher=ModelSpec.of(s["teacher"]),
            student=ModelSpec.of(s["student"]),
            gpus_per_trainer=int(s["gpu"]["gpusPerTrainer"]),
            devices_per_gpu=int(s["gpu"]["devicesPerGPU"]),
            max_trainers=int(trainers["maxReplicas"]),
            storage_size=str(trainers["storage"]["size"]),
            storage_class=trainers["storage"].get("storageClassName") or None,
            resources=trainers.get("resources") or {},
            device_selector=s.get("deviceSelector"),
            model_zoo=(s.get("modelZooRef") or {}).get("name") or None,
            mutual_tls=bool(s["mutualTLS"]),
            suspend=bool(s["suspend"]),
        )

    @property
    def slots_per_trainer(self) -> int:
        """Devices one trainer serves: its GPUs times the devices each GPU takes."""
        return self.gpus_per_trainer * self.devices_per_gpu


@dataclass(frozen=True)
class ModelZooSpec:
    task: str
    student_architecture: str
    storage_size: str
    access_mode: str
    storage_class: str | None
    gating_replicas: int
    top_k: int
    admission_margin_alpha: float
    queue_threshold_gamma: int
    pruning_eta: int
    pruning_q: int

    @classmethod
    def of(cls, spec: Mapping[str, Any] | None) -> ModelZooSpec:
        s = defaulted(MODEL_ZOO, spec)
        storage, gating, pruning = s["storage"], s["gating"], s["pruning"]
        return cls(
            task=str(s["task"]),
            student_architecture=str(s["studentArchitecture"]),
            storage_size=str(storage["size"]),
            access_mode=str(storage["accessMode"]),
            storage_class=storage.get("storageClassName") or None,
            gating_replicas=int(gating["replicas"]),
            top_k=int(gating["topK"]),
            admission_margin_alpha=float(s["admissionMarginAlpha"]),
            queue_threshold_gamma=int(s["queueThresholdGamma"]),
            pruning_eta=int(pruning["eta"]),
            pruning_q=int(pruning["q"]),
        )
