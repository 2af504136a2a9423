"""The real-node tier: a kubelet with containerd, runc and CNI joined to the local control plane
runs the project's images. Pods start, probes run, Secrets, ConfigMaps, emptyDirs and claims of
the local-path class mount, Services and cluster DNS work through kube-proxy and CoreDNS; the
chart's operator runs as a pod and every pod it renders for the examples starts its container."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

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
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "1"
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

CLIENT = """
import socket, urllib.request
for name in ("web.smoke.svc", "web-0.web-headless.smoke.svc.cluster.local",
             "kubernetes.default.svc.cluster.local"):
    print(name, socket.gethostbyname(name), flush=True)
for url in ("http://web.smoke.svc:8000/", "http://web-0.web-headless.smoke.svc:8000/"):
    print(url, urllib.request.urlopen(url, timeout=10).read().decode(), flush=True)
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
    cluster.kubectl("apply", "-f", str(REPO / "crds"))
    started_at = time.monotonic()
    cluster.helm(
        "install", RELEASE, str(REPO / "charts" / "edgeadapt"), "-n", SYSTEM_NS,
        "--create-namespace", "--take-ownership", "--set", "image.pullPolicy=Never",
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


# What each workload the operator renders for the examples does on the real node today: its pod
# starts, its process exits for the reason below, and the pod does not become Ready. Each entry
# flips to a failure (strict xfail) once the issue named makes that pod Ready.
NOT_READY_YET = {
    "trainer": "refuses to serve without TLS and device tokens, which the operator does not "
    "give it yet (the workloads issue)",
    "edge-agent": "has no CA file or token to reach its trainer yet (the workloads issue)",
    "gating": "python -m edgeadapt.gating does not exist yet (the RECL issue)",
}
TRAINER_FIT = {"cpu": "250m", "memory": "1Gi"}
WORKLOADS = {
    "trainer": "edgeadapt.io/adaptation-policy",
    "gating": "edgeadapt.io/model-zoo",
    "edge-agent": "edgeadapt.io/edge-device",
}


@pytest.fixture(scope="module")
def examples(chart: LocalCluster) -> dict[str, list[Any]]:
    """The examples applied with kubectl; every pod the operator renders, once each container
    has started on the node (or after 5 minutes, whatever state they are in)."""
    cluster = chart
    cluster.kubectl("create", "namespace", DEMO_NS)
    for example in sorted((REPO / "examples").glob("*.yaml")):
        cluster.kubectl("apply", "-n", DEMO_NS, "-f", str(example))
    # The example's trainer asks for a GPU server's share (2 CPUs, 8Gi); this node is the whole
    # 2-core machine, so the policy is sized down the way a user would size it.
    fit = {"spec": {"trainers": {"resources": {"requests": TRAINER_FIT}}}}
    cluster.kubectl(
        "patch",
        "adaptationpolicy",
        "downtown",
        "-n",
        DEMO_NS,
        "--type=merge",
        "-p",
        json.dumps(fit),
    )

    def rendered() -> dict[str, list[Any]]:
        out = {w: pods(cluster, DEMO_NS, label) for w, label in WORKLOADS.items()}
        return out

    def all_started() -> bool:
        out = rendered()
        return all(out.values()) and all(started(p) for ps in out.values() for p in ps)

    with contextlib.suppress(TimeoutError):  # the tests below say which pod did not start
        wait_until(all_started, 300, "every rendered pod's container started", interval=2)
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


@pytest.mark.parametrize(
    "workload",
    [
        pytest.param(w, marks=pytest.mark.xfail(strict=True, reason=f"the {w} process {why}"))
        for w, why in sorted(NOT_READY_YET.items())
    ],
)
def test_every_pod_the_operator_renders_becomes_ready(
    chart: LocalCluster, examples: dict[str, list[Any]], workload: str
) -> None:
    for pod in examples[workload]:
        name = pod["metadata"]["name"]
        logs = chart.kubectl("logs", "-n", DEMO_NS, name, "--tail=20", check=False)
        assert ready(pod), f"{name} is not Ready; its last output:\n{logs.stdout}{logs.stderr}"


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


def test_images_imported_once_are_not_imported_again(real_cluster: LocalCluster) -> None:
    from edgeadapt.devcluster import images

    assert real_cluster.node is not None
    seconds = images.import_into_containerd(
        real_cluster.node.images, real_cluster.node.socket, Path("/dev/null")
    )
    assert seconds < 10
