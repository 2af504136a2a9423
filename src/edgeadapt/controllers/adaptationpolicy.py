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

import json
from collections.abc import Mapping, Sequence
from typing import Any

from edgeadapt.api import keys, launch
from edgeadapt.api.conditions import (
    MODEL_ZOO_RESOLVED,
    READY,
    RECONCILING,
    STALLED,
    TRAINERS_AVAILABLE,
    Condition,
    Reason,
    Status,
    condition,
    is_ready,
)
from edgeadapt.api.v1alpha1 import ADAPTATION_POLICY, GROUP
from edgeadapt.controllers import security
from edgeadapt.controllers.binding import Capacity
from edgeadapt.controllers.common import (
    CERTIFICATE,
    CONFIG_MAP,
    NETWORK_POLICY,
    SECRET,
    SERVICE,
    STATEFUL_SET,
    Apply,
    Body,
    Images,
    Owner,
    Plan,
    child_metadata,
    hardened,
    http_probe,
    rolled_out,
    rules,
    selector_labels,
    spec_hash,
    status_differs,
    status_with_conditions,
    transition_events,
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
DEFAULT_WEIGHTS = {"synthetic": "bench"}
DEFAULT_STORAGE = "10Gi"
SOURCES_DIR = f"{launch.STATE_DIR}-sources"  # read-only claims that weights come from


def trainer_name(policy: str) -> str:
    return f"{policy}-trainer"


def trainer_parameters(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What the trainers read from their ConfigMap (``--config``): the algorithm parameters."""
    return {
        "strategy": spec.get("strategy", "ams"),
        "ams": dict(spec.get("ams") or {}),
        "sampling": dict(spec.get("sampling") or {}),
    }


def weights_source(weights: Mapping[str, Any] | None) -> tuple[launch.WeightsSource, str | None]:
    """A policy's weights object as a source for the launch contract, and the claim it needs
    mounted (for ``persistentVolumeClaim``)."""
    w = dict(weights or DEFAULT_WEIGHTS)
    if "torchvision" in w:
        return launch.WeightsSource("torchvision", str(w["torchvision"])), None
    if "url" in w:
        return launch.WeightsSource("url", str(w["url"]), str(w.get("sha256", ""))), None
    if "persistentVolumeClaim" in w:
        ref = w["persistentVolumeClaim"]
        claim, path = str(ref["claimName"]), str(ref["path"]).lstrip("/")
        return launch.WeightsSource("file", f"{SOURCES_DIR}/{claim}/{path}"), claim
    return launch.WeightsSource("synthetic", str(w.get("synthetic", "bench"))), None


def model_ref(
    section: Mapping[str, Any] | None, default_arch: str
) -> tuple[launch.ModelRef, str | None]:
    section = section or {}
    source, claim = weights_source(section.get("weights"))
    return launch.ModelRef(str(section.get("architecture", default_arch)), source), claim


def mutual_tls(spec: Mapping[str, Any]) -> bool:
    """Whether the policy's agents present per-device client certificates (spec.mutualTLS)."""
    return bool(spec.get("mutualTLS"))


def trainer_launch(spec: Mapping[str, Any]) -> tuple[launch.TrainerLaunch, list[str]]:
    """The trainer's options, and the claims its weights sources need mounted."""
    teacher, teacher_claim = model_ref(spec.get("teacher"), launch.TEACHER_ARCHS[0])
    student, student_claim = model_ref(spec.get("student"), launch.STUDENT_ARCHS[0])
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
        client_ca=f"{launch.CLIENT_CA_DIR}/{launch.CA_CERT}" if mutual_tls(spec) else None,
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


def trainer_resources(spec: Mapping[str, Any], gpus: int) -> dict[str, dict[str, str]]:
    """The trainer container's resources: spec.trainers.resources over the defaults, and the
    policy's GPUs as both request and limit."""
    given = ((spec.get("trainers") or {}).get("resources")) or {}
    requests = DEFAULT_REQUESTS | {k: str(v) for k, v in (given.get("requests") or {}).items()}
    limits = DEFAULT_LIMITS | {k: str(v) for k, v in (given.get("limits") or {}).items()}
    return {
        "requests": requests | {keys.GPU_RESOURCE: str(gpus)},
        "limits": limits | {keys.GPU_RESOURCE: str(gpus)},
    }


def trainer_storage(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The trainers' claim template spec: spec.trainers.storage over the defaults."""
    storage = (spec.get("trainers") or {}).get("storage") or {}
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(storage.get("size", DEFAULT_STORAGE))}},
    }
    if storage.get("storageClassName"):
        claim["storageClassName"] = str(storage["storageClassName"])
    return claim


