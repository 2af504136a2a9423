"""The real-node tier: a kubelet with containerd, runc and CNI joined to the local control plane
runs the project's images. Pods start, probes run, Secrets, ConfigMaps, emptyDirs and claims of
the local-path class mount, Services and cluster DNS work through kube-proxy and CoreDNS; the
chart's operator runs as a pod and every pod it renders for the examples starts its container."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeadapt.api.schema import CRD_DIR
from edgeadapt.devcluster import LocalCluster
from edgeadapt.devcluster.cluster import REPO
from edgeadapt.devcluster.images import Image
from edgeadapt.devcluster.testing import wait_until

pytestmark = pytest.mark.node
RELEASE, SYSTEM_NS, DEMO_NS, SMOKE_NS = "edgeadapt", "edgeadapt-system", "edgeadapt-demo", "smoke"
FIGURES = REPO / "results" / "real-node.json"


def record(**figures: float) -> None:
    """Add measured figures to results/real-node.json."""
    FIGURES.parent.mkdir(exist_ok=True)
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data.update({k: round(v, 1) for k, v in figures.items()})
    FIGURES.write_text(json.dumps(data, indent=2) + "\n")


def get_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def pods(cluster: LocalCluster, namespace: str, selector: str | None = None) -> list[Any]:
    args = ["pods", "-n", namespace] + (["-l", selector] if selector else [])
    return list(get_json(cluster, *args)["items"])


def ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def started(pod: dict[str, Any]) -> bool:
    """Whether every container of the pod has started its process at least once."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and all(
        "running" in s.get("state", {})
        or "terminated" in s.get("state", {})
        or "terminated" in s.get("lastState", {})
        for s in statuses
    )


def test_the_node_is_ready_with_its_gpu_and_edge_labels(real_cluster: LocalCluster) -> None:
    cluster = real_cluster
    assert cluster.node is not None
    node = get_json(cluster, "node", "edge-0")
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "2"
    assert "node-role.kubernetes.io/edge" in node["metadata"]["labels"]
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.4"
    record(
        node_ready_s=cluster.node.timings["kubelet_ready_s"],
        node_start_s=cluster.node.timings["node_total_s"],
        images_import_s=cluster.node.timings["images_import_s"],
    )


SERVER = """
import http.server, os, pathlib
data = pathlib.Path("/data/marker")
data.write_text(open("/etc/secret/token").read() + "|" + open("/etc/config/greeting").read())
pathlib.Path("/scratch/ok").write_text("ok")
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (os.environ["HOSTNAME"] + ":" + data.read_text()).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
http.server.HTTPServer(("", 8000), H).serve_forever()
"""

# kube-proxy programs a new endpoint a sync period after the EndpointSlice changes; until then
# the Service's rule rejects connections, so the client retries a refused connect, as any
# client of a just-ready Service does, and says how long it waited.
CLIENT = """
import socket, time, urllib.error, urllib.request
for name in ("web.smoke.svc", "web-0.web-headless.smoke.svc.cluster.local",
             "kubernetes.default.svc.cluster.local"):
    print(name, socket.gethostbyname(name), flush=True)
for url in ("http://web.smoke.svc:8000/", "http://web-0.web-headless.smoke.svc:8000/"):
    start = time.monotonic()
    while True:
        try:
            body = urllib.request.urlopen(url, timeout=10).read().decode()
            break
        except urllib.error.URLError as e:
            if not isinstance(e.reason, ConnectionRefusedError) or time.monotonic() - start > 30:
                raise
            time.sleep(0.5)
    print(url, body, "after %.1fs" % (time.monotonic() - start), flush=True)
"""


