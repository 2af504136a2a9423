"""AdaptationPolicy: the trainers that adapt its devices' models.

Children (deterministic names, owned by the AdaptationPolicy):
- ConfigMap ``<policy>-trainer``: the algorithm parameters as ``policy.json``, read by trainers.
- Service ``<policy>-trainer``: headless, the trainers' gRPC port; it gives every trainer pod the
  stable name ``<policy>-trainer-<i>.<policy>-trainer`` that bound devices are told.
- StatefulSet ``<policy>-trainer``: one pod per trainer, each requesting ``gpusPerTrainer``
  ``nvidia.com/gpu`` on GPU nodes, started by the launch contract (``edgeadapt.api.launch``):
  its teacher and student by architecture and weights source, provisioned into its claim from
  ``volumeClaimTemplates`` (with the per-device state). Its replica count is the number of
  trainers the bound devices need (see ``binding``); the ConfigMap's and the token key's hashes on
  the pod template roll trainers on an edit or a key rotation.
- The security material of ``security``: the token key Secret, the trainers' TLS Secret and the
  CA ConfigMap agents trust.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeadapt.api import keys, launch
from edgeadapt.api.conditions import (
    MODEL_ZOO_RESOLVED,
    TRAINERS_AVAILABLE,
    Check,
    Reason,
    Status,
    condition,
    is_ready,
    now_rfc3339,
)
from edgeadapt.api.specs import AdaptationPolicySpec, EdgeDeviceSpec, ModelSpec, ModelZooSpec
from edgeadapt.api.v1alpha1 import ADAPTATION_POLICY, EDGE_DEVICE, GROUP, MODEL_ZOO, Kind
from edgeadapt.controllers import edgedevice, observe, security
from edgeadapt.controllers.base import Cache
from edgeadapt.controllers.binding import Bindings, Capacity, TrainerPool
from edgeadapt.controllers.common import (
    CERTIFICATE,
    CONFIG_MAP,
    NETWORK_POLICY,
    POD,
    SECRET,
    SERVICE,
    STATEFUL_SET,
    Apply,
    Body,
    ChildKind,
    Images,
    Owner,
    Plan,
    Rule,
    child_metadata,
    hardened,
    http_probe,
    rolled_out,
    rules,
    selector_labels,
    spec_hash,
    status_differs,
    status_with_conditions,
    summary_conditions,
    transition_events,
)
from edgeadapt.controllers.modelzoo import (
    gating_ca_config_map_name,
    gating_endpoint,
    gating_key_secret_name,
)
from edgeadapt.controllers.observe import PolicyFigures
from edgeadapt.pki import KeyPair

RBAC_RULES = rules(
    (GROUP, "adaptationpolicies", "get list watch"),
    (GROUP, "adaptationpolicies/status", "get patch"),
    (GROUP, "modelzoos", "get list watch"),
    ("", "configmaps", "get list watch create patch"),
    ("", "services", "get list watch create patch"),
    ("", "secrets", "get list watch create patch"),
    ("", "pods", "get list watch"),
    ("apps", "statefulsets", "get list watch create patch"),
    ("networking.k8s.io", "networkpolicies", "get list watch create patch"),
)
# Where the chart enables cert-manager (certManager.enabled).
CERT_MANAGER_RULES = rules(("cert-manager.io", "certificates", "get list watch create patch"))

COMPONENT = "trainer"
CONFIG_FILE = launch.CONFIG_FILE
SOURCES_DIR = f"{launch.STATE_DIR}-sources"  # read-only claims that weights come from


def trainer_name(policy: str) -> str:
    return f"{policy}-trainer"


def trainer_parameters(spec: AdaptationPolicySpec) -> dict[str, Any]:
    """What the trainers read from their ConfigMap (``--config``): the algorithm parameters."""
    return {
        "strategy": spec.strategy,
        "ams": dict(spec.ams),
        "sampling": dict(spec.sampling),
        "recl": dict(spec.recl),
        "scheduler": dict(spec.scheduler),
    }


def gating_token_secret_name(policy: str) -> str:
    """The trainers' token for their ModelZoo's gating service (strategies recl, ams+recl)."""
    return f"{policy}-gating-token"


def uses_zoo(spec: AdaptationPolicySpec) -> bool:
    """Whether the policy's trainers call its ModelZoo's gating service."""
    return launch.uses_recl(spec.strategy) and spec.model_zoo is not None


def weights_source(w: Mapping[str, Any]) -> tuple[launch.WeightsSource, str | None]:
    """A policy's weights object as a source for the launch contract, and the claim it needs
    mounted (for ``persistentVolumeClaim``)."""
    if "torchvision" in w:
        return launch.WeightsSource("torchvision", str(w["torchvision"])), None
    if "url" in w:
        return launch.WeightsSource("url", str(w["url"]), str(w.get("sha256", ""))), None
    if "persistentVolumeClaim" in w:
        ref = w["persistentVolumeClaim"]
        claim, path = str(ref["claimName"]), str(ref["path"]).lstrip("/")
        return launch.WeightsSource("file", f"{SOURCES_DIR}/{claim}/{path}"), claim
    return launch.WeightsSource("synthetic", str(w["synthetic"])), None


def model_ref(model: ModelSpec) -> tuple[launch.ModelRef, str | None]:
    source, claim = weights_source(model.weights)
    return launch.ModelRef(model.architecture, source), claim


def trainer_launch(
    spec: AdaptationPolicySpec, owner: Owner | None = None, cluster_domain: str = "cluster.local"
) -> tuple[launch.TrainerLaunch, list[str]]:
    """The trainer's options, and the claims its weights sources need mounted (``owner``: the
    policy, for the gating service of its zoo)."""
    gating = owner is not None and uses_zoo(spec)
    teacher, teacher_claim = model_ref(spec.teacher)
    student, student_claim = model_ref(spec.student)
    options = launch.TrainerLaunch(
        state_dir=f"{launch.STATE_DIR}/devices",
        models_dir=f"{launch.STATE_DIR}/models",
        config=f"{launch.CONFIG_DIR}/{CONFIG_FILE}",
        teacher=teacher,
        student=student,
        listen=f"0.0.0.0:{keys.TRAINER_GRPC_PORT}",
        http_listen=f"0.0.0.0:{keys.METRICS_PORT}",
        tls_cert=f"{launch.TLS_DIR}/{launch.TLS_CERT}",
        tls_key=f"{launch.TLS_DIR}/{launch.TLS_KEY}",
        token_key_file=f"{launch.TOKEN_KEY_DIR}/{launch.TOKEN_KEY_FILE}",
        client_ca=f"{launch.CLIENT_CA_DIR}/{launch.CA_CERT}" if spec.mutual_tls else None,
        gating=gating_endpoint(str(spec.model_zoo), owner.namespace, cluster_domain)
        if gating and owner is not None
        else None,
        gating_ca=f"{launch.GATING_CA_DIR}/{launch.CA_CERT}" if gating else None,
        gating_token_file=f"{launch.GATING_TOKEN_DIR}/{launch.TOKEN_FILE}" if gating else None,
        gating_caller=owner.name if gating and owner is not None else None,
        log_format="json",
    )
    claims = sorted({c for c in (teacher_claim, student_claim) if c})
    return options, claims


def config_map(owner: Owner, params: Mapping[str, Any]) -> Body:
    data = {CONFIG_FILE: json.dumps(params, sort_keys=True, indent=2)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(
            owner, trainer_name(owner.name), keys.ADAPTATION_POLICY_LABEL, COMPONENT, data
        ),
        "data": data,
    }


def service(owner: Owner) -> Body:
    spec = {
        "clusterIP": "None",
        "publishNotReadyAddresses": False,
        "selector": selector_labels(keys.ADAPTATION_POLICY_LABEL, owner.name, COMPONENT),
        "ports": [
            {
                "name": "grpc",
                "port": keys.TRAINER_GRPC_PORT,
                "targetPort": "grpc",
                "protocol": "TCP",
            }
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(
            owner, trainer_name(owner.name), keys.ADAPTATION_POLICY_LABEL, COMPONENT, spec
        ),
        "spec": spec,
    }


# A trainer's CPU and memory unless spec.trainers.resources says otherwise: a GPU server's share.
DEFAULT_REQUESTS = {"cpu": "2", "memory": "8Gi"}
DEFAULT_LIMITS = {"memory": "16Gi"}


def trainer_resources(spec: AdaptationPolicySpec) -> dict[str, dict[str, str]]:
    """The trainer container's resources: spec.trainers.resources over the defaults, and the
    policy's GPUs as both request and limit."""
    given, gpus = spec.resources, spec.gpus_per_trainer
    requests = DEFAULT_REQUESTS | {k: str(v) for k, v in (given.get("requests") or {}).items()}
    limits = DEFAULT_LIMITS | {k: str(v) for k, v in (given.get("limits") or {}).items()}
    return {
        "requests": requests | {keys.GPU_RESOURCE: str(gpus)},
        "limits": limits | {keys.GPU_RESOURCE: str(gpus)},
    }


