"""ModelZoo: the storage of the zoo's experts and the gating service that picks among them.

Children (deterministic names, owned by the ModelZoo):
- PersistentVolumeClaim ``<zoo>-store``: experts and the gating network; grows with
  ``spec.storage.size`` (a claim never shrinks, and the schema refuses a smaller size).
- Deployment ``<zoo>-gating``: the gating service, mounting the claim.
- Service ``<zoo>-gating``: its gRPC port, which the trainers of policies using the zoo call.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeadapt.api import keys, launch
from edgeadapt.api.conditions import (
    GATING_AVAILABLE,
    STORAGE_BOUND,
    Check,
    Reason,
    Status,
    condition,
    now_rfc3339,
)
from edgeadapt.api.specs import AdaptationPolicySpec, ModelZooSpec
from edgeadapt.api.v1alpha1 import ADAPTATION_POLICY, GROUP, MODEL_ZOO, Kind
from edgeadapt.controllers import security
from edgeadapt.controllers.base import Cache
from edgeadapt.controllers.common import (
    CERTIFICATE,
    CONFIG_MAP,
    DEPLOYMENT,
    POD,
    PVC,
    SECRET,
    SERVICE,
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
    status_differs,
    status_with_conditions,
    summary_conditions,
    transition_events,
)
from edgeadapt.controllers.observe import rfc3339
from edgeadapt.pki import KeyPair

RBAC_RULES = rules(
    (GROUP, "modelzoos", "get list watch"),
    (GROUP, "modelzoos/status", "get patch"),
    ("", "persistentvolumeclaims", "get list watch create patch"),
    ("", "services", "get list watch create patch"),
    ("apps", "deployments", "get list watch create patch"),
    ("", "secrets", "get list watch create patch"),
    ("", "configmaps", "get list watch create patch"),
)

COMPONENT = "gating"
STORE_MOUNT = "/var/lib/edgeadapt/zoo"


def gating_name(zoo: str) -> str:
    return f"{zoo}-gating"


def store_name(zoo: str) -> str:
    return f"{zoo}-store"


def gating_key_secret_name(zoo: str) -> str:
    """The zoo's token key: callers' tokens are minted from it."""
    return f"{zoo}-gating-key"


def gating_tls_secret_name(zoo: str) -> str:
    return f"{zoo}-gating-tls"


def gating_ca_config_map_name(zoo: str) -> str:
    """The CA bundle callers verify the gating service with."""
    return f"{zoo}-gating-ca"


def gating_endpoint(zoo: str, namespace: str, cluster_domain: str) -> str:
    return f"{gating_name(zoo)}.{namespace}.svc.{cluster_domain}:{keys.GATING_GRPC_PORT}"


def claim(owner: Owner, spec: ModelZooSpec) -> Body:
    pvc_spec: Body = {
        "accessModes": [spec.access_mode],
        "resources": {"requests": {"storage": spec.storage_size}},
    }
    if spec.storage_class:
        pvc_spec["storageClassName"] = spec.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": child_metadata(
            owner, store_name(owner.name), keys.MODEL_ZOO_LABEL, "store", pvc_spec
        ),
        "spec": pvc_spec,
    }


def gating_launch(spec: ModelZooSpec) -> launch.GatingLaunch:
    """The gating service's options, from the zoo's spec."""
    return launch.GatingLaunch(
        zoo_dir=STORE_MOUNT,
        arch=spec.student_architecture,
        top_k=spec.top_k,
        alpha=spec.admission_margin_alpha,
        gamma=spec.queue_threshold_gamma,
        eta=spec.pruning_eta,
        q=spec.pruning_q,
        listen=f"0.0.0.0:{keys.GATING_GRPC_PORT}",
        http_listen=f"0.0.0.0:{keys.METRICS_PORT}",
        tls_cert=f"{launch.TLS_DIR}/{launch.TLS_CERT}",
        tls_key=f"{launch.TLS_DIR}/{launch.TLS_KEY}",
        token_key_file=f"{launch.TOKEN_KEY_DIR}/{launch.TOKEN_KEY_FILE}",
        log_format="json",
    )


def deployment(owner: Owner, spec: ModelZooSpec, images: Images, key_hash: str = "") -> Body:
    labels = selector_labels(keys.MODEL_ZOO_LABEL, owner.name, COMPONENT)
    options = gating_launch(spec)
    dep_spec = {
        "replicas": spec.gating_replicas,
        "selector": {"matchLabels": labels},
        "strategy": {"type": "Recreate"}
        if spec.access_mode != "ReadWriteMany"
        else {"type": "RollingUpdate"},
        "template": {
            "metadata": {
                "labels": labels | {keys.MANAGED_BY: keys.MANAGED_BY_VALUE},
                # A new token key must reach the service: the pods roll with it.
                "annotations": {keys.TOKEN_KEY_HASH: key_hash},
            },
            "spec": {
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
                "containers": [
                    {
                        "name": "gating",
                        "image": images.gating,
                        "imagePullPolicy": images.pull_policy,
                        "command": options.command(),
                        "args": options.args(),
                        "ports": [
                            {"name": "grpc", "containerPort": keys.GATING_GRPC_PORT},
                            {"name": "metrics", "containerPort": keys.METRICS_PORT},
                        ],
                        # Alive while it opens the zoo; ready once it serves.
                        "livenessProbe": http_probe("/healthz", period=10, failures=6),
                        "readinessProbe": http_probe("/readyz", period=5, failures=2),
                        "resources": {
                            "requests": {"cpu": "500m", "memory": "1Gi"},
                            "limits": {"memory": "4Gi"},
                        },
                        "securityContext": hardened(),
                        "volumeMounts": [
                            {"name": "store", "mountPath": STORE_MOUNT},
                            {"name": "tls", "mountPath": launch.TLS_DIR, "readOnly": True},
                            {
                                "name": "token-key",
                                "mountPath": launch.TOKEN_KEY_DIR,
                                "readOnly": True,
                            },
                            {"name": "tmp", "mountPath": launch.TMP_DIR},
                        ],
                    }
                ],
                "volumes": [
                    {
                        "name": "store",
                        "persistentVolumeClaim": {"claimName": store_name(owner.name)},
                    },
                    {
                        "name": "tls",
                        "secret": {
                            "secretName": gating_tls_secret_name(owner.name),
                            "defaultMode": 0o440,
                        },
                    },
                    {
                        "name": "token-key",
                        "secret": {
                            "secretName": gating_key_secret_name(owner.name),
                            "defaultMode": 0o440,
                        },
                    },
                    {"name": "tmp", "emptyDir": {}},
                ],
            },
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(
            owner, gating_name(owner.name), keys.MODEL_ZOO_LABEL, COMPONENT, dep_spec
        ),
        "spec": dep_spec,
    }


def service(owner: Owner) -> Body:
    spec = {
        "type": "ClusterIP",
        "selector": selector_labels(keys.MODEL_ZOO_LABEL, owner.name, COMPONENT),
        "ports": [
            {
                "name": "grpc",
                "port": keys.GATING_GRPC_PORT,
                "targetPort": "grpc",
                "protocol": "TCP",
            },
            # /status (figures for the ModelZoo's status, with the zoo's status token) and
            # /metrics: the operator reads the first through this Service.
            {
                "name": "metrics",
                "port": keys.METRICS_PORT,
                "targetPort": "metrics",
                "protocol": "TCP",
            },
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(
            owner, gating_name(owner.name), keys.MODEL_ZOO_LABEL, COMPONENT, spec
        ),
        "spec": spec,
    }


def decide(
    zoo: Mapping[str, Any],
    *,
    pvc: Mapping[str, Any] | None,
    deployment_obs: Mapping[str, Any] | None,
    images: Images,
    now: str,
    token_key: bytes | None = None,
    new_key: bytes = b"",
    ca: KeyPair | None = None,
    tls: KeyPair | None = None,
    issued_ca: bytes | None = None,
    gating_status: Mapping[str, Any] | None = None,
) -> Plan:
    """Desired children and status of one ModelZoo.

    The gating service gets a token key (``token_key`` as observed, else ``new_key``, created
    once) and a certificate for its Service: ``tls`` from the operator's ``ca``, or a
    cert-manager Certificate with ``images.cert_issuer`` (``issued_ca``: what its issuer wrote);
    callers get the CA bundle. ``gating_status`` is the gating service's last ``/status``
    answer: the zoo's figures in the status are what it reported, kept while it is silent."""
    owner = Owner.of(MODEL_ZOO, zoo)
    spec = ModelZooSpec.of(zoo.get("spec"))
    gen = owner.generation
    key = token_key or new_key
    dep = deployment(owner, spec, images, security.fingerprint(key))
    label, tls_name = keys.MODEL_ZOO_LABEL, gating_tls_secret_name(owner.name)
    plan = Plan(
        apply=[
            Apply(PVC, claim(owner, spec)),
            Apply(DEPLOYMENT, dep),
            Apply(SERVICE, service(owner)),
            Apply(
                SECRET,
                security.key_secret(
                    owner, gating_key_secret_name(owner.name), key, label, COMPONENT
                ),
                mode="create",
            ),
        ]
    )
    issuer = images.cert_issuer
    bundle = None
    if issuer is not None:
        hosts = security.service_hosts(
            gating_name(owner.name), owner.namespace, images.cluster_domain
        )
        plan.apply.append(
            Apply(
                CERTIFICATE,
                security.server_certificate(owner, tls_name, hosts, issuer, label, COMPONENT),
            )
        )
        bundle = issued_ca
    elif ca is not None and tls is not None:
        plan.apply.append(
            Apply(SECRET, security.server_tls_secret(owner, tls_name, tls, ca, label, COMPONENT))
        )
        bundle = ca.cert
    if bundle is not None:
        name = gating_ca_config_map_name(owner.name)
        plan.apply.append(
            Apply(CONFIG_MAP, security.ca_bundle(owner, name, bundle, label, COMPONENT))
        )

    phase = ((pvc or {}).get("status") or {}).get("phase")
    pvc_name = store_name(owner.name)
    storage: tuple[Status, str, str]
    gating: tuple[Status, str, str]
    if phase == "Bound":
        storage = ("True", Reason.SUCCEEDED, f"claim {pvc_name} is bound")
    else:
        storage = ("False", Reason.STORAGE_PENDING, f"claim {pvc_name} is {phase or 'absent'}")

    want = int(dep["spec"]["replicas"])
    dstatus = (deployment_obs or {}).get("status") or {}
    available = int(dstatus.get("availableReplicas") or 0)
    if rolled_out(deployment_obs, dep, want) and available >= want:
        gating = ("True", Reason.SUCCEEDED, f"{available}/{want} gating pods available")
    else:
        gating = ("False", Reason.GATING_PENDING, f"{available}/{want} gating pods available")

    checks = [Check(*storage)]
    if bundle is None:
        waiting = (
            f'waiting for {issuer.kind} "{issuer.name}" to issue Secret "{tls_name}" with a ca.crt'
            if issuer is not None
            else "the operator's CA is not loaded yet"
        )
        checks.append(Check("False", Reason.WAITING_FOR_CREDENTIALS, waiting))
    conds = summary_conditions(
        [*checks, Check(*gating)],
        ready="storage bound, gating available",
        generation=gen,
    )
    conds.append(condition(STORAGE_BOUND, *storage, generation=gen))
    conds.append(condition(GATING_AVAILABLE, *gating, generation=gen))

    current = zoo.get("status") or {}
    fields: dict[str, Any] = {"readyReplicas": int(dstatus.get("readyReplicas") or 0)}
    fields |= zoo_figures(gating_status)
    status = status_with_conditions(current, conds, fields, generation=gen, now=now)
    if status_differs(current, status):
        plan.status = status
        plan.events = transition_events(current, status, "ModelZoo")
    return plan