def smoke_objects(image: str) -> list[dict[str, Any]]:
    labels = {"app": "web"}
    security = {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SMOKE_NS}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "web", "namespace": SMOKE_NS},
            "stringData": {"token": "s3cret"},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "web", "namespace": SMOKE_NS},
            "data": {"greeting": "hello"},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": SMOKE_NS},
            "spec": {"selector": labels, "ports": [{"port": 8000}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web-headless", "namespace": SMOKE_NS},
            "spec": {"selector": labels, "clusterIP": "None", "ports": [{"port": 8000}]},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "web", "namespace": SMOKE_NS},
            "spec": {
                "serviceName": "web-headless",
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "web",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "command": ["python", "-c", SERVER],
                                "ports": [{"containerPort": 8000}],
                                "readinessProbe": {
                                    "httpGet": {"path": "/", "port": 8000},
                                    "periodSeconds": 2,
                                },
                                "livenessProbe": {
                                    "tcpSocket": {"port": 8000},
                                    "periodSeconds": 5,
                                },
                                "securityContext": security,
                                "volumeMounts": [
                                    {"name": "data", "mountPath": "/data"},
                                    {"name": "scratch", "mountPath": "/scratch"},
                                    {"name": "secret", "mountPath": "/etc/secret"},
                                    {"name": "config", "mountPath": "/etc/config"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "scratch", "emptyDir": {}},
                            {"name": "secret", "secret": {"secretName": "web"}},
                            {"name": "config", "configMap": {"name": "web"}},
                        ],
                    },
                },
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "64Mi"}},
                        },
                    }
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "client", "namespace": SMOKE_NS},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "client",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "command": ["python", "-c", CLIENT],
                        "securityContext": security,
                    }
                ],
            },
        },
    ]


def test_pods_mount_volumes_pass_probes_and_reach_services_by_name(
    real_cluster: LocalCluster,
) -> None:
    cluster = real_cluster
    operator_image = Image("operator", "").ref
    objects = smoke_objects(operator_image)
    cluster.apply(objects[:-1])
    wait_until(
        lambda: any(ready(p) for p in pods(cluster, SMOKE_NS, "app=web")),
        120,
        "the web pod Ready (readiness probe over HTTP)",
        interval=1,
    )

    # CoreDNS answers a Service's names from its EndpointSlices, and the two Services' slices are
    # written independently: the client starts once both list web-0 ready (the headless one under
    # its hostname, which is what makes web-0.web-headless resolvable), so that a lookup never
    # races the endpointslice controller and lands in CoreDNS's negative cache.
    def endpoint_ready(service: str) -> bool:
        slices = get_json(
            cluster, "endpointslices", "-n", SMOKE_NS, "-l", f"kubernetes.io/service-name={service}"
        )["items"]
        return any(
            (e.get("conditions") or {}).get("ready")
            and (service != "web-headless" or e.get("hostname") == "web-0")
            for s in slices
            for e in s.get("endpoints") or []
        )

    for service in ("web", "web-headless"):
        wait_until(
            functools.partial(endpoint_ready, service),
            60,
            f"the {service} Service's EndpointSlice to list web-0",
            interval=1,
        )
    cluster.apply(objects[-1:])

    def finished() -> str | None:
        phase = str(get_json(cluster, "pod", "client", "-n", SMOKE_NS)["status"].get("phase"))
        return phase if phase in {"Succeeded", "Failed"} else None

    phase = wait_until(finished, 120, "the client pod to finish", interval=1)
    logs = cluster.kubectl("logs", "client", "-n", SMOKE_NS).stdout
    assert phase == "Succeeded", logs
    assert "web-0:s3cret|hello" in logs  # Secret, ConfigMap and the claim's volume
    assert logs.count("web-0:s3cret|hello") == 2  # through the ClusterIP and the headless name
    assert "kubernetes.default.svc.cluster.local 10.96.0.1" in logs
    claim = get_json(cluster, "pvc", "data-web-0", "-n", SMOKE_NS)
    assert claim["status"]["phase"] == "Bound"
    assert claim["spec"]["storageClassName"] == "local-path"
    exec_ = cluster.kubectl("exec", "-n", SMOKE_NS, "web-0", "--", "cat", "/scratch/ok")
    assert exec_.stdout == "ok"