def stateful_set(
    owner: Owner,
    spec: Mapping[str, Any],
    replicas: int,
    config_hash: str,
    key_hash: str,
    images: Images,
) -> Body:
    gpus = int((spec.get("gpu") or {}).get("gpusPerTrainer", 1))
    labels = selector_labels(keys.ADAPTATION_POLICY_LABEL, owner.name, COMPONENT)
    name = trainer_name(owner.name)
    options, claims = trainer_launch(spec)
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
    if mutual_tls(spec):
        mounts.append({"name": "client-ca", "mountPath": launch.CLIENT_CA_DIR, "readOnly": True})
        volumes.append(
            {
                "name": "client-ca",
                "configMap": {"name": security.client_ca_config_map_name(owner.name)},
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
                    "resources": trainer_resources(spec, gpus),
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
) -> Plan:
    """Desired children and status of one AdaptationPolicy.

    ``token_key`` is the key its Secret holds (None before it exists: ``new_key`` is created);
    ``ca`` the operator's CA and ``tls`` the trainers' certificate (the observed one while good,
    ``security.tls_pair``); ``trainer_pods`` its trainer pods; ``figures`` what its trainers
    report. With ``images.cert_issuer`` a cert-manager Certificate replaces ``tls`` and
    ``issued_ca`` (the ``ca.crt`` its issuer wrote) is the agents' CA bundle."""
    owner = Owner.of(ADAPTATION_POLICY, policy)
    spec = policy.get("spec") or {}
    gen = owner.generation
    suspended = bool(spec.get("suspend"))
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
    if mutual_tls(spec) and ca is not None:  # devices' client certificates: the operator's CA
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

    zoo_name = (spec.get("modelZooRef") or {}).get("name")
    if not zoo_name:
        zoo_cond = ("True", Reason.NOT_REFERENCED, "the policy uses no ModelZoo")
    elif zoo is None:
        zoo_cond = (
            "False",
            Reason.MODEL_ZOO_NOT_FOUND,
            f'ModelZoo "{zoo_name}" not found in namespace "{owner.namespace}"',
        )
    elif not is_ready(zoo):
        zoo_cond = ("False", Reason.DEPENDENCY_NOT_READY, f'ModelZoo "{zoo_name}" is not Ready')
    else:
        zoo_cond = ("True", Reason.SUCCEEDED, f'ModelZoo "{zoo_name}" is Ready')

    failure = None if suspended else provisioning_failure(trainer_pods)
    conds: list[Condition] = []
    if suspended:
        conds.append(
            condition(READY, "False", Reason.SUSPENDED, "the policy is suspended", generation=gen)
        )
    elif failure is not None:
        reason = Reason.MODEL_PROVISIONING_FAILED
        conds.append(condition(READY, "False", reason, failure, generation=gen))
        conds.append(condition(STALLED, "True", reason, failure, generation=gen))
    elif issuer is None and ca is None:
        reason, message = Reason.WAITING_FOR_CREDENTIALS, "the operator's CA is not loaded yet"
        conds.append(condition(READY, "False", reason, message, generation=gen))
    elif issuer is not None and issued_ca is None:
        reason = Reason.WAITING_FOR_CREDENTIALS
        message = (
            f'waiting for {issuer.kind} "{issuer.name}" to issue Secret '
            f'"{security.tls_secret_name(owner.name)}" with a ca.crt'
        )
        conds.append(condition(READY, "False", reason, message, generation=gen))
    elif zoo_cond[0] != "True":
        conds.append(condition(READY, "False", zoo_cond[1], zoo_cond[2], generation=gen))
        if zoo_cond[1] == Reason.MODEL_ZOO_NOT_FOUND:
            conds.append(condition(STALLED, "True", zoo_cond[1], zoo_cond[2], generation=gen))
    elif trainers[0] != "True":
        conds.append(condition(READY, "False", trainers[1], trainers[2], generation=gen))
    else:
        conds.append(
            condition(
                READY,
                "True",
                Reason.SUCCEEDED,
                f"{devices_bound} devices bound to {replicas} trainers",
                generation=gen,
            )
        )
    if not suspended and failure is None and trainers[0] != "True":
        conds.append(
            condition(RECONCILING, "True", Reason.PROGRESSING, trainers[2], generation=gen)
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
    }
    status = status_with_conditions(current, conds, fields, generation=gen, now=now)
    if status_differs(current, status):
        plan.status = status
        plan.events = transition_events(current, status, "AdaptationPolicy")
    return plan
