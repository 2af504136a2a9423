"""EdgeDevice: an edge-agent pod on the device's KubeEdge node, its token, a trainer binding.

Children (deterministic names, owned by the EdgeDevice):
- Secret ``<device>-agent-token``: the device's token, minted from its policy's token key
  (``security``); written back whenever it differs (edited by hand, or the key was rotated).
- Pod ``<device>-agent``: the agent, started by the launch contract (``edgeadapt.api.launch``),
  pinned to ``spec.node.name`` or scheduled onto an edge node matching ``spec.node.selector``,
  tolerating the edge taint, told its trainer's endpoint, trusting the policy's CA bundle. It
  keeps its model (the starting model it fetched from its trainer and the version it runs) in a
  directory of its node (``hostPath`` under ``Images.agent_state_path``), which survives a pod
  restart or replacement on that node: edge nodes seldom have a volume provisioner, and a claim
  per device would cost the cluster a volume binding for every camera. A small init container
  gives that directory to the agent's user. A pod's spec cannot change, so a changed desired
  spec (say, a new trainer) replaces the pod.

Status comes from the data plane as well: the device's trainer's ``/status`` (``observe``) says
whether the agent is connected (``AgentConnected``) and runs the trainer's current model
(``ModelDeployed``), and gives the figures; ``Ready`` needs both.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeadapt.api import keys, launch
from edgeadapt.api.conditions import (
    AGENT_CONNECTED,
    AGENT_READY,
    BANDWIDTH_LIMITED,
    MODEL_DEPLOYED,
    TRAINER_BOUND,
    Check,
    Reason,
    Status,
    condition,
    now_rfc3339,
)
from edgeadapt.api.specs import AdaptationPolicySpec, EdgeDeviceSpec
from edgeadapt.api.v1alpha1 import ADAPTATION_POLICY, EDGE_DEVICE, GROUP, Kind
from edgeadapt.controllers import observe, security
from edgeadapt.controllers.base import Cache
from edgeadapt.controllers.binding import Bindings, TrainerPool, label_selector_matches
from edgeadapt.controllers.common import (
    CONFIG_MAP,
    POD,
    SECRET,
    Apply,
    Body,
    ChildKind,
    Delete,
    Images,
    Owner,
    Plan,
    Rule,
    child_metadata,
    hardened,
    http_probe,
    pod_ready,
    rules,
    spec_hash_of,
    status_differs,
    status_with_conditions,
    summary_conditions,
    transition_events,
)
from edgeadapt.pki import KeyPair

RBAC_RULES = rules(
    (GROUP, "edgedevices", "get list watch"),
    (GROUP, "edgedevices/status", "get patch"),
    ("", "pods", "get list watch create delete"),
    ("", "secrets", "get list watch create patch"),
)

COMPONENT = "edge-agent"
# A device bound or released changes what its policy wants; policy reconciles of a burst of
# device changes collapse into one.
POLICY_DEBOUNCE_S = 0.5
TOKEN_KEY = "token"


def agent_pod_name(device: str) -> str:
    return f"{device}-agent"


def token_secret_name(device: str) -> str:
    return security.device_token_secret_name(device)


def trainer_pod_name(policy: str, index: int) -> str:
    return f"{policy}-trainer-{index}"


def trainer_endpoint(policy: str, index: int, namespace: str, cluster_domain: str) -> str:
    """The trainer pod's stable DNS name under the policy's headless Service, and its port."""
    host = f"{trainer_pod_name(policy, index)}.{policy}-trainer.{namespace}.svc.{cluster_domain}"
    return f"{host}:{keys.TRAINER_GRPC_PORT}"


@dataclass(frozen=True)
class Binding:
    """A device's binding: the trainer index, or why it has none."""

    trainer: int | None
    reason: str
    message: str
    policy: str

    @property
    def stalled(self) -> bool:
        return self.trainer is None and self.reason in (
            Reason.POLICY_NOT_FOUND,
            Reason.NOT_SELECTED,
            Reason.NO_TRAINER_CAPACITY,
        )


