"""The launch contract: what the operator renders is what each process's own parser accepts, and
what the CRDs accept is what the processes implement."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeadapt.api import launch
from edgeadapt.api.schema import CRD_DIR, defaulted
from edgeadapt.api.specs import AdaptationPolicySpec, EdgeDeviceSpec, ModelZooSpec
from edgeadapt.api.v1alpha1 import ADAPTATION_POLICY, EDGE_DEVICE, MODEL_ZOO
from edgeadapt.controllers import adaptationpolicy, edgedevice, modelzoo
from edgeadapt.controllers.common import Images, Owner
from edgeadapt.edge_agent.__main__ import build_parser as agent_parser
from edgeadapt.gating.__main__ import ZOO_ARCHS
from edgeadapt.gating.__main__ import build_parser as gating_parser
from edgeadapt.trainer.__main__ import _check_args, policy_defaults
from edgeadapt.trainer.__main__ import build_parser as trainer_parser
from edgeadapt.video.source import open_source

REPO = Path(__file__).resolve().parents[2]


def crd_spec(name: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRD_DIR / f"edgeadapt.io_{name}.yaml").read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])


def examples(kind: str) -> list[dict[str, Any]]:
    docs = [
        d
        for p in sorted((REPO / "examples").rglob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
    ]
    return [d for d in docs if d and d["kind"] == kind]


def meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj | {"metadata": obj["metadata"] | {"namespace": "ns", "uid": "u", "generation": 1}}


def trainer_container(spec: dict[str, Any]) -> dict[str, Any]:
    pol = meta({"metadata": {"name": "pol"}, "spec": spec})
    sts = adaptationpolicy.stateful_set(
        Owner.of(ADAPTATION_POLICY, pol), AdaptationPolicySpec.of(spec), 1, "h", "k", Images()
    )
    return dict(sts["spec"]["template"]["spec"]["containers"][0])


def agent_container(
    dev: dict[str, Any], endpoint: str = "t:50051", mutual_tls: bool = False
) -> dict[str, Any]:
    dev = meta(dev)
    pod = edgedevice.agent_pod(
        Owner.of(EDGE_DEVICE, dev),
        EdgeDeviceSpec.of(dev["spec"]),
        endpoint,
        "pol",
        Images(),
        mutual_tls,
    )
    return dict(pod["spec"]["containers"][0])


def policy_variants() -> list[dict[str, Any]]:
    """The examples' policies, and one policy per value of every enum and weights source."""
    spec = crd_spec("adaptationpolicies")["properties"]
    out = [e["spec"] for e in examples("AdaptationPolicy")]
    for strategy in spec["strategy"]["enum"]:  # recl needs a zoo (the CRD refuses it without)
        out.append(
            {"strategy": strategy}
            | ({"modelZooRef": {"name": "zoo"}} if "recl" in strategy else {})
        )
    for policy in spec["scheduler"]["properties"]["policy"]["enum"]:
        out.append({"scheduler": {"policy": policy, "microWindowSeconds": 0.5}})
    out.append({"mutualTLS": True})
    teachers = spec["teacher"]["properties"]["architecture"]["enum"]
    students = spec["student"]["properties"]["architecture"]["enum"]
    profiles = spec["teacher"]["properties"]["weights"]["properties"]["synthetic"]["enum"]
    sources = [{"synthetic": p} for p in profiles] + [
        {"torchvision": "LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1"},
        {"url": "https://models.example/m.pth", "sha256": "ab" * 32},
        {"persistentVolumeClaim": {"claimName": "zoo-store", "path": "experts/teacher.pth"}},
    ]
    for t, s, w in itertools.product(teachers, students, sources):
        out.append({"teacher": {"architecture": t, "weights": w}, "student": {"architecture": s}})
    return out


@pytest.mark.parametrize("spec", policy_variants(), ids=lambda s: str(s)[:60])
def test_every_rendered_trainer_parses_with_the_trainers_parser(spec: dict[str, Any]) -> None:
    container = trainer_container(spec)
    assert container["command"] == ["python", "-m", "edgeadapt.trainer"]
    args = trainer_parser().parse_args(container["args"])
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for path in (args.config, args.tls_cert, args.tls_key, args.token_secret_file):
        assert any(str(path).startswith(m + "/") for m in mounts), path
    if spec.get("mutualTLS"):
        assert any(str(args.client_ca).startswith(m + "/") for m in mounts)
    else:
        assert args.client_ca is None
    assert str(args.state_dir).startswith(launch.STATE_DIR)
    assert not args.insecure
    assert args.teacher_model.architecture == (spec.get("teacher") or {}).get(
        "architecture", launch.TEACHER_ARCHS[0]
    )
    weights = args.teacher_model.weights
    if weights.kind == "file":  # a claim's file: the claim is mounted where the path points
        assert any(weights.value.startswith(m + "/") for m in mounts)
    if "recl" in spec.get("strategy", "ams"):  # its zoo's gating service, CA and token
        zoo = spec["modelZooRef"]["name"]
        assert args.gating == f"{zoo}-gating.ns.svc.cluster.local:50052"
        assert args.gating_caller == "pol"
        for path in (args.gating_ca, args.gating_token_file):
            assert any(str(path).startswith(m + "/") for m in mounts), path
    else:
        assert args.gating is None
    assert _check_args(args) is None
    # The ConfigMap the trainer reads with --config: every value it holds is one it implements.
    config = adaptationpolicy.trainer_parameters(AdaptationPolicySpec.of(spec))
    options = policy_defaults(config)
    assert options.get("scheduler") == (spec.get("scheduler") or {}).get("policy")


