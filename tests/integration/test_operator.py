"""The operator as a process against the real control plane: children, status, bindings,
recovery, rollouts, garbage collection, restarts."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import urllib.request
from typing import Any

import pytest

from edgeadapt.devcluster import LocalCluster
from edgeadapt.devcluster.testing import (
    OperatorProcess,
    SimulatedTrainers,
    condition_of,
    get,
    wait_until,
)
from edgeadapt.pki import dns_names, signed_by
from edgeadapt.stream.auth import mint_token

pytestmark = pytest.mark.integration
TIMEOUT = 90.0


def policy(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "edgeadapt.io/v1alpha1",
        "kind": "AdaptationPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def device(
    name: str, policy_name: str, node: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "edgeadapt.io/v1alpha1",
        "kind": "EdgeDevice",
        "metadata": {"name": name, "labels": {"site": "test"}},
        "spec": {
            "policyRef": {"name": policy_name},
            "node": node or {"name": "edge-0"},
            "video": {"uri": "synthetic:seed=1"},
            **spec,
        },
    }


def zoo(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "edgeadapt.io/v1alpha1",
        "kind": "ModelZoo",
        "metadata": {"name": name},
        "spec": spec,
    }


def apply(cluster: LocalCluster, ns: str, *objs: dict[str, Any]) -> None:
    for obj in objs:
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(obj))


def patch(cluster: LocalCluster, ns: str, resource: str, name: str, body: dict[str, Any]) -> None:
    cluster.kubectl("patch", resource, name, "-n", ns, "--type=merge", "-p", json.dumps(body))


def wait_condition(
    cluster: LocalCluster,
    ns: str,
    resource: str,
    name: str,
    *,
    status: str = "True",
    reason: str | None = None,
    type_: str = "Ready",
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get(cluster, resource, name, ns)
        cond = condition_of(obj, type_)
        if obj is None or cond is None:
            return None
        current = obj["status"].get("observedGeneration") == obj["metadata"]["generation"]
        if current and cond["status"] == status and reason in (None, cond["reason"]):
            return obj
        return None

    return wait_until(probe, TIMEOUT, f"{resource}/{name} {type_}={status} {reason or ''}")


def cond(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    found = condition_of(obj, type_)
    assert found is not None, f"no {type_} condition"
    return found


def must_get(cluster: LocalCluster, resource: str, name: str, ns: str) -> dict[str, Any]:
    obj = get(cluster, resource, name, ns)
    assert obj is not None, f"{resource}/{name} does not exist"
    return obj


def wait_gone(cluster: LocalCluster, ns: str, resource: str, name: str) -> None:
    wait_until(lambda: get(cluster, resource, name, ns) is None, TIMEOUT, f"{resource}/{name} gone")


def uid(cluster: LocalCluster, ns: str, resource: str, name: str) -> str:
    obj = get(cluster, resource, name, ns)
    assert obj is not None, f"{resource}/{name} does not exist"
    return str(obj["metadata"]["uid"])


def arg_of(pod: dict[str, Any], flag: str) -> str:
    args = list(pod["spec"]["containers"][0]["args"])
    return str(args[args.index(flag) + 1])


def test_policy_and_devices_reconcile_to_ready(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    apply(
        cluster,
        ns,
        policy("fleet", ams={"iterations": 30}),
        device("cam-a", "fleet", {"name": "edge-1"}),
        device("cam-b", "fleet", {"selector": {"node.kubernetes.io/instance-type": "jetson"}}),
    )
    for name in ("cam-a", "cam-b"):
        dev = wait_condition(cluster, ns, "edgedevice", name)
        status = dev["status"]
        assert status["trainer"] == "fleet-trainer-0"
        assert condition_of(dev, "Reconciling") is None
        assert condition_of(dev, "Stalled") is None
        assert cond(dev, "TrainerBound")["status"] == "True"
        assert cond(dev, "AgentReady")["status"] == "True"
        assert all(c["observedGeneration"] == 1 for c in status["conditions"])

        pod = get(cluster, "pod", f"{name}-agent", ns)
        assert pod is not None
        owner = pod["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "EdgeDevice",
            dev["metadata"]["uid"],
            True,
        )
        assert pod["spec"]["nodeName"] == status["nodeName"]
        assert pod["spec"]["nodeName"].startswith("edge-")
        assert {
            "key": "node-role.kubernetes.io/edge",
            "operator": "Exists",
            "effect": "NoSchedule",
        } in pod["spec"]["tolerations"]
        assert arg_of(pod, "--trainer") == status["trainerEndpoint"]
        assert status["trainerEndpoint"].startswith(f"fleet-trainer-0.fleet-trainer.{ns}.svc")
        assert pod["spec"]["containers"][0]["command"] == ["python", "-m", "edgeadapt.edge_agent"]

        # Its token is the HMAC of its name under the policy's key, which its trainer checks;
        # the connection and the model version come from the trainer's /status.
        secret = get(cluster, "secret", f"{name}-agent-token", ns)
        assert secret is not None
        assert secret["metadata"]["ownerReferences"][0]["uid"] == dev["metadata"]["uid"]
        key = base64.b64decode(must_get(cluster, "secret", "fleet-token-key", ns)["data"]["key"])
        assert base64.b64decode(secret["data"]["token"]).decode() == mint_token(key, name)
        assert cond(dev, "AgentConnected")["status"] == "True"
        assert cond(dev, "ModelDeployed")["status"] == "True"
        assert status["modelVersion"] >= 1
        assert status["accuracy"]["miouVsTeacher"] == 0.8
    assert must_get(cluster, "pod", "cam-a-agent", ns)["spec"]["nodeName"] == "edge-1"

    pol = wait_condition(cluster, ns, "adaptationpolicy", "fleet")
    assert pol["status"]["devicesBound"] == 2
    assert pol["status"]["trainers"] == 1
    sts = get(cluster, "statefulset", "fleet-trainer", ns)
    assert sts is not None
    assert sts["spec"]["replicas"] == 1
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["command"] == ["python", "-m", "edgeadapt.trainer"]
    trainer_pod = get(cluster, "pod", "fleet-trainer-0", ns)
    assert trainer_pod is not None
    assert trainer_pod["spec"]["nodeName"].startswith("gpu-")
    config = must_get(cluster, "configmap", "fleet-trainer", ns)
    params = json.loads(config["data"]["policy.json"])
    assert params["ams"]["iterations"] == 30
    assert params["ams"]["gammaFraction"] == 0.05
    service = get(cluster, "service", "fleet-trainer", ns)
    assert service is not None
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["port"] == 50051

    # Transitions were announced as events.
    events = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    reasons = {(e["involvedObject"]["name"], e["reason"]) for e in events}
    assert ("cam-a", "Succeeded") in reasons
    assert ("fleet", "Succeeded") in reasons

    # The operator wrote status only: it never took ownership of a spec field.
    out = cluster.kubectl(
        "get", "edgedevice", "cam-a", "-n", ns, "-o", "json", "--show-managed-fields"
    )
    dev = json.loads(out.stdout)
    managers = {e["manager"] for e in dev["metadata"]["managedFields"]}
    assert "edgeadapt-operator" in managers
    for entry in dev["metadata"]["managedFields"]:
        if entry["manager"] == "edgeadapt-operator":
            assert entry.get("subresource") == "status", entry
    assert "finalizers" not in dev["metadata"]

    # Reconciles are measured on the metrics endpoint.
    port = operator.env["EDGEADAPT_METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    count = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("edgeadapt_operator_reconcile_duration_seconds_count")
        and 'kind="edgedevices"' in line
        and 'result="success"' in line
    )
    assert count >= 2
    assert 'edgeadapt_operator_api_requests_total{method="POST"}' in text
    assert not any(k.startswith("kopf") for k in dev["metadata"].get("annotations", {}))


def test_bindings_respect_gpu_capacity_and_grow_with_it(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    apply(cluster, ns, policy("small", gpu={"devicesPerGPU": 2}, trainers={"maxReplicas": 1}))
    apply(cluster, ns, *(device(f"cam-{i}", "small") for i in range(3)))
    stalled = wait_condition(
        cluster, ns, "edgedevice", "cam-2", status="False", reason="NoTrainerCapacity"
    )
    assert cond(stalled, "Stalled")["reason"] == "NoTrainerCapacity"
    assert "at most 2 devices" in cond(stalled, "Ready")["message"]
    for i in (0, 1):
        assert (
            wait_condition(cluster, ns, "edgedevice", f"cam-{i}")["status"]["trainer"]
            == "small-trainer-0"
        )
    pol = wait_until(
        lambda: (
            (p := get(cluster, "adaptationpolicy", "small", ns))
            and p["status"].get("devicesUnbound") == 1
            and p
        ),
        TIMEOUT,
        "policy counts",
    )
    assert pol["status"]["devicesBound"] == 2
    assert pol["status"]["capacity"] == 2
    bound_pod = uid(cluster, ns, "pod", "cam-0-agent")

    patch(cluster, ns, "adaptationpolicy", "small", {"spec": {"trainers": {"maxReplicas": 2}}})
    dev = wait_condition(cluster, ns, "edgedevice", "cam-2")
    assert dev["status"]["trainer"] == "small-trainer-1"
    assert condition_of(dev, "Stalled") is None
    pol = wait_condition(cluster, ns, "adaptationpolicy", "small")
    assert pol["status"]["trainers"] == 2
    assert pol["status"]["devicesBound"] == 3
    assert must_get(cluster, "statefulset", "small-trainer", ns)["spec"]["replicas"] == 2
    # A device that had a trainer kept it: its agent was not replaced.
    assert uid(cluster, ns, "pod", "cam-0-agent") == bound_pod


def test_a_trainer_short_of_gpu_memory_shows_in_status_and_takes_no_new_devices(
    cluster: LocalCluster, operator: OperatorProcess, trainers: SimulatedTrainers, namespace: str
) -> None:
    ns = namespace
    apply(cluster, ns, policy("roomy", gpu={"devicesPerGPU": 4}, trainers={"maxReplicas": 2}))
    apply(cluster, ns, device("cam-m0", "roomy"))
    assert wait_condition(cluster, ns, "edgedevice", "cam-m0")["status"]["trainer"] == (
        "roomy-trainer-0"
    )
    trainers.gpu["roomy-trainer-0"] = {
        "available": True,
        "utilization": 0.97,
        "memory_used_bytes": 79 << 30,
        "memory_total_bytes": 80 << 30,
        "memory_low": True,
    }
    try:
        pol = wait_until(
            lambda: (
                (p := get(cluster, "adaptationpolicy", "roomy", ns))
                and (p.get("status") or {}).get("trainerGPUs")
                and p
            ),
            TIMEOUT,
            "the trainer's GPU in the policy's status",
        )
        assert pol["status"]["trainerGPUs"] == [
            {
                "trainer": "roomy-trainer-0",
                "utilizationPercent": 97,
                "memoryUsedMiB": 79 * 1024,
                "memoryTotalMiB": 80 * 1024,
                "memoryLow": True,
            }
        ]
        # Trainer 0 has three free slots, but reports low GPU memory: the new device goes to 1.
        apply(cluster, ns, device("cam-m1", "roomy"))
        dev = wait_condition(cluster, ns, "edgedevice", "cam-m1")
        assert dev["status"]["trainer"] == "roomy-trainer-1"
        assert wait_condition(cluster, ns, "edgedevice", "cam-m0")["status"]["trainer"] == (
            "roomy-trainer-0"
        ), "the devices it serves stay"
    finally:
        trainers.gpu.clear()


def test_missing_policy_is_reported_and_recovers(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    apply(cluster, ns, device("orphan", "later"))
    dev = wait_condition(
        cluster, ns, "edgedevice", "orphan", status="False", reason="PolicyNotFound"
    )
    assert '"later"' in cond(dev, "Ready")["message"]
    assert cond(dev, "Stalled")["status"] == "True"
    apply(cluster, ns, policy("later"))
    dev = wait_condition(cluster, ns, "edgedevice", "orphan")
    assert condition_of(dev, "Stalled") is None


def test_missing_model_zoo_is_reported_and_recovers(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    apply(cluster, ns, policy("recl", strategy="recl", modelZooRef={"name": "zoo-x"}))
    pol = wait_condition(
        cluster, ns, "adaptationpolicy", "recl", status="False", reason="ModelZooNotFound"
    )
    assert '"zoo-x"' in cond(pol, "Ready")["message"]
    assert cond(pol, "ModelZooResolved")["status"] == "False"

    apply(cluster, ns, zoo("zoo-x", storage={"size": "2Gi"}))
    z = wait_condition(cluster, ns, "modelzoo", "zoo-x")
    assert cond(z, "StorageBound")["status"] == "True"
    pol = wait_condition(cluster, ns, "adaptationpolicy", "recl")
    for resource, name in (
        ("pvc", "zoo-x-store"),
        ("deployment", "zoo-x-gating"),
        ("service", "zoo-x-gating"),
        ("secret", "zoo-x-gating-key"),
        ("secret", "zoo-x-gating-tls"),
        ("configmap", "zoo-x-gating-ca"),
    ):
        child = get(cluster, resource, name, ns)
        assert child is not None, f"{resource}/{name}"
        assert child["metadata"]["ownerReferences"][0]["uid"] == z["metadata"]["uid"]
    deployment = must_get(cluster, "deployment", "zoo-x-gating", ns)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "edgeadapt.gating"]
    # The service's certificate names its Service; callers get the CA that signed it.
    tls = must_get(cluster, "secret", "zoo-x-gating-tls", ns)
    cert = base64.b64decode(tls["data"]["tls.crt"])
    assert f"zoo-x-gating.{ns}.svc" in dns_names(cert)
    bundle = must_get(cluster, "configmap", "zoo-x-gating-ca", ns)["data"]["ca.crt"]
    assert signed_by(cert, bundle.encode())

    # The policy's trainers call the zoo's gating service: its endpoint, its CA, and a token
    # minted from the zoo's key for the policy.
    sts = must_get(cluster, "statefulset", "recl-trainer", ns)
    pod = sts["spec"]["template"]
    assert arg_of(pod, "--gating") == f"zoo-x-gating.{ns}.svc.cluster.local:50052"
    assert arg_of(pod, "--gating-caller") == "recl"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["gating-ca"]["configMap"]["name"] == "zoo-x-gating-ca"
    assert volumes["gating-token"]["secret"]["secretName"] == "recl-gating-token"
    key = base64.b64decode(must_get(cluster, "secret", "zoo-x-gating-key", ns)["data"]["key"])
    token = must_get(cluster, "secret", "recl-gating-token", ns)["data"]["token"]
    assert base64.b64decode(token).decode() == mint_token(key.strip(), "recl")
    config = json.loads(must_get(cluster, "configmap", "recl-trainer", ns)["data"]["policy.json"])
    assert config["strategy"] == "recl"
    assert config["recl"] == {"windowSeconds": 30, "sceneDropPoints": 0, "switchMarginPoints": 2}

    # The zoo's figures are what its gating service reports on /status.
    def figures() -> dict[str, Any] | None:
        status = must_get(cluster, "modelzoo", "zoo-x", ns).get("status") or {}
        return status if status.get("admissions") else None

    status = wait_until(figures, TIMEOUT, "the zoo's figures from its gating service")
    assert status["experts"] == status["admissions"] >= 1
    assert status["gatingVersion"] == status["admissions"] + 1
    assert status["prunes"] == 0
    assert "lastAdmissionTime" in status


def test_children_deleted_by_hand_are_recreated(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    apply(cluster, ns, policy("heal"), device("cam", "heal"))
    wait_condition(cluster, ns, "edgedevice", "cam")
    wait_condition(cluster, ns, "adaptationpolicy", "heal")
    children = [
        ("pod", "cam-agent"),
        ("secret", "cam-agent-token"),
        ("service", "heal-trainer"),
        ("configmap", "heal-trainer"),
        ("statefulset", "heal-trainer"),
    ]
    before = {c: uid(cluster, ns, *c) for c in children}
    for resource, name in children:
        cluster.kubectl("delete", resource, name, "-n", ns, "--wait=false")
    for resource, name in children:

        def replaced(r: str = resource, n: str = name) -> bool:
            obj = get(cluster, r, n, ns)
            return (
                obj is not None
                and obj["metadata"]["uid"] != before[(r, n)]
                and not obj["metadata"].get("deletionTimestamp")
            )

        wait_until(replaced, TIMEOUT, f"{resource}/{name} recreated")
    wait_condition(cluster, ns, "edgedevice", "cam")
    wait_condition(cluster, ns, "adaptationpolicy", "heal")
    # A hand-scaled trainer StatefulSet is put back to what the bindings need.
    cluster.kubectl("scale", "statefulset", "heal-trainer", "-n", ns, "--replicas=3")
    wait_until(
        lambda: must_get(cluster, "statefulset", "heal-trainer", ns)["spec"]["replicas"] == 1,
        TIMEOUT,
        "the trainer StatefulSet scaled back",
    )


def test_spec_edits_roll_the_affected_children(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    apply(cluster, ns, policy("roll"), device("cam", "roll"))
    wait_condition(cluster, ns, "edgedevice", "cam")
    wait_condition(cluster, ns, "adaptationpolicy", "roll")
    pod_uid = uid(cluster, ns, "pod", "cam-agent")
    token = must_get(cluster, "secret", "cam-agent-token", ns)["data"]["token"]
    sts = must_get(cluster, "statefulset", "roll-trainer", ns)
    config_hash = sts["spec"]["template"]["metadata"]["annotations"]["edgeadapt.io/config-hash"]

    patch(
        cluster, ns, "edgedevice", "cam", {"spec": {"video": {"uri": "rtsp://new-camera/stream"}}}
    )
    dev = wait_condition(cluster, ns, "edgedevice", "cam")
    assert dev["status"]["observedGeneration"] == 2
    pod = wait_until(
        lambda: (
            (p := get(cluster, "pod", "cam-agent", ns)) and p["metadata"]["uid"] != pod_uid and p
        ),
        TIMEOUT,
        "the agent pod replaced",
    )
    assert arg_of(pod, "--source") == "rtsp://new-camera/stream"
    assert must_get(cluster, "secret", "cam-agent-token", ns)["data"]["token"] == token

    patch(cluster, ns, "adaptationpolicy", "roll", {"spec": {"ams": {"iterations": 50}}})
    wait_condition(cluster, ns, "adaptationpolicy", "roll")
    params = json.loads(must_get(cluster, "configmap", "roll-trainer", ns)["data"]["policy.json"])
    assert params["ams"]["iterations"] == 50
    sts = must_get(cluster, "statefulset", "roll-trainer", ns)
    assert (
        sts["spec"]["template"]["metadata"]["annotations"]["edgeadapt.io/config-hash"]
        != config_hash
    )


def test_suspend_removes_the_agent_and_resume_restores_it(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    apply(cluster, ns, policy("pause"), device("cam", "pause"))
    wait_condition(cluster, ns, "edgedevice", "cam")
    patch(cluster, ns, "edgedevice", "cam", {"spec": {"suspend": True}})
    wait_condition(cluster, ns, "edgedevice", "cam", status="False", reason="Suspended")
    wait_until(lambda: get(cluster, "pod", "cam-agent", ns) is None, TIMEOUT, "agent removed")
    wait_until(
        lambda: (
            (p := get(cluster, "adaptationpolicy", "pause", ns))
            and p["status"].get("devicesBound") == 0
            and p["status"].get("trainers") == 0
        ),
        TIMEOUT,
        "the policy to release the suspended device",
    )
    patch(cluster, ns, "edgedevice", "cam", {"spec": {"suspend": False}})
    wait_condition(cluster, ns, "edgedevice", "cam")


def test_deleting_an_owner_removes_its_children(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    apply(cluster, ns, policy("gone"), device("cam", "gone"))
    wait_condition(cluster, ns, "edgedevice", "cam")
    wait_condition(cluster, ns, "adaptationpolicy", "gone")
    cluster.kubectl("delete", "edgedevice", "cam", "-n", ns)
    for resource, name in (("pod", "cam-agent"), ("secret", "cam-agent-token")):
        wait_gone(cluster, ns, resource, name)
    cluster.kubectl("delete", "adaptationpolicy", "gone", "-n", ns)
    for resource in ("statefulset", "service", "configmap"):
        wait_gone(cluster, ns, resource, "gone-trainer")


def test_a_restarted_operator_keeps_children_and_bindings(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    apply(
        cluster,
        ns,
        policy("steady", gpu={"devicesPerGPU": 1}),
        *(device(f"cam-{i}", "steady") for i in range(3)),
    )
    trainers = {
        f"cam-{i}": wait_condition(cluster, ns, "edgedevice", f"cam-{i}")["status"]["trainer"]
        for i in range(3)
    }
    assert sorted(trainers.values()) == ["steady-trainer-0", "steady-trainer-1", "steady-trainer-2"]
    pods = {name: uid(cluster, ns, "pod", f"{name}-agent") for name in trainers}
    tokens = {name: uid(cluster, ns, "secret", f"{name}-agent-token") for name in trainers}

    operator.stop()
    # While it is down, a device leaves; the restarted operator must not reshuffle the others.
    cluster.kubectl("delete", "edgedevice", "cam-0", "-n", ns)
    operator.start()
    apply(cluster, ns, device("cam-3", "steady"))
    dev = wait_condition(cluster, ns, "edgedevice", "cam-3")
    assert dev["status"]["trainer"] == "steady-trainer-0"  # the freed slot
    for name in ("cam-1", "cam-2"):
        dev = wait_condition(cluster, ns, "edgedevice", name)
        assert dev["status"]["trainer"] == trainers[name]
        assert uid(cluster, ns, "pod", f"{name}-agent") == pods[name]
        assert uid(cluster, ns, "secret", f"{name}-agent-token") == tokens[name]
    assert operator.alive(), operator.log_tail()


def test_a_device_the_policy_stops_selecting_is_released(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    apply(cluster, ns, policy("picky", deviceSelector={"matchLabels": {"site": "test"}}))
    apply(cluster, ns, device("cam", "picky"))
    assert (
        wait_condition(cluster, ns, "edgedevice", "cam")["status"]["trainer"] == "picky-trainer-0"
    )
    patch(
        cluster,
        ns,
        "adaptationpolicy",
        "picky",
        {"spec": {"deviceSelector": {"matchLabels": {"site": "elsewhere"}}}},
    )
    dev = wait_condition(cluster, ns, "edgedevice", "cam", status="False", reason="NotSelected")
    assert cond(dev, "Stalled")["reason"] == "NotSelected"
    assert "trainer" not in dev["status"]
    pol = wait_condition(cluster, ns, "adaptationpolicy", "picky")
    assert pol["status"]["devicesBound"] == 0
    assert pol["status"]["devicesUnbound"] == 1
    patch(cluster, ns, "edgedevice", "cam", {"metadata": {"labels": {"site": "elsewhere"}}})
    assert (
        wait_condition(cluster, ns, "edgedevice", "cam")["status"]["trainer"] == "picky-trainer-0"
    )


def test_children_are_created_under_the_charts_rules_with_owner_reference_enforcement(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    """The operator runs as a ServiceAccount with exactly the chart's rules, and the API server
    enforces OwnerReferencesPermissionEnforcement: its children still get created."""
    ns = namespace
    apply(cluster, ns, policy("strict"), device("cam", "strict"))
    dev = wait_condition(cluster, ns, "edgedevice", "cam")
    wait_condition(cluster, ns, "adaptationpolicy", "strict")
    for resource, name in (
        ("pod", "cam-agent"),
        ("secret", "cam-agent-token"),
        ("statefulset", "strict-trainer"),
        ("configmap", "strict-trainer"),
        ("service", "strict-trainer"),
    ):
        (ref,) = must_get(cluster, resource, name, ns)["metadata"]["ownerReferences"]
        assert ref["controller"] is True
        assert not ref.get("blockOwnerDeletion"), f"{resource}/{name}"

    # What the operator no longer does is refused to its identity: the plugin is on.
    def as_operator(obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [cluster.bin("kubectl"), f"--kubeconfig={operator.kubeconfig}", "create", "-n", ns,
             "-f", "-"],
            input=json.dumps(obj), capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip

    ref = {
        "apiVersion": "edgeadapt.io/v1alpha1",
        "kind": "EdgeDevice",
        "name": "cam",
        "uid": dev["metadata"]["uid"],
        "controller": True,
    }
    blocking = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "blocking", "ownerReferences": [ref | {"blockOwnerDeletion": True}]},
    }
    out = as_operator(blocking)
    assert out.returncode != 0
    assert "cannot set blockOwnerDeletion" in out.stderr, out.stderr
    plain = blocking | {"metadata": {"name": "plain", "ownerReferences": [ref]}}
    out = as_operator(plain)
    assert out.returncode == 0, out.stderr
    log = operator.log_path.read_text(errors="replace")
    assert "cannot set blockOwnerDeletion" not in log
    assert not re.search(r'forbidden: User \\?"[^"]*\\?" cannot', log), "RBAC denied a request"


def test_a_child_the_api_server_refuses_shows_in_status_and_recovers(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-pods"},
        "spec": {"hard": {"pods": "0"}},
    }
    apply(cluster, ns, quota)
    wait_until(
        lambda: (must_get(cluster, "resourcequota", "no-pods", ns).get("status") or {}).get("hard"),
        TIMEOUT,
        "the quota's usage computed",
    )
    apply(cluster, ns, policy("tight"), device("cam", "tight"))
    dev = wait_condition(
        cluster, ns, "edgedevice", "cam", status="False", reason="ChildApplyFailed"
    )
    ready = cond(dev, "Ready")
    assert ready["message"].startswith('could not create Pod "cam-agent": ')
    assert "exceeded quota: no-pods" in ready["message"]
    assert ready["observedGeneration"] == dev["metadata"]["generation"]
    assert cond(dev, "Stalled")["reason"] == "ChildApplyFailed"
    assert condition_of(dev, "Reconciling") is None
    assert cond(dev, "TrainerBound")["status"] == "True"
    assert dev["status"]["trainer"] == "tight-trainer-0"
    # The Secret is not held up by the pod.
    assert get(cluster, "secret", "cam-agent-token", ns) is not None
    events = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    assert any(
        e["involvedObject"]["name"] == "cam"
        and e["type"] == "Warning"
        and e["reason"] == "ChildApplyFailed"
        for e in events
    )

    # Nothing watched changes when the quota goes: the retry with backoff finds out.
    cluster.kubectl("delete", "resourcequota", "no-pods", "-n", ns)
    dev = wait_condition(cluster, ns, "edgedevice", "cam")
    assert condition_of(dev, "Stalled") is None
    assert get(cluster, "pod", "cam-agent", ns) is not None
    assert operator.alive(), operator.log_tail()


def test_an_object_in_the_way_of_a_child_shows_in_status_and_recovers(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    squatter = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "taken-trainer"}}
    apply(cluster, ns, squatter)
    apply(cluster, ns, policy("taken"))
    pol = wait_condition(
        cluster, ns, "adaptationpolicy", "taken", status="False", reason="ChildApplyFailed"
    )
    assert cond(pol, "Ready")["message"] == (
        'could not create ConfigMap "taken-trainer": an object of that name exists and is not '
        'controlled by AdaptationPolicy "taken"'
    )
    assert cond(pol, "Stalled")["reason"] == "ChildApplyFailed"
    # The other children are written regardless.
    assert get(cluster, "statefulset", "taken-trainer", ns) is not None
    assert "ownerReferences" not in must_get(cluster, "configmap", "taken-trainer", ns)["metadata"]

    cluster.kubectl("delete", "configmap", "taken-trainer", "-n", ns)
    pol = wait_condition(cluster, ns, "adaptationpolicy", "taken")
    assert condition_of(pol, "Stalled") is None
    config = must_get(cluster, "configmap", "taken-trainer", ns)
    assert config["metadata"]["ownerReferences"][0]["uid"] == pol["metadata"]["uid"]


def test_tokens_are_reminted_and_a_refused_agent_shows_unauthenticated(
    cluster: LocalCluster, operator: OperatorProcess, trainers: SimulatedTrainers, namespace: str
) -> None:
    ns = namespace
    apply(cluster, ns, policy("keys"), device("cam-k", "keys"))
    wait_condition(cluster, ns, "edgedevice", "cam-k")

    def token() -> str:
        return base64.b64decode(
            must_get(cluster, "secret", "cam-k-agent-token", ns)["data"]["token"]
        ).decode()

    def key() -> bytes:
        return base64.b64decode(must_get(cluster, "secret", "keys-token-key", ns)["data"]["key"])

    # An edited token is written back.
    good = token()
    wrong = base64.b64encode(b"ea1.wrong").decode()
    patch(cluster, ns, "secret", "cam-k-agent-token", {"data": {"token": wrong}})
    wait_until(lambda: token() == good, TIMEOUT, "the operator to re-mint the token")

    # The trainer refusing the agent shows on its EdgeDevice, and clears when it connects.
    trainers.refuse.add("cam-k")
    try:
        dev = wait_condition(
            cluster, ns, "edgedevice", "cam-k", status="False", reason="Unauthenticated"
        )
        assert cond(dev, "AgentConnected")["reason"] == "Unauthenticated"
    finally:
        trainers.refuse.discard("cam-k")
    wait_condition(cluster, ns, "edgedevice", "cam-k")

    # Rotation: deleting the key makes a new one, rolls the trainers and re-mints every token.
    template = must_get(cluster, "statefulset", "keys-trainer", ns)["spec"]["template"]
    old_hash = template["metadata"]["annotations"]["edgeadapt.io/token-key-hash"]
    old_key = key()
    cluster.kubectl("delete", "secret", "keys-token-key", "-n", ns)
    wait_until(
        lambda: get(cluster, "secret", "keys-token-key", ns) and key() != old_key,
        TIMEOUT,
        "a new key",
    )
    wait_until(lambda: token() == mint_token(key(), "cam-k"), TIMEOUT, "the token re-minted")
    wait_until(
        lambda: (
            must_get(cluster, "statefulset", "keys-trainer", ns)["spec"]["template"]["metadata"][
                "annotations"
            ]["edgeadapt.io/token-key-hash"]
            != old_hash
        ),
        TIMEOUT,
        "the trainers to roll",
    )