def resolve_binding(
    device: Mapping[str, Any],
    policy: Mapping[str, Any] | None,
    pool: TrainerPool | None,
) -> Binding:
    """Bind or release ``device`` in its policy's ``pool`` and say what came of it."""
    meta, spec = device["metadata"], EdgeDeviceSpec.of(device.get("spec"))
    name, namespace = meta["name"], meta["namespace"]
    policy_name = spec.policy
    if spec.suspend:
        if pool is not None:
            pool.release(name)
        return Binding(None, Reason.SUSPENDED, "the device is suspended", policy_name)
    if policy is None or pool is None:
        return Binding(
            None,
            Reason.POLICY_NOT_FOUND,
            f'AdaptationPolicy "{policy_name}" not found in namespace "{namespace}"',
            policy_name,
        )
    pspec = AdaptationPolicySpec.of(policy.get("spec"))
    if pspec.suspend:
        pool.release(name)
        return Binding(
            None, Reason.SUSPENDED, f'AdaptationPolicy "{policy_name}" is suspended', policy_name
        )
    if not label_selector_matches(pspec.device_selector, meta.get("labels") or {}):
        pool.release(name)
        return Binding(
            None,
            Reason.NOT_SELECTED,
            f'the deviceSelector of AdaptationPolicy "{policy_name}" does not match this device',
            policy_name,
        )
    preferred = trainer_index(policy_name, (device.get("status") or {}).get("trainer"))
    index = pool.bind(name, preferred)
    if index is None:
        cap = pool.capacity
        return Binding(
            None,
            Reason.NO_TRAINER_CAPACITY,
            f'AdaptationPolicy "{policy_name}" serves at most {cap.total} devices '
            f"({cap.max_trainers} trainers x {cap.slots_per_trainer} devices) and all are bound"
            + (
                f"; trainers {sorted(pool.closed)} report low GPU memory and take no new devices"
                if pool.closed
                else ""
            ),
            policy_name,
        )
    return Binding(
        index,
        Reason.SUCCEEDED,
        f"bound to trainer {trainer_pod_name(policy_name, index)}",
        policy_name,
    )


def trainer_index(policy: str, trainer: Any) -> int | None:
    prefix = f"{policy}-trainer-"
    if isinstance(trainer, str) and trainer.startswith(prefix) and trainer[len(prefix) :].isdigit():
        return int(trainer[len(prefix) :])
    return None


def state_path(owner: Owner, images: Images) -> str:
    """The agent's directory on its node."""
    return f"{images.agent_state_path}/{owner.namespace}/{owner.name}"


def agent_launch(
    owner: Owner, spec: EdgeDeviceSpec, endpoint: str, mutual_tls: bool = False
) -> launch.AgentLaunch:
    return launch.AgentLaunch(
        device_id=owner.name,
        source=spec.video_uri,
        trainer=endpoint,
        uplink_kbps=spec.uplink_kbps,
        downlink_kbps=spec.downlink_kbps,
        expert_cache=spec.expert_cache,
        ca_file=f"{launch.CA_DIR}/{launch.CA_CERT}",
        token_file=f"{launch.TOKEN_DIR}/{launch.TOKEN_FILE}",
        cert_file=f"{launch.CLIENT_TLS_DIR}/{launch.TLS_CERT}" if mutual_tls else None,
        key_file=f"{launch.CLIENT_TLS_DIR}/{launch.TLS_KEY}" if mutual_tls else None,
        state_dir=launch.STATE_DIR,
        loop=True,
        http_listen=f"0.0.0.0:{keys.METRICS_PORT}",
        log_format="json",
    )