def trainer_storage(spec: AdaptationPolicySpec) -> dict[str, Any]:
    """The trainers' claim template spec (spec.trainers.storage)."""
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage_size}},
    }
    if spec.storage_class:
        claim["storageClassName"] = spec.storage_class
    return claim


def stateful_set(
    owner: Owner,
    spec: AdaptationPolicySpec,
    replicas: int,
    config_hash: str,
    key_hash: str,
    images: Images,
) -> Body:
    labels = selector_labels(keys.ADAPTATION_POLICY_LABEL, owner.name, COMPONENT)
    name = trainer_name(owner.name)
    options, claims = trainer_launch(spec, owner, images.cluster_domain)
    mounts = [
        {"name": "config", "mountPath": launch.CONFIG_DIR, "readOnly": True},
        {"name": "tls", "mountPath": launch.TLS_DIR, "readOnly": True},
        {"name": "token-key", "mountPath": launch.TOKEN_KEY_DIR, "readOnly": True},
        {"name": "state", "mountPath": launch.STATE_DIR},
        {"name": "tmp", "mountPath": launch.TMP_DIR},
    ]
    volumes: list[Body] = [
        {"name": "config", "configMap": {"name": name}},
        {
            "name": "tls",
            "secret": {"secretName": security.tls_secret_name(owner.name), "defaultMode": 0o440},
        },
        {
            "name": "token-key",
            "secret": {
                "secretName": security.token_key_secret_name(owner.name),
                "defaultMode": 0o440,
            },
        },
        {"name": "tmp", "emptyDir": {}},
    ]
    if spec.mutual_tls:
        mounts.append({"name": "client-ca", "mountPath": launch.CLIENT_CA_DIR, "readOnly": True})
        volumes.append(
            {
                "name": "client-ca",
                "configMap": {"name": security.client_ca_config_map_name(owner.name)},
            }
        )
    if options.gating:
        mounts.append({"name": "gating-ca", "mountPath": launch.GATING_CA_DIR, "readOnly": True})
        mounts.append(
            {"name": "gating-token", "mountPath": launch.GATING_TOKEN_DIR, "readOnly": True}
        )
        volumes.append(
            {
                "name": "gating-ca",
                "configMap": {"name": gating_ca_config_map_name(str(spec.model_zoo))},
            }
        )
        volumes.append(
            {
                "name": "gating-token",
                "secret": {
                    "secretName": gating_token_secret_name(owner.name),
                    "defaultMode": 0o440,
                },
            }
        )
    for i, claim in enumerate(claims):
        mounts.append(
            {"name": f"source-{i}", "mountPath": f"{SOURCES_DIR}/{claim}", "readOnly": True}
        )
        volumes.append(
            {
                "name": f"source-{i}",
                "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
            }
        )
    template = {
        "metadata": {
            "labels": labels | {keys.MANAGED_BY: keys.MANAGED_BY_VALUE},
            "annotations": {keys.CONFIG_HASH: config_hash, keys.TOKEN_KEY_HASH: key_hash},
        },
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "tolerations": [
                {"key": keys.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
            ],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
            "containers": [
                {
                    "name": "trainer",
                    "image": images.trainer,
                    "imagePullPolicy": images.pull_policy,
                    "command": options.command(),
                    "args": options.args(),
                    "env": [
                        {"name": "EDGEADAPT_POLICY", "value": owner.name},
                        {
                            "name": "EDGEADAPT_TRAINER_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                        },
                        {"name": "EDGEADAPT_NAMESPACE", "value": owner.namespace},
                        {"name": "HOME", "value": launch.TMP_DIR},
                    ],
                    "ports": [
                        {"name": "grpc", "containerPort": keys.TRAINER_GRPC_PORT},
                        {"name": "metrics", "containerPort": keys.METRICS_PORT},
                    ],
                    # The gRPC port speaks TLS, which the kubelet's gRPC probe does not; the
                    # trainer's HTTP endpoint opens first, while the models are provisioned
                    # (training synthetic ones takes minutes), and answers /healthz as long as
                    # the process works (liveness) and /readyz once it serves (readiness).
                    "readinessProbe": http_probe("/readyz", period=5, failures=1),
                    "startupProbe": http_probe("/healthz", period=5, failures=24),
                    "livenessProbe": http_probe("/healthz", period=10, failures=3),
                    "resources": trainer_resources(spec),
                    "securityContext": hardened(),
                    # A failed start leaves its reason (a weights source that cannot be read)
                    # where the operator shows it on the policy.
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "volumeMounts": mounts,
                }
            ],
            "volumes": volumes,
        },
    }
    sts_spec = {
        "replicas": replicas,
        "serviceName": name,
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": labels},
        "template": template,
        # A claim per trainer, kept across restarts and rollouts: its models and devices' state.
        # Claim templates cannot change once the StatefulSet exists; a new size or class applies
        # to a StatefulSet made afresh (the operator does not patch this field).
        "volumeClaimTemplates": [
            {"metadata": {"name": "state"}, "spec": trainer_storage(spec)},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": child_metadata(owner, name, keys.ADAPTATION_POLICY_LABEL, COMPONENT, sts_spec),
        "spec": sts_spec,
    }


def network_policy(owner: Owner, images: Images) -> Body:
    """The trainers take gRPC from anywhere (agents, often outside the pod network) and HTTP
    (``/status`` names devices; ``/metrics``) only from the operator and the monitoring
    namespace."""
    http_from: list[Body] = [
        {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": images.operator_namespace}
            },
            "podSelector": {"matchLabels": {keys.NAME: "edgeadapt", keys.COMPONENT: "operator"}},
        }
    ]
    if images.metrics_namespace:
        http_from.append(
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": images.metrics_namespace}
                }
            }
        )
    spec = {
        "podSelector": {
            "matchLabels": selector_labels(keys.ADAPTATION_POLICY_LABEL, owner.name, COMPONENT)
        },
        "policyTypes": ["Ingress"],
        "ingress": [
            {"ports": [{"protocol": "TCP", "port": keys.TRAINER_GRPC_PORT}]},
            {"from": http_from, "ports": [{"protocol": "TCP", "port": keys.METRICS_PORT}]},
        ],
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(
            owner, trainer_name(owner.name), keys.ADAPTATION_POLICY_LABEL, COMPONENT, spec
        ),
        "spec": spec,
    }