@pytest.fixture(scope="module")
def chart(real_cluster: LocalCluster) -> LocalCluster:
    """The chart installed with the operator image: the operator runs as a pod of the node."""
    cluster = real_cluster
    cluster.kubectl("apply", "-f", str(CRD_DIR))
    started_at = time.monotonic()
    # Agents keep their model in a directory of the node; this cluster's, not the machine's.
    agent_state = cluster.workdir / "agent-state"
    cluster.helm(
        "install", RELEASE, str(REPO / "charts" / "edgeadapt"), "-n", SYSTEM_NS,
        "--create-namespace", "--take-ownership", "--set", "image.pullPolicy=Never",
        "--set", f"workloads.agentStatePath={agent_state}",
    )  # fmt: skip

    def operator_ready() -> bool:
        found = pods(cluster, SYSTEM_NS, "app.kubernetes.io/component=operator")
        return bool(found) and ready(found[0])

    wait_until(operator_ready, 180, "the operator pod Running and Ready", interval=1)
    record(operator_ready_after_helm_install_s=time.monotonic() - started_at)
    return cluster


def test_the_charts_operator_runs_as_a_pod_with_its_probes_and_rbac(chart: LocalCluster) -> None:
    cluster = chart
    (pod,) = pods(cluster, SYSTEM_NS, "app.kubernetes.io/component=operator")
    assert pod["spec"]["nodeName"] == "edge-0"
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"]
    assert status["restartCount"] == 0
    assert pod["spec"]["containers"][0]["livenessProbe"]
    logs = cluster.kubectl("logs", "-n", SYSTEM_NS, pod["metadata"]["name"]).stdout
    assert "forbidden" not in logs.lower(), logs[-3000:]
    # The endpoint the liveness probe asks answers inside the pod.
    container = pod["spec"]["containers"][0]
    port = container["livenessProbe"]["httpGet"]["port"]
    if isinstance(port, str):
        (port,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    probe = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:%s/healthz').status)"
    out = cluster.kubectl("exec", "-n", SYSTEM_NS, pod["metadata"]["name"], "--",
                          "python", "-c", probe % port)  # fmt: skip
    assert out.stdout.strip() == "200"


TRAINER_FIT = {"cpu": "250m", "memory": "1Gi"}
WORKLOADS = {
    "trainer": "edgeadapt.io/adaptation-policy",
    "edge-agent": "edgeadapt.io/edge-device",
}
APPLIED_AT: list[float] = []  # when the examples were applied (monotonic)
DEVICE = "cam-synthetic"  # the examples' device on the built-in video: it needs no camera
POLICY = "downtown"


def sized_for_this_machine(doc: dict[str, Any]) -> dict[str, Any]:
    """The example policy as a user of this 2-core machine would write it: the trainer asks for
    a share of it (not a GPU server's 2 CPUs and 8Gi), and trains the small synthetic profile on
    first start (about a minute on a CPU) rather than the benchmark's models."""
    if doc["kind"] != "AdaptationPolicy":
        return doc
    spec = dict(doc["spec"])
    spec["trainers"] = {**spec.get("trainers", {}), "resources": {"requests": TRAINER_FIT}}
    for role in ("teacher", "student"):
        spec[role] = {**spec.get(role, {}), "weights": {"synthetic": "tiny"}}
    return doc | {"spec": spec}


def edge_device(cluster: LocalCluster, name: str = DEVICE) -> dict[str, Any]:
    return dict(get_json(cluster, "edgedevice", name, "-n", DEMO_NS))


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def deployed_at(cluster: LocalCluster, version: int, timeout: float, what: str) -> dict[str, Any]:
    """The device once Ready with ModelDeployed and at least ``version``."""

    def check() -> dict[str, Any] | None:
        dev = edge_device(cluster)
        ok = (
            condition(dev, "Ready").get("status") == "True"
            and condition(dev, "ModelDeployed").get("status") == "True"
            and int(dev["status"].get("modelVersion") or 0) >= version
        )
        return dev if ok else None

    try:
        return wait_until(check, timeout, what, interval=2)
    except TimeoutError as exc:
        dev = edge_device(cluster)
        logs = "\n".join(
            cluster.kubectl("logs", "-n", DEMO_NS, p, "--tail=15", check=False).stdout
            for p in (f"{POLICY}-trainer-0", f"{DEVICE}-agent")
        )
        raise AssertionError(f"{exc}\n{json.dumps(dev.get('status'), indent=1)}\n{logs}") from exc


@pytest.fixture(scope="module")
def examples(chart: LocalCluster) -> dict[str, list[Any]]:
    """The examples applied with kubectl (the policy sized for this machine); every pod the
    operator renders, once each container has started on the node."""
    cluster = chart
    cluster.kubectl("create", "namespace", DEMO_NS)
    started_at = time.monotonic()
    for example in sorted((REPO / "examples").glob("*.yaml")):
        docs = [sized_for_this_machine(d) for d in yaml.safe_load_all(example.read_text()) if d]
        cluster.kubectl("apply", "-n", DEMO_NS, "-f", "-", input=yaml.safe_dump_all(docs))

    def rendered() -> dict[str, list[Any]]:
        return {w: pods(cluster, DEMO_NS, label) for w, label in WORKLOADS.items()}

    def all_started() -> bool:
        out = rendered()
        return all(out.values()) and all(started(p) for ps in out.values() for p in ps)

    with contextlib.suppress(TimeoutError):  # the tests below say which pod did not start
        wait_until(all_started, 300, "every rendered pod's container started", interval=2)
    # The clock for "kubectl apply to the first applied update" runs from here.
    APPLIED_AT.append(started_at)
    return rendered()


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_every_pod_the_operator_renders_starts_its_container(
    examples: dict[str, list[Any]], workload: str
) -> None:
    found = examples[workload]
    assert found, f"the operator rendered no {workload} pod for the examples"
    for pod in found:
        assert pod["spec"].get("nodeName") == "edge-0", pod["metadata"]["name"]
        assert started(pod), json.dumps(pod.get("status"), indent=1)[:3000]


def test_the_device_adapts_over_tls_with_its_minted_token(
    chart: LocalCluster, examples: dict[str, list[Any]]
) -> None:
    """With no step by hand: the trainer provisions its models on its claim, the agent fetches
    its starting model from it over TLS with the token the operator minted, and the EdgeDevice
    reports the trainer's current model deployed."""
    cluster = chart
    (began,) = APPLIED_AT
    dev = deployed_at(cluster, 1, 600, f"{DEVICE} Ready with its first update deployed")
    record(seconds_from_apply_to_first_update=time.monotonic() - began)
    dev = deployed_at(cluster, 3, 300, f"{DEVICE} at version 3")
    assert condition(dev, "AgentConnected")["status"] == "True"
    assert 0 < dev["status"]["accuracy"]["miouVsTeacher"] <= 1
    assert dev["status"]["bandwidth"]["uplinkKbps"] > 0
    pol = get_json(cluster, "adaptationpolicy", POLICY, "-n", DEMO_NS)
    assert condition(pol, "Ready")["status"] == "True"
    assert pol["status"]["devicesConnected"] >= 1
    # The trainer served over TLS only, and the agent's pod holds no model file of its own:
    # its claim has the starting model it fetched.
    agent = f"{DEVICE}-agent"
    listing = cluster.kubectl("exec", "-n", DEMO_NS, agent, "--", "ls", "/var/lib/edgeadapt")
    assert "starting-model.pth" in listing.stdout
    trainer_log = cluster.kubectl("logs", "-n", DEMO_NS, f"{POLICY}-trainer-0").stdout
    assert "sent the starting model" in trainer_log
    # The trainers' HTTP port (/status) is fenced to the operator by a NetworkPolicy (this CNI
    # does not enforce it; one that does would).
    netpol = get_json(cluster, "networkpolicy", f"{POLICY}-trainer", "-n", DEMO_NS)
    assert netpol["spec"]["ingress"][1]["ports"] == [{"protocol": "TCP", "port": 9090}]


def test_a_policy_edit_rolls_the_trainers_and_no_device_loses_its_version(
    chart: LocalCluster, examples: dict[str, list[Any]]
) -> None:
    cluster = chart
    before = deployed_at(cluster, 3, 300, f"{DEVICE} deployed")
    version = int(before["status"]["modelVersion"])
    trainer = f"{POLICY}-trainer-0"
    uid = get_json(cluster, "pod", trainer, "-n", DEMO_NS)["metadata"]["uid"]
    edit = {"spec": {"ams": {"iterations": 10}}}
    cluster.kubectl("patch", "adaptationpolicy", POLICY, "-n", DEMO_NS, "--type=merge",
                    "-p", json.dumps(edit))  # fmt: skip

    def rolled() -> bool:
        found = [p for p in pods(cluster, DEMO_NS) if p["metadata"]["name"] == trainer]
        return bool(found) and found[0]["metadata"]["uid"] != uid and ready(found[0])

    wait_until(rolled, 300, "the trainer rolled with the new parameters", interval=2)
    after = deployed_at(cluster, version + 1, 420, f"{DEVICE} past version {version}")
    assert int(after["status"]["modelVersion"]) > version
    config = get_json(cluster, "configmap", f"{POLICY}-trainer", "-n", DEMO_NS)
    assert json.loads(config["data"]["policy.json"])["ams"]["iterations"] == 10
    log = cluster.kubectl("logs", "-n", DEMO_NS, trainer).stdout
    assert "sending a snapshot" not in log


def test_a_weights_source_that_cannot_be_read_stalls_the_policy_naming_it(
    chart: LocalCluster, examples: dict[str, list[Any]]
) -> None:
    cluster = chart
    source = "https://127.0.0.1:9/teacher.pth"
    policy = {
        "apiVersion": "edgeadapt.io/v1alpha1",
        "kind": "AdaptationPolicy",
        "metadata": {"name": "broken", "namespace": DEMO_NS},
        "spec": {
            "teacher": {"weights": {"url": source, "sha256": "0" * 64}},
            "student": {"weights": {"synthetic": "tiny"}},
            "trainers": {"resources": {"requests": TRAINER_FIT}},
            "deviceSelector": {"matchLabels": {"site": "nowhere"}},
        },
    }
    device = {
        "apiVersion": "edgeadapt.io/v1alpha1",
        "kind": "EdgeDevice",
        "metadata": {"name": "cam-broken", "namespace": DEMO_NS, "labels": {"site": "nowhere"}},
        "spec": {
            "policyRef": {"name": "broken"},
            "node": {"name": "edge-0"},
            "video": {"uri": "synthetic:seed=3"},
        },
    }
    for obj in (policy, device):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))
    try:

        def stalled() -> dict[str, Any] | None:
            pol = get_json(cluster, "adaptationpolicy", "broken", "-n", DEMO_NS)
            cond = condition(pol, "Stalled")
            return cond if cond.get("reason") == "ModelProvisioningFailed" else None

        cond = wait_until(stalled, 300, "the policy Stalled for its weights source", interval=2)
        assert source in cond["message"]
        assert condition(edge_device(cluster, "cam-broken"), "Ready")["status"] == "False"
    finally:
        cluster.kubectl("delete", "edgedevice", "cam-broken", "-n", DEMO_NS, "--wait=false")
        cluster.kubectl("delete", "adaptationpolicy", "broken", "-n", DEMO_NS, "--wait=false")