def agent_pod(
    owner: Owner,
    spec: EdgeDeviceSpec,
    endpoint: str,
    policy: str,
    images: Images,
    mutual_tls: bool = False,
) -> Body:
    options = agent_launch(owner, spec, endpoint, mutual_tls)
    pod_spec: Body = {
        "restartPolicy": "Always",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "tolerations": [
            {"key": keys.EDGE_NODE_ROLE, "operator": "Exists", "effect": "NoSchedule"},
            {"key": keys.EDGE_NODE_ROLE, "operator": "Exists", "effect": "NoExecute"},
        ],
        "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
        # The kubelet makes the node directory root's; this gives it to the agent's user, with
        # the one capability that takes and nothing else.
        "initContainers": [
            {
                "name": "state-owner",
                "image": images.edge_agent,
                "imagePullPolicy": images.pull_policy,
                "command": ["chown", "10001:10001", launch.STATE_DIR],
                "securityContext": {
                    "runAsUser": 0,
                    "runAsNonRoot": False,
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "volumeMounts": [{"name": "state", "mountPath": launch.STATE_DIR}],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
            }
        ],
        "containers": [
            {
                "name": "edge-agent",
                "image": images.edge_agent,
                "imagePullPolicy": images.pull_policy,
                "command": options.command(),
                "args": options.args(),
                "env": [
                    {"name": "EDGEADAPT_NAMESPACE", "value": owner.namespace},
                    {"name": "HOME", "value": launch.TMP_DIR},
                ],
                "ports": [{"name": "metrics", "containerPort": keys.METRICS_PORT}],
                # /healthz answers 503 once a thread the agent needs has died; the kubelet then
                # restarts it. The endpoint opens at once; on first start the agent fetches its
                # starting model from the trainer (which may still be training it) before it
                # reports ready.
                "readinessProbe": http_probe("/readyz", period=5, failures=1),
                "livenessProbe": http_probe("/healthz", period=10, failures=3),
                "resources": {
                    "requests": {"cpu": "100m", "memory": "256Mi"},
                    "limits": {"memory": "1Gi"},
                },
                "securityContext": hardened() | {"runAsNonRoot": True},
                "volumeMounts": [
                    {"name": "token", "mountPath": launch.TOKEN_DIR, "readOnly": True},
                    {"name": "ca", "mountPath": launch.CA_DIR, "readOnly": True},
                    {"name": "state", "mountPath": launch.STATE_DIR},
                    {"name": "tmp", "mountPath": launch.TMP_DIR},
                ],
            }
        ],
        "volumes": [
            {
                "name": "token",
                "secret": {"secretName": token_secret_name(owner.name), "defaultMode": 0o440},
            },
            {"name": "ca", "configMap": {"name": security.ca_config_map_name(policy)}},
            {
                "name": "state",
                "hostPath": {"path": state_path(owner, images), "type": "DirectoryOrCreate"},
            },
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if mutual_tls:
        pod_spec["containers"][0]["volumeMounts"].append(
            {"name": "client-tls", "mountPath": launch.CLIENT_TLS_DIR, "readOnly": True}
        )
        pod_spec["volumes"].append(
            {
                "name": "client-tls",
                "secret": {
                    "secretName": security.client_tls_secret_name(owner.name),
                    "defaultMode": 0o440,
                },
            }
        )
    if spec.node_name:
        pod_spec["nodeName"] = spec.node_name
    else:
        pod_spec["nodeSelector"] = {keys.EDGE_NODE_ROLE: ""} | dict(spec.node_selector)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": child_metadata(
            owner, agent_pod_name(owner.name), keys.EDGE_DEVICE_LABEL, COMPONENT, pod_spec
        ),
        "spec": pod_spec,
    }


def data_plane(
    name: str, observation: observe.TrainerObservation | None, trainer: str
) -> tuple[tuple[Status, str, str], tuple[Status, str, str], dict[str, Any] | None]:
    """AgentConnected and ModelDeployed (status, reason, message) and the trainer's view of the
    device, from the last observation of its trainer."""
    if observation is None or not observation.serving:
        why = (
            f"trainer {trainer} has not been observed yet"
            if observation is None
            else f"trainer {trainer} is not serving"
            + (f": {observation.error}" if observation.error else "")
        )
        down: tuple[Status, str, str] = ("False", Reason.TRAINER_UNAVAILABLE, why)
        return down, down, None
    view = observation.devices.get(name)
    refused = observation.refused.get(name)
    if refused is not None:
        what = (
            "client certificate (issued for another device)"
            if refused.get("reason") == "ClientCertificateMismatch"
            else "token"
        )
        msg = f"trainer {trainer} refused the agent's {what}"
        return (
            ("False", Reason.UNAUTHENTICATED, msg),
            ("False", Reason.NOT_CONNECTED, msg),
            view,
        )
    if not observe.connected(view):
        msg = f"the agent has no stream open to trainer {trainer}"
        return ("False", Reason.NOT_CONNECTED, msg), ("False", Reason.NOT_CONNECTED, msg), view
    assert view is not None
    agent_connected: tuple[Status, str, str] = (
        "True",
        Reason.SUCCEEDED,
        f"the agent streams to trainer {trainer}",
    )
    version, current = view.get("agent_model_version"), view.get("model_version")
    if observe.in_step(view):
        deployed: tuple[Status, str, str] = (
            "True",
            Reason.SUCCEEDED,
            f"the agent runs version {version} (trainer: {current}), checksums equal",
        )
    else:
        deployed = (
            "False",
            Reason.MODEL_BEHIND,
            f"the agent runs version {version} with checksum {view.get('agent_model_checksum')}; "
            f"the trainer's is {current}",
        )
    return agent_connected, deployed, view


def decide(
    device: Mapping[str, Any],
    binding: Binding,
    *,
    pod: Mapping[str, Any] | None,
    token_secret: Mapping[str, Any] | None,
    policy_key: bytes | None,
    ca_published: bool,
    observation: observe.TrainerObservation | None,
    images: Images,
    now: str,
    now_ts: float,
    mutual_tls: bool = False,
    client_tls: KeyPair | None = None,
    client_tls_published: bool = False,
) -> Plan:
    """Desired children and status of one EdgeDevice from what was observed.

    With ``mutual_tls`` (its policy's spec.mutualTLS) the device's client certificate
    ``client_tls`` (the observed one while good, ``security.client_pair``) is kept in its Secret,
    and the agent pod waits for that Secret (``client_tls_published``)."""
    owner = Owner.of(EDGE_DEVICE, device)
    spec = EdgeDeviceSpec.of(device.get("spec"))
    gen = owner.generation
    plan = Plan()
    suspended = spec.suspend
    bound = binding.trainer is not None

    if policy_key is not None:
        want = security.device_token_secret(owner, policy_key)
        if token_secret is None or (token_secret.get("data") or {}) != want["data"]:
            plan.apply.append(Apply(SECRET, want, mode="patch" if token_secret else "create"))
    if mutual_tls and client_tls is not None:
        plan.apply.append(Apply(SECRET, security.client_tls_secret(owner, client_tls)))
    # A bound agent starts once it can authenticate: its token and the CA bundle exist (and its
    # client certificate, with mutual TLS).
    credentials = not bound or (
        policy_key is not None and ca_published and (not mutual_tls or client_tls_published)
    )

    endpoint = ""
    trainer = None
    if binding.trainer is not None:
        trainer = trainer_pod_name(binding.policy, binding.trainer)
        endpoint = trainer_endpoint(
            binding.policy, binding.trainer, owner.namespace, images.cluster_domain
        )
    desired_pod = agent_pod(owner, spec, endpoint, binding.policy, images, mutual_tls)
    pod_name = agent_pod_name(owner.name)
    agent: tuple[Status, str, str]  # status, reason, message
    pod_state = _pod_state(pod, desired_pod)
    if suspended:
        if pod is not None:
            plan.delete.append(Delete(POD, pod_name))
        agent = ("False", Reason.SUSPENDED, "the device is suspended")
    elif not credentials:
        agent = (
            "False",
            Reason.WAITING_FOR_CREDENTIALS,
            f'waiting for the token key and CA bundle of AdaptationPolicy "{binding.policy}"'
            + (" and the device's client certificate" if mutual_tls else ""),
        )
    elif pod_state == "stale":
        plan.delete.append(Delete(POD, pod_name))
        agent = ("False", Reason.AGENT_PENDING, f"replacing pod {pod_name} with the new spec")
    elif pod_state == "failed":
        plan.delete.append(Delete(POD, pod_name))
        agent = ("False", Reason.AGENT_FAILED, f"pod {pod_name} failed; replacing it")
    elif pod_state == "missing":
        plan.apply.append(Apply(POD, desired_pod, mode="replace"))
        agent = ("False", Reason.AGENT_PENDING, f"creating pod {pod_name}")
    elif pod_state == "ready":
        assert pod is not None
        agent = ("True", Reason.SUCCEEDED, f"pod {pod_name} runs on node {_node_of(pod)}")
    else:
        phase = ((pod or {}).get("status") or {}).get("phase", "Unknown")
        agent = ("False", Reason.AGENT_PENDING, f"pod {pod_name} is {phase}")

    view = None
    if trainer is not None:
        connected, deployed, view = data_plane(owner.name, observation, trainer)
    else:
        connected = deployed = ("False", binding.reason, binding.message)
    if suspended:
        connected = deployed = ("False", Reason.SUSPENDED, "the device is suspended")

    bound_check = Check(
        "True" if bound else "False", binding.reason, binding.message, binding.stalled
    )
    conds = summary_conditions(
        [bound_check, Check(*agent), Check(*connected), Check(*deployed)],
        ready=f"{agent[2]}; {binding.message}; {deployed[2]}",
        generation=gen,
        suspended="the device is suspended" if suspended else None,
    )
    conds.append(condition(TRAINER_BOUND, *bound_check[:3], generation=gen))
    conds.append(condition(AGENT_READY, *agent, generation=gen))
    conds.append(condition(AGENT_CONNECTED, *connected, generation=gen))
    conds.append(condition(MODEL_DEPLOYED, *deployed, generation=gen))
    limited = None if suspended else observe.bandwidth_limited(view)
    if limited is not None:
        conds.append(condition(BANDWIDTH_LIMITED, *limited, generation=gen))

    current = device.get("status") or {}
    fields: dict[str, Any] = {
        "nodeName": _node_of(pod) if pod_state in {"ready", "pending"} else None,
        "trainer": trainer,
        "trainerEndpoint": endpoint or None,
        "agentPod": None if suspended else pod_name,
    }
    figures = {k: current[k] for k in observe.FIGURE_KEYS if k in current}
    if view is not None and observe.connected(view) and observation is not None:
        fresh = observe.device_figures(view, observation.time)
        if observe.figures_due(current, fresh, now_ts):
            figures = fresh
    fields |= figures
    status = status_with_conditions(current, conds, fields, generation=gen, now=now)
    if status_differs(current, status):
        plan.status = status
        plan.events = transition_events(current, status, "EdgeDevice")
    return plan


def _pod_state(pod: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> str:
    if pod is None:
        return "missing"
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return "terminating"
    if spec_hash_of(pod) != spec_hash_of(desired):
        return "stale"
    phase = (pod.get("status") or {}).get("phase")
    if phase in ("Failed", "Succeeded"):
        return "failed"
    return "ready" if pod_ready(pod) else "pending"


def _node_of(pod: Mapping[str, Any] | None) -> str | None:
    node = ((pod or {}).get("spec") or {}).get("nodeName")
    return str(node) if node else None


@dataclass
class EdgeDeviceController:
    """EdgeDevices: binds each to a trainer of its policy (``Bindings``, shared with the
    policies' controller), and observes its agent pod, token Secret, the policy's credentials and
    its trainer's ``/status`` for ``decide``."""

    cache: Cache
    bindings: Bindings
    kind: Kind = EDGE_DEVICE
    owner_label: str = keys.EDGE_DEVICE_LABEL
    rbac: Sequence[Rule] = tuple(RBAC_RULES)
    ignores: tuple[ChildKind, ...] = ()
    client_issued: dict[tuple[str, str], KeyPair] = field(default_factory=dict)

    def stored(self, obj: Body) -> None:
        meta = obj["metadata"]
        self.bindings.refer(meta["namespace"], meta["name"], EdgeDeviceSpec.of(obj["spec"]).policy)

    def forgotten(self, namespace: str, name: str) -> None:
        self.client_issued.pop((namespace, name), None)
        self._requeue_released(namespace, self.bindings.forget_device(namespace, name))

    def primed(self) -> None:
        pass

    def reconcile(self, device: Body) -> Plan:
        cache, images = self.cache, self.cache.images
        ns, name = device["metadata"]["namespace"], device["metadata"]["name"]
        policy_name = EdgeDeviceSpec.of(device["spec"]).policy
        self._requeue_released(ns, self.bindings.move(ns, name, policy_name))
        policy = cache.get(ADAPTATION_POLICY, ns, policy_name)
        pool = self.bindings.pools.get((ns, policy_name)) if policy is not None else None
        before = (pool.trainer_of(name), pool.trainers_wanted) if pool else None
        binding = resolve_binding(device, policy, pool)
        if pool is not None and before != (pool.trainer_of(name), pool.trainers_wanted):
            cache.queue(ADAPTATION_POLICY, ns, policy_name, POLICY_DEBOUNCE_S)
        observation = None
        if binding.trainer is not None:
            observation = cache.observations.get((ns, binding.policy, binding.trainer))
        mutual = policy is not None and AdaptationPolicySpec.of(policy["spec"]).mutual_tls
        client_tls = None
        client_secret = cache.child(SECRET, ns, security.client_tls_secret_name(name))
        if mutual and cache.ca is not None:
            observed = client_secret
            issued = self.client_issued.get((ns, name))
            if observed is None and issued is not None:  # written, not seen back yet
                observed = security.client_tls_secret(Owner.of(EDGE_DEVICE, device), issued)
            client_tls = security.client_pair(observed, cache.ca, name)
            self.client_issued[(ns, name)] = client_tls
        ca_bundle = security.ca_config_map_name(policy_name)
        return decide(
            device,
            binding,
            pod=cache.child(POD, ns, agent_pod_name(name)),
            token_secret=cache.child(SECRET, ns, token_secret_name(name)),
            policy_key=cache.token_key(ns, policy_name) if policy is not None else None,
            ca_published=cache.child(CONFIG_MAP, ns, ca_bundle) is not None,
            observation=observation,
            images=images,
            now=now_rfc3339(),
            now_ts=time.time(),
            mutual_tls=mutual,
            client_tls=client_tls,
            client_tls_published=client_secret is not None,
        )

    def _requeue_released(self, namespace: str, policy: str | None) -> None:
        """A policy's pool released a device: the policy may want fewer trainers."""
        if policy is not None:
            self.cache.queue(ADAPTATION_POLICY, namespace, policy, POLICY_DEBOUNCE_S)