def provisioning_failure(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The message of a trainer that exited because it could not provision its models."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                term = state.get("terminated") or {}
                if term.get("exitCode") == PROVISION_EXIT_CODE:
                    message = str(term.get("message") or "").strip()
                    return message.splitlines()[-1] if message else "exited with code 3"
    return None


PROVISION_EXIT_CODE = 3


def decide(
    policy: Mapping[str, Any],
    *,
    zoo: Mapping[str, Any] | None,
    trainers_wanted: int,
    devices_bound: int,
    devices_unbound: int,
    statefulset: Mapping[str, Any] | None,
    token_key: bytes | None,
    new_key: bytes,
    ca: KeyPair | None,
    tls: KeyPair | None,
    trainer_pods: Sequence[Mapping[str, Any]],
    figures: PolicyFigures,
    images: Images,
    now: str,
    issued_ca: bytes | None = None,
    gating_key: bytes | None = None,
) -> Plan:
    """Desired children and status of one AdaptationPolicy.

    ``token_key`` is the key its Secret holds (None before it exists: ``new_key`` is created);
    ``ca`` the operator's CA and ``tls`` the trainers' certificate (the observed one while good,
    ``security.tls_pair``); ``trainer_pods`` its trainer pods; ``figures`` what its trainers
    report. With ``images.cert_issuer`` a cert-manager Certificate replaces ``tls`` and
    ``issued_ca`` (the ``ca.crt`` its issuer wrote) is the agents' CA bundle. ``gating_key`` is
    the token key of the policy's ModelZoo's gating service (strategies recl, ams+recl), which
    the trainers' token is minted from."""
    owner = Owner.of(ADAPTATION_POLICY, policy)
    spec = AdaptationPolicySpec.of(policy.get("spec"))
    gen = owner.generation
    suspended = spec.suspend
    replicas = 0 if suspended else trainers_wanted

    key = token_key or new_key
    cm = config_map(owner, trainer_parameters(spec))
    sts = stateful_set(
        owner, spec, replicas, spec_hash(cm["data"]), security.fingerprint(key), images
    )
    plan = Plan(
        apply=[
            Apply(CONFIG_MAP, cm),
            Apply(SERVICE, service(owner)),
            Apply(STATEFUL_SET, sts),
            Apply(SECRET, security.token_key_secret(owner, key), mode="create"),
        ]
    )
    if images.network_policy:
        plan.apply.append(Apply(NETWORK_POLICY, network_policy(owner, images)))
    issuer = images.cert_issuer
    if issuer is not None:
        hosts = security.trainer_hosts(owner.name, owner.namespace, images.cluster_domain)
        plan.apply.append(Apply(CERTIFICATE, security.trainer_certificate(owner, hosts, issuer)))
        if issued_ca is not None:
            plan.apply.append(Apply(CONFIG_MAP, security.ca_config_map(owner, issued_ca)))
    elif ca is not None and tls is not None:
        plan.apply.append(Apply(SECRET, security.tls_secret(owner, tls, ca)))
        plan.apply.append(Apply(CONFIG_MAP, security.ca_config_map(owner, ca.cert)))
    if uses_zoo(spec) and gating_key is not None:
        plan.apply.append(
            Apply(
                SECRET,
                security.caller_token_secret(
                    owner, gating_token_secret_name(owner.name), gating_key, owner.name
                ),
            )
        )
    if spec.mutual_tls and ca is not None:  # devices' client certificates: the operator's CA
        plan.apply.append(Apply(CONFIG_MAP, security.client_ca_config_map(owner, ca.cert)))

    ready_trainers = int(((statefulset or {}).get("status") or {}).get("readyReplicas") or 0)
    trainers_rolled_out = rolled_out(statefulset, sts, replicas)
    trainers: tuple[Status, str, str]
    zoo_cond: tuple[Status, str, str]
    if trainers_rolled_out and ready_trainers >= replicas:
        trainers = ("True", Reason.SUCCEEDED, f"{ready_trainers}/{replicas} trainers ready")
    else:
        trainers = (
            "False",
            Reason.TRAINERS_PENDING,
            f"{ready_trainers}/{replicas} trainers ready"
            if trainers_rolled_out
            else "rolling out trainers",
        )

    zoo_name = spec.model_zoo
    if not zoo_name:
        zoo_cond = ("True", Reason.NOT_REFERENCED, "the policy uses no ModelZoo")
    elif zoo is None:
        zoo_cond = (
            "False",
            Reason.MODEL_ZOO_NOT_FOUND,
            f'ModelZoo "{zoo_name}" not found in namespace "{owner.namespace}"',
        )
    elif (
        uses_zoo(spec)
        and (zoo_arch := ModelZooSpec.of(zoo.get("spec")).student_architecture)
        != spec.student.architecture
    ):
        zoo_cond = (
            "False",
            Reason.MODEL_ZOO_MISMATCH,
            f'ModelZoo "{zoo_name}" holds {zoo_arch} experts; the policy\'s student is '
            f"{spec.student.architecture}",
        )
    elif not is_ready(zoo):
        zoo_cond = ("False", Reason.DEPENDENCY_NOT_READY, f'ModelZoo "{zoo_name}" is not Ready')
    else:
        zoo_cond = ("True", Reason.SUCCEEDED, f'ModelZoo "{zoo_name}" is Ready')

    failure = None if suspended else provisioning_failure(trainer_pods)
    checks = []
    if failure is not None:
        checks.append(Check("False", Reason.MODEL_PROVISIONING_FAILED, failure, stalled=True))
    if issuer is None and ca is None:
        checks.append(
            Check("False", Reason.WAITING_FOR_CREDENTIALS, "the operator's CA is not loaded yet")
        )
    elif issuer is not None and issued_ca is None:
        message = (
            f'waiting for {issuer.kind} "{issuer.name}" to issue Secret '
            f'"{security.tls_secret_name(owner.name)}" with a ca.crt'
        )
        checks.append(Check("False", Reason.WAITING_FOR_CREDENTIALS, message))
    if uses_zoo(spec) and zoo is not None and gating_key is None:
        message = (
            f'waiting for ModelZoo "{spec.model_zoo}" to create its gating key (Secret '
            f'"{gating_key_secret_name(str(spec.model_zoo))}")'
        )
        checks.append(Check("False", Reason.WAITING_FOR_CREDENTIALS, message))
    zoo_missing = zoo_cond[1] in (Reason.MODEL_ZOO_NOT_FOUND, Reason.MODEL_ZOO_MISMATCH)
    checks += [Check(zoo_cond[0], zoo_cond[1], zoo_cond[2], zoo_missing), Check(*trainers)]
    conds = summary_conditions(
        checks,
        ready=f"{devices_bound} devices bound to {replicas} trainers",
        generation=gen,
        suspended="the policy is suspended" if suspended else None,
    )
    conds.append(condition(TRAINERS_AVAILABLE, *trainers, generation=gen))
    conds.append(condition(MODEL_ZOO_RESOLVED, *zoo_cond, generation=gen))

    current = policy.get("status") or {}
    fields = {
        "trainers": replicas,
        "readyTrainers": ready_trainers,
        "devicesBound": devices_bound,
        "devicesUnbound": devices_unbound,
        "capacity": Capacity.of(spec).total,
        "devicesConnected": figures.connected,
        "devicesAdapting": figures.adapting,
        "meanMiouVsTeacher": figures.mean_miou,
        "trainerGPUs": [dict(g) for g in figures.gpus],
    }
    status = status_with_conditions(current, conds, fields, generation=gen, now=now)
    if status_differs(current, status):
        plan.status = status
        plan.events = transition_events(current, status, "AdaptationPolicy")
    return plan


@dataclass
class AdaptationPolicyController:
    """AdaptationPolicies: sizes each policy's trainer pool (``Bindings``, shared with the
    devices' controller) and observes its trainers, credentials, ModelZoo and the trainers'
    ``/status`` for ``decide``."""

    cache: Cache
    bindings: Bindings
    kind: Kind = ADAPTATION_POLICY
    owner_label: str = keys.ADAPTATION_POLICY_LABEL
    rbac: Sequence[Rule] = tuple(RBAC_RULES)
    ignores: tuple[ChildKind, ...] = ()
    issued: dict[tuple[str, str], KeyPair] = field(default_factory=dict)  # trainer certificates
    generation: dict[tuple[str, str], int] = field(default_factory=dict)  # last sized at

    def stored(self, obj: Body) -> None:
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        if (ns, name) not in self.bindings.pools:
            self._seed_pool(ns, name, obj)
            self._queue_devices(ns, name)

    def forgotten(self, namespace: str, name: str) -> None:
        self.bindings.pools.pop((namespace, name), None)
        self.generation.pop((namespace, name), None)
        self.issued.pop((namespace, name), None)
        self._queue_devices(namespace, name)

    def primed(self) -> None:
        """Pools seeded again now that every device is cached: a restart moves no device."""
        for (plural, ns, name), policy in list(self.cache.objects.items()):
            if plural == ADAPTATION_POLICY.plural:
                self._seed_pool(ns, name, policy)

    def reconcile(self, policy: Body) -> Plan:
        cache, images = self.cache, self.cache.images
        ns, name = policy["metadata"]["namespace"], policy["metadata"]["name"]
        spec = AdaptationPolicySpec.of(policy["spec"])
        pool = self.bindings.pools.get((ns, name))
        if pool is None:
            pool = self._seed_pool(ns, name, policy)
        generation = int(policy["metadata"].get("generation", 1))
        if self.generation.get((ns, name)) != generation:
            # The spec changed (or this is the first look): capacity and selector may differ,
            # so every device of the policy is looked at again.
            self.generation[(ns, name)] = generation
            pool.resize(Capacity.of(spec))
            self._queue_devices(ns, name)
        tls = issued_ca = None
        observed = cache.child(SECRET, ns, security.tls_secret_name(name))
        if images.cert_issuer is not None:
            issued_ca = security.issued_ca(observed)
        elif cache.ca is not None:
            issued = self.issued.get((ns, name))
            if observed is None and issued is not None:  # written, not seen back yet
                observed = security.tls_secret(
                    Owner.of(ADAPTATION_POLICY, policy), issued, cache.ca
                )
            hosts = security.trainer_hosts(name, ns, images.cluster_domain)
            tls = security.tls_pair(observed, cache.ca, hosts)
            self.issued[(ns, name)] = tls
        trainer_pods = [
            p
            for i in range(max(pool.trainers_wanted, 1))
            if (p := cache.child(POD, ns, edgedevice.trainer_pod_name(name, i)))
        ]
        by_index = {i: o for (n, p, i), o in cache.observations.items() if (n, p) == (ns, name)}
        # A trainer short of GPU memory takes no new devices (the ones it has stay).
        pool.closed = {i for i, o in by_index.items() if o.memory_low}
        figures = dataclasses.replace(
            observe.policy_figures(list(by_index.values())),
            gpus=observe.trainer_gpus(
                {edgedevice.trainer_pod_name(name, i): o for i, o in by_index.items()}
            ),
        )
        members = len(self.bindings.devices(ns, name))
        return decide(
            policy,
            zoo=cache.get(MODEL_ZOO, ns, spec.model_zoo),
            trainers_wanted=pool.trainers_wanted,
            devices_bound=pool.devices_bound,
            devices_unbound=max(0, members - pool.devices_bound),
            statefulset=cache.child(STATEFUL_SET, ns, trainer_name(name)),
            token_key=cache.token_key(ns, name),
            new_key=secrets.token_hex(32).encode(),
            ca=cache.ca,
            tls=tls,
            trainer_pods=trainer_pods,
            figures=figures,
            images=images,
            now=now_rfc3339(),
            issued_ca=issued_ca,
            gating_key=security.token_key_of(
                cache.child(SECRET, ns, gating_key_secret_name(spec.model_zoo))
            )
            if uses_zoo(spec) and spec.model_zoo
            else None,
        )

    def _seed_pool(self, ns: str, name: str, policy: Body) -> TrainerPool:
        """A pool for the policy, seeded with the bindings its devices' statuses show."""
        pool = TrainerPool(Capacity.of(AdaptationPolicySpec.of(policy["spec"])))
        self.bindings.pools[(ns, name)] = pool
        for device_name in sorted(self.bindings.devices(ns, name)):
            device = self.cache.get(EDGE_DEVICE, ns, device_name)
            if device is None or EdgeDeviceSpec.of(device["spec"]).suspend:
                continue
            if (device.get("status") or {}).get("trainer"):
                edgedevice.resolve_binding(device, policy, pool)
                self.bindings.device_policy[(ns, device_name)] = name
        return pool

    def _queue_devices(self, ns: str, policy: str) -> None:
        for device in self.bindings.devices(ns, policy):
            self.cache.queue(EDGE_DEVICE, ns, device)