def test_a_deleted_trainer_comes_back_on_its_claim_and_the_device_resumes(
    chart: LocalCluster, examples: dict[str, list[Any]]
) -> None:
    cluster = chart
    before = deployed_at(cluster, 3, 300, f"{DEVICE} deployed")
    version = int(before["status"]["modelVersion"])
    agent_log = f"{DEVICE}-agent"
    frames = _frames_inferred(cluster, agent_log)
    cluster.kubectl("delete", "pod", f"{POLICY}-trainer-0", "-n", DEMO_NS, "--wait=false")
    wait_until(
        lambda: condition(edge_device(cluster), "Ready").get("status") == "False",
        120,
        "the device NotReady while its trainer is away",
        interval=1,
    )
    assert _frames_inferred(cluster, agent_log) > frames  # it kept inferring
    after = deployed_at(cluster, version + 1, 420, f"{DEVICE} back past version {version}")
    assert condition(after, "AgentConnected")["status"] == "True"
    # It resumed where it was: the trainer came back with its devices' state and did not need
    # to send a snapshot.
    log = cluster.kubectl("logs", "-n", DEMO_NS, f"{POLICY}-trainer-0").stdout
    assert "sending a snapshot" not in log
    assert "training the" not in log  # the models were kept on its claim, not trained again