def device_variants() -> list[dict[str, Any]]:
    out = examples("EdgeDevice")
    for uri in ("synthetic:seed=3,fps=10,size=128x64", "/data/cam.mp4", "rtsps://cam/1"):
        out.append(
            {"metadata": {"name": "cam"}, "spec": {"video": {"uri": uri}, "node": {"name": "e"}}}
        )
    return out


@pytest.mark.parametrize("mutual_tls", [False, True])
@pytest.mark.parametrize("dev", device_variants(), ids=lambda d: d["spec"]["video"]["uri"][:40])
def test_every_rendered_agent_parses_with_the_agents_parser(
    dev: dict[str, Any], mutual_tls: bool
) -> None:
    container = agent_container(dev, mutual_tls=mutual_tls)
    args = agent_parser().parse_args(container["args"])
    assert args.device_id == dev["metadata"]["name"]
    assert args.source == dev["spec"]["video"]["uri"]
    assert args.trainer == "t:50051"
    assert args.student is None  # the starting model comes from the trainer
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for path in (args.ca_file, args.token_file):
        assert any(str(path).startswith(m + "/") for m in mounts), path
    if mutual_tls:
        for path in (args.cert_file, args.key_file):
            assert any(str(path).startswith(m + "/") for m in mounts), path
    else:
        assert args.cert_file is None
    link = defaulted(EDGE_DEVICE, dev["spec"])["link"]  # the CRD's defaults when unset
    assert (args.uplink_kbps, args.downlink_kbps) == (link["uplinkKbps"], link["downlinkKbps"])
    assert str(args.state_dir) in mounts
    assert args.loop


def zoo_variants() -> list[dict[str, Any]]:
    """The examples' zoos, and one zoo per value of every enum."""
    spec = crd_spec("modelzoos")["properties"]
    out = [e["spec"] for e in examples("ModelZoo")]
    out += [{"studentArchitecture": a} for a in spec["studentArchitecture"]["enum"]]
    out += [
        {"storage": {"accessMode": m}} for m in spec["storage"]["properties"]["accessMode"]["enum"]
    ]
    out += [{"gating": {"topK": 1}, "admissionMarginAlpha": 0.5, "pruning": {"eta": 0, "q": 1}}]
    return out


@pytest.mark.parametrize("spec", zoo_variants(), ids=lambda s: str(s)[:60])
def test_every_rendered_gating_service_parses_with_its_parser(spec: dict[str, Any]) -> None:
    zoo = meta({"metadata": {"name": "zoo"}, "spec": spec})
    typed = ModelZooSpec.of(spec)
    dep = modelzoo.deployment(Owner.of(MODEL_ZOO, zoo), typed, Images())
    container = dep["spec"]["template"]["spec"]["containers"][0]
    args = gating_parser().parse_args(container["args"])
    assert container["command"] == ["python", "-m", "edgeadapt.gating"]
    assert args.arch == typed.student_architecture
    assert (args.top_k, args.alpha, args.gamma, args.eta, args.q) == (
        typed.top_k,
        typed.admission_margin_alpha,
        typed.queue_threshold_gamma,
        typed.pruning_eta,
        typed.pruning_q,
    )
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(args.zoo_dir) in mounts
    for path in (args.tls_cert, args.tls_key, args.token_secret_file):
        assert any(str(path).startswith(m + "/") for m in mounts), path
    assert not args.insecure


def test_the_examples_synthetic_sources_open() -> None:
    for dev in examples("EdgeDevice"):
        uri = dev["spec"]["video"]["uri"]
        if uri.startswith("synthetic:"):
            open_source(uri).close()


def test_the_crds_accept_exactly_what_the_processes_implement() -> None:
    policy = crd_spec("adaptationpolicies")["properties"]
    assert tuple(policy["strategy"]["enum"]) == launch.STRATEGIES
    assert tuple(policy["teacher"]["properties"]["architecture"]["enum"]) == launch.TEACHER_ARCHS
    assert tuple(policy["student"]["properties"]["architecture"]["enum"]) == launch.STUDENT_ARCHS
    for role in ("teacher", "student"):
        weights = policy[role]["properties"]["weights"]["properties"]
        assert tuple(weights["synthetic"]["enum"]) == launch.SYNTHETIC_PROFILES
    device = crd_spec("edgedevices")["properties"]
    assert tuple(device["task"]["enum"]) == launch.TASKS
    zoo = crd_spec("modelzoos")["properties"]
    assert set(zoo["studentArchitecture"]["enum"]) == set(ZOO_ARCHS)
    assert tuple(zoo["task"]["enum"]) == launch.TASKS


@pytest.mark.parametrize(
    "text",
    [
        "synthetic:bench",
        "torchvision:LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
        "https://h/m.pth#sha256=" + "0f" * 32,
        "file:/var/lib/x.pth",
    ],
)
def test_weights_sources_round_trip(text: str) -> None:
    assert launch.WeightsSource.parse(text).render() == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("synthetic:huge", "synthetic profile"),
        ("https://h/m.pth", "#sha256"),
        ("https://h/m.pth#sha256=xyz", "#sha256"),
        ("file:relative.pth", "absolute path"),
        ("ftp:x", "unknown source kind"),
        ("nothing", "expected"),
    ],
)
def test_bad_weights_sources_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        launch.WeightsSource.parse(text)
