"""Typed specs read through the CRD's own defaults (``api.schema``, ``api.specs``)."""

from __future__ import annotations

from edgeadapt.api.schema import crd, defaulted, spec_schema
from edgeadapt.api.specs import AdaptationPolicySpec, EdgeDeviceSpec, ModelZooSpec
from edgeadapt.api.v1alpha1 import ADAPTATION_POLICY, EDGE_DEVICE, KINDS, MODEL_ZOO


def test_an_empty_policy_reads_as_the_crds_defaults() -> None:
    spec = AdaptationPolicySpec.of({})
    gpu = spec_schema(ADAPTATION_POLICY)["properties"]["gpu"]["properties"]
    assert spec.devices_per_gpu == gpu["devicesPerGPU"]["default"]
    assert spec.gpus_per_trainer == gpu["gpusPerTrainer"]["default"]
    assert (spec.slots_per_trainer, spec.max_trainers) == (8, 4)
    assert spec.teacher.weights == {"synthetic": "bench"}
    assert spec.ams["tUpdateSeconds"] == 10
    assert spec.sampling["rMaxFps"] == 1.0
    assert (spec.storage_size, spec.storage_class, spec.model_zoo) == ("10Gi", None, None)
    assert not spec.mutual_tls
    assert not spec.suspend


def test_given_values_win_and_siblings_are_still_defaulted() -> None:
    given = {"gpu": {"devicesPerGPU": 3}, "ams": {"iterations": 5}}
    spec = AdaptationPolicySpec.of(given)
    assert (spec.devices_per_gpu, spec.gpus_per_trainer) == (3, 1)
    assert spec.ams["iterations"] == 5
    assert spec.ams["tHorizonSeconds"] == 240
    assert given == {"gpu": {"devicesPerGPU": 3}, "ams": {"iterations": 5}}  # not changed


def test_a_given_weights_source_is_not_merged_with_the_default_one() -> None:
    spec = AdaptationPolicySpec.of({"student": {"weights": {"url": "https://x/m.pth"}}})
    assert spec.student.weights == {"url": "https://x/m.pth"}
    assert spec.student.architecture == "lraspp_mobilenet_v3_large"


def test_null_is_defaulted_as_the_api_server_does() -> None:
    assert defaulted(MODEL_ZOO, {"gating": None})["gating"] == {"replicas": 1, "topK": 3}


def test_device_and_zoo_specs() -> None:
    dev = EdgeDeviceSpec.of(
        {"policyRef": {"name": "p"}, "node": {"selector": {"z": "a"}}, "video": {"uri": "u"}}
    )
    assert (dev.policy, dev.video_uri, dev.node_name, dev.node_selector) == (
        "p",
        "u",
        None,
        {"z": "a"},
    )
    assert (dev.uplink_kbps, dev.downlink_kbps, dev.task) == (300, 200, "segmentation")
    zoo = ModelZooSpec.of({"storage": {"accessMode": "ReadWriteMany"}})
    assert (zoo.access_mode, zoo.storage_size, zoo.top_k, zoo.pruning_q) == (
        "ReadWriteMany",
        "10Gi",
        3,
        3000,
    )
    assert zoo.student_architecture == "lraspp_mobilenet_v3_large"


def test_every_kind_ships_its_crd_in_the_package() -> None:
    for kind in KINDS:
        assert crd(kind.plural)["metadata"]["name"] == kind.crd_name
    assert EDGE_DEVICE in KINDS