def test_an_edited_token_is_refused_shown_and_reminted(
    chart: LocalCluster, examples: dict[str, list[Any]]
) -> None:
    """A wrong token in the device's Secret: the trainer refuses the agent, the EdgeDevice says
    AgentConnected=False/Unauthenticated, the operator re-mints the token and the device is
    Ready again. The operator is stopped while the wrong token reaches the agent (it would
    write the right one back within a second, before the kubelet projects the edit)."""
    cluster = chart
    deployed_at(cluster, 1, 300, f"{DEVICE} deployed")
    agent, secret = f"{DEVICE}-agent", f"{DEVICE}-agent-token"
    operator = ["deployment", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/component=operator"]
    cluster.kubectl("scale", *operator, "--replicas=0")
    try:
        wait_until(
            lambda: not pods(cluster, SYSTEM_NS, "app.kubernetes.io/component=operator"),
            120,
            "the operator stopped",
            interval=1,
        )
        wrong = "ea1.not-the-token"
        patch = {"data": {"token": base64.b64encode(wrong.encode()).decode()}}
        cluster.kubectl(
            "patch", "secret", secret, "-n", DEMO_NS, "--type=merge", "-p", json.dumps(patch)
        )
        read = ["exec", "-n", DEMO_NS, agent, "--", "cat", "/etc/edgeadapt/token/token"]
        wait_until(
            lambda: cluster.kubectl(*read, check=False).stdout.strip() == wrong,
            120,
            "the kubelet to project the wrong token into the agent",
            interval=2,
        )
        # The agent presents the token when it connects: restart its process.
        stop = "import os, signal; os.kill(1, signal.SIGTERM)"
        cluster.kubectl("exec", "-n", DEMO_NS, agent, "--", "python", "-c", stop, check=False)
        wait_until(
            lambda: _agent_status(cluster, agent).get("connection") == "refused",
            180,
            "the trainer to refuse the agent",
            interval=2,
        )
    finally:
        cluster.kubectl("scale", *operator, "--replicas=1")

    def unauthenticated() -> dict[str, Any] | None:
        cond = condition(edge_device(cluster), "AgentConnected")
        return cond if cond.get("reason") == "Unauthenticated" else None

    cond = wait_until(unauthenticated, 180, f"{DEVICE} AgentConnected=Unauthenticated", interval=1)
    assert cond["status"] == "False"
    token = get_json(cluster, "secret", secret, "-n", DEMO_NS)["data"]["token"]
    assert base64.b64decode(token).decode() != wrong, "re-minted"
    after = deployed_at(cluster, 1, 300, f"{DEVICE} deployed with its re-minted token")
    assert condition(after, "AgentConnected")["status"] == "True"


BUDGET_DEVICE = "cam-budget"
BUDGET_KBPS = 100
BUDGET_WINDOW_S = 300.0


def test_a_device_with_a_100_kbps_downlink_stays_within_it_over_5_minutes(
    chart: LocalCluster, examples: dict[str, list[Any]]
) -> None:
    """The EdgeDevice's spec.link reaches its trainer: the agent's measured downlink over five
    minutes of adapting stays within 100 kbps, and the device says what the budget holds."""
    cluster = chart
    device = {
        "apiVersion": "edgeadapt.io/v1alpha1",
        "kind": "EdgeDevice",
        "metadata": {"name": BUDGET_DEVICE, "namespace": DEMO_NS, "labels": {"site": "downtown"}},
        "spec": {
            "policyRef": {"name": POLICY},
            "node": {"name": "edge-0"},
            "video": {"uri": "synthetic:seed=11,fps=10"},
            "link": {"downlinkKbps": BUDGET_KBPS, "uplinkKbps": 300},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(device))
    agent = f"{BUDGET_DEVICE}-agent"
    try:
        wait_until(
            lambda: _agent_status(cluster, agent).get("connection") == "connected",
            600,
            f"{BUDGET_DEVICE}'s agent connected",
            interval=2,
        )
        first = _agent_status(cluster, agent)
        t0 = time.monotonic()
        samples = [(0.0, int(first["downlink_bytes"]))]
        while time.monotonic() - t0 < BUDGET_WINDOW_S:
            time.sleep(30)
            now = _agent_status(cluster, agent)
            samples.append((time.monotonic() - t0, int(now["downlink_bytes"])))
        last = _agent_status(cluster, agent)
        seconds = samples[-1][0]
        kbps = (samples[-1][1] - samples[0][1]) * 8 / 1000 / seconds
        # Every minute-long stretch too, not just the average.
        worst = max(
            (b2 - b1) * 8 / 1000 / (t2 - t1)
            for (t1, b1), (t2, b2) in zip(samples, samples[2:], strict=False)
        )
        record(
            downlink_budget_kbps=BUDGET_KBPS,
            downlink_kbps_measured_over_5_min=kbps,
            downlink_kbps_worst_minute=worst,
        )
        assert 0 < kbps <= BUDGET_KBPS, samples
        assert worst <= BUDGET_KBPS, samples
        assert int(last["model_version"]) > int(first["model_version"]), "it kept adapting"
        dev = edge_device(cluster, BUDGET_DEVICE)
        limited = condition(dev, "BandwidthLimited")
        assert limited.get("reason") in {"BudgetBelowPolicy", "WithinBudget"}, dev["status"]
        assert "downlink 100 kbps" in limited["message"]
    finally:
        cluster.kubectl("delete", "edgedevice", BUDGET_DEVICE, "-n", DEMO_NS, "--wait=false")


def _agent_status(cluster: LocalCluster, pod: str) -> dict[str, Any]:
    probe = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9090/status').read().decode())"
    out = cluster.kubectl("exec", "-n", DEMO_NS, pod, "--", "python", "-c", probe, check=False)
    try:
        return dict(json.loads(out.stdout))
    except ValueError:
        return {}


def _frames_inferred(cluster: LocalCluster, pod: str) -> int:
    return int(_agent_status(cluster, pod).get("frames_inferred", -1))


def test_the_operator_stays_live_under_its_probes(chart: LocalCluster) -> None:
    """After the liveness probe's initial delay and a period, with the examples' pods churning on
    the node: no restart, no failed liveness probe."""
    cluster = chart
    (pod,) = pods(cluster, SYSTEM_NS, "app.kubernetes.io/component=operator")
    probe = pod["spec"]["containers"][0]["livenessProbe"]
    settle = probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) + 5
    started_at = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    age = time.time() - datetime.fromisoformat(started_at.replace("Z", "+00:00")).timestamp()
    if age < settle:
        time.sleep(settle - age)
    (pod,) = pods(cluster, SYSTEM_NS, "app.kubernetes.io/component=operator")
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    assert ready(pod)
    name = pod["metadata"]["name"]
    events = get_json(cluster, "events", "-n", SYSTEM_NS,
                      f"--field-selector=involvedObject.name={name},reason=Unhealthy")  # fmt: skip
    # A readiness probe may fail while kopf starts (that is what keeps the pod unready then);
    # a failed liveness probe is a fault.
    liveness = [e["message"] for e in events["items"] if "Liveness" in e.get("message", "")]
    assert liveness == []


RECL_NS, RECL_POLICY, RECL_DEVICE, RECL_ZOO = (
    "edgeadapt-recl", "riverside", "cam-riverside", "street-zoo",
)  # fmt: skip


def recl_sized(doc: dict[str, Any]) -> dict[str, Any]:
    """examples/recl/ as a user of this machine would write them: the policy sized like the
    AMS example's, windows of 10 s to see several in a test, a small zoo that admits promising
    models two at a time."""
    doc = sized_for_this_machine(doc)
    if doc["kind"] == "AdaptationPolicy":
        doc = doc | {"spec": doc["spec"] | {"recl": {"windowSeconds": 10}}}
    if doc["kind"] == "ModelZoo":
        spec = doc["spec"] | {"storage": {"size": "1Gi"}, "queueThresholdGamma": 1}
        doc = doc | {"spec": spec | {"gating": doc["spec"]["gating"] | {"topK": 3}}}
    return doc


def test_a_recl_policy_runs_its_zoos_gating_service_and_switches_its_device(
    chart: LocalCluster,
) -> None:
    """kubectl apply -f examples/recl/: the zoo's gating service runs as a pod with its
    certificate and key, the policy's trainer calls it over TLS with the token the operator
    minted, the device is switched at window ends (a deployed model version) and the zoo's
    status shows the picks its gating service recorded, read by the operator through the
    Service."""
    cluster = chart
    cluster.kubectl("create", "namespace", RECL_NS)
    began = time.monotonic()
    try:
        for example in sorted((REPO / "examples" / "recl").glob("*.yaml")):
            docs = [recl_sized(d) for d in yaml.safe_load_all(example.read_text()) if d]
            cluster.kubectl("apply", "-n", RECL_NS, "-f", "-", input=yaml.safe_dump_all(docs))

        def zoo_ready() -> dict[str, Any] | None:
            zoo = get_json(cluster, "modelzoo", RECL_ZOO, "-n", RECL_NS)
            return zoo if condition(zoo, "Ready").get("status") == "True" else None

        wait_until(zoo_ready, 600, f"ModelZoo {RECL_ZOO} Ready", interval=2)
        record(recl_seconds_to_zoo_ready=time.monotonic() - began)

        def device_switched() -> dict[str, Any] | None:
            dev = get_json(cluster, "edgedevice", RECL_DEVICE, "-n", RECL_NS)
            ok = (
                condition(dev, "Ready").get("status") == "True"
                and condition(dev, "ModelDeployed").get("status") == "True"
                and int((dev.get("status") or {}).get("modelVersion") or 0) >= 1
            )
            return dev if ok else None

        try:
            wait_until(device_switched, 900, f"{RECL_DEVICE} switched at a window's end", 2)
        except TimeoutError as exc:
            logs = "\n".join(
                cluster.kubectl("logs", "-n", RECL_NS, p, "--tail=20", check=False).stdout
                for p in (f"{RECL_POLICY}-trainer-0", f"{RECL_DEVICE}-agent")
            )
            raise AssertionError(f"{exc}\n{logs}") from exc
        record(recl_seconds_to_first_switch=time.monotonic() - began)

        def picks_shown() -> dict[str, Any] | None:
            zoo = get_json(cluster, "modelzoo", RECL_ZOO, "-n", RECL_NS)
            return zoo if int(zoo["status"].get("selections") or 0) >= 2 else None

        zoo = wait_until(picks_shown, 300, f"{RECL_ZOO}'s status showing the picks", interval=2)
        assert zoo["status"]["gatingVersion"] >= 0, zoo["status"]
        pol = get_json(cluster, "adaptationpolicy", RECL_POLICY, "-n", RECL_NS)
        assert condition(pol, "Ready")["status"] == "True", pol["status"]
        assert condition(pol, "ModelZooResolved")["status"] == "True"
        (gating,) = pods(cluster, RECL_NS, "edgeadapt.io/model-zoo")
        assert gating["spec"]["nodeName"] == "edge-0"
        assert ready(gating)
        log = cluster.kubectl("logs", "-n", RECL_NS, gating["metadata"]["name"]).stdout
        assert "bad token" not in log, log[-3000:]
        trainer_log = cluster.kubectl("logs", "-n", RECL_NS, f"{RECL_POLICY}-trainer-0").stdout
        assert "window ended" in trainer_log
        assert "gating service unavailable" not in trainer_log, trainer_log[-3000:]
        record(recl_zoo_selections=float(zoo["status"]["selections"]),
               recl_zoo_experts=float(zoo["status"].get("experts") or 0))  # fmt: skip
    finally:
        cluster.kubectl("delete", "namespace", RECL_NS, "--wait=false", check=False)


def test_images_imported_once_are_not_imported_again(real_cluster: LocalCluster) -> None:
    from edgeadapt.devcluster import images

    assert real_cluster.node is not None
    seconds = images.import_into_containerd(
        real_cluster.node.images, real_cluster.node.socket, Path("/dev/null")
    )
    assert seconds < 10