def zoo_figures(body: Mapping[str, Any] | None) -> dict[str, Any]:
    """The status fields a gating service's ``/status`` answer gives (none without one)."""
    if not body:
        return {}
    out: dict[str, Any] = {}
    for field_name, key in (
        ("experts", "experts"),
        ("gatingVersion", "zoo_version"),
        ("admissions", "admitted"),
        ("prunes", "pruned"),
        ("selections", "selections"),
    ):
        value = body.get(key)
        if isinstance(value, int) and value >= 0:
            out[field_name] = value
    last = body.get("last_admission_unix")
    if isinstance(last, (int, float)) and last > 0:
        out["lastAdmissionTime"] = rfc3339(float(last))
    return out


@dataclass
class ModelZooController:
    """ModelZoos: observes the zoo's claim and gating Deployment for ``decide``; a zoo's change
    makes the policies that name it look again (their ``ModelZooResolved``)."""

    cache: Cache
    kind: Kind = MODEL_ZOO
    owner_label: str = keys.MODEL_ZOO_LABEL
    rbac: Sequence[Rule] = tuple(RBAC_RULES)
    ignores: tuple[ChildKind, ...] = (POD,)  # gating pods: their Deployment speaks for them
    issued: dict[tuple[str, str], KeyPair] = field(default_factory=dict)  # gating certificates

    def stored(self, obj: Body) -> None:
        self._queue_policies(obj["metadata"]["namespace"], obj["metadata"]["name"])

    def forgotten(self, namespace: str, name: str) -> None:
        self.issued.pop((namespace, name), None)
        self._queue_policies(namespace, name)

    def primed(self) -> None:
        pass

    def reconcile(self, zoo: Body) -> Plan:
        cache, images = self.cache, self.cache.images
        ns, name = zoo["metadata"]["namespace"], zoo["metadata"]["name"]
        observed = cache.child(SECRET, ns, gating_tls_secret_name(name))
        tls = issued_ca = None
        if images.cert_issuer is not None:
            issued_ca = security.issued_ca(observed)
        elif cache.ca is not None:
            issued = self.issued.get((ns, name))
            if observed is None and issued is not None:  # written, not seen back yet
                observed = security.server_tls_secret(
                    Owner.of(MODEL_ZOO, zoo),
                    gating_tls_secret_name(name),
                    issued,
                    cache.ca,
                    keys.MODEL_ZOO_LABEL,
                    COMPONENT,
                )
            hosts = security.service_hosts(gating_name(name), ns, images.cluster_domain)
            tls = security.tls_pair(observed, cache.ca, hosts)
            self.issued[(ns, name)] = tls
        key_secret = cache.child(SECRET, ns, gating_key_secret_name(name))
        return decide(
            zoo,
            pvc=cache.child(PVC, ns, store_name(name)),
            deployment_obs=cache.child(DEPLOYMENT, ns, gating_name(name)),
            images=images,
            now=now_rfc3339(),
            token_key=security.token_key_of(key_secret),
            new_key=secrets.token_hex(32).encode(),
            ca=cache.ca,
            tls=tls,
            issued_ca=issued_ca,
            gating_status=cache.zoo_status.get((ns, name)),
        )

    def _queue_policies(self, ns: str, zoo: str) -> None:
        for (plural, pns, name), policy in list(self.cache.objects.items()):
            if (
                plural == ADAPTATION_POLICY.plural
                and pns == ns
                and AdaptationPolicySpec.of(policy["spec"]).model_zoo == zoo
            ):
                self.cache.queue(ADAPTATION_POLICY, ns, name)
