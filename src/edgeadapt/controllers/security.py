"""Security material the operator owns: token keys, device tokens, the trainers' certificates.

Per AdaptationPolicy:
- Secret ``<policy>-token-key`` (key ``key``): the HMAC key every device token of the policy
  derives from (``edgeadapt.stream.auth``). Created once with a random key and never rewritten.
  Rotating it is an explicit act: delete the Secret. The operator creates a new key, the trainers
  roll (the key's hash is on their pod template), and every device's token is re-minted.
- Secret ``<policy>-trainer-tls`` (``kubernetes.io/tls``: ``tls.crt``, ``tls.key``, ``ca.crt``):
  the trainers' certificate for their Service and per-pod names, issued by the operator's CA.
  It is re-issued when it is 30 days from expiry, no longer signed by the CA, or missing a name;
  the trainers reload it on the next connection, with no restart and no stream dropped.
- ConfigMap ``<policy>-trainer-ca`` (``ca.crt``): the CA bundle agents verify trainers with.

Where the chart enables cert-manager, the operator does not issue the trainers' certificate: it
applies a cert-manager ``Certificate`` ``<policy>-trainer-tls`` for the same names, whose issuer
writes the same Secret (and renews it, 30 days before a 90-day certificate ends), and publishes
the Secret's ``ca.crt`` as the agents' CA bundle. The issuer must set ``ca.crt`` (cert-manager's
CA and Vault issuers do); until the Secret holds one the policy waits for credentials.

Per EdgeDevice: Secret ``<device>-agent-token`` (``token``), the HMAC of the device's name under
its policy's key. A token edited by hand or minted under an old key is written back.

Mutual TLS (the policy's ``spec.mutualTLS``): each device also gets Secret ``<device>-agent-tls``
(``tls.crt``, ``tls.key``), a client certificate whose common name is the device's name, from the
operator's CA and renewed like the trainers'; the policy's trainers get that CA in ConfigMap
``<policy>-client-ca``, require a client certificate it signed, and refuse one whose name is not
the device the token is for.

The operator's CA lives in Secret ``edgeadapt-ca`` of the operator's namespace
(``edgeadapt.operator.authority``); nothing here is ever written to a resource's spec.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from collections.abc import Mapping
from typing import Any

from edgeadapt.api import keys
from edgeadapt.api.launch import CA_CERT, TLS_CERT, TLS_KEY, TOKEN_FILE, TOKEN_KEY_FILE
from edgeadapt.controllers.common import Body, IssuerRef, Owner, child_metadata
from edgeadapt.pki import KeyPair, common_name, dns_names, issue, not_after, signed_by
from edgeadapt.stream.auth import mint_token

RENEW_BEFORE = datetime.timedelta(days=30)
CERT_DAYS = 90


def token_key_secret_name(policy: str) -> str:
    return f"{policy}-token-key"


def tls_secret_name(policy: str) -> str:
    return f"{policy}-trainer-tls"


def ca_config_map_name(policy: str) -> str:
    return f"{policy}-trainer-ca"


def device_token_secret_name(device: str) -> str:
    return f"{device}-agent-token"


def client_tls_secret_name(device: str) -> str:
    return f"{device}-agent-tls"


def client_ca_config_map_name(policy: str) -> str:
    return f"{policy}-client-ca"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(data: Mapping[str, Any] | None, key: str) -> bytes | None:
    value = (data or {}).get(key)
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return None


def fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _secret(
    owner: Owner,
    name: str,
    label: str,
    component: str,
    data: dict[str, str],
    kind: str = "Opaque",
) -> Body:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        # The hash covers the name only: the data is compared as it is (it is no spec).
        "metadata": child_metadata(owner, name, label, component, name),
        "type": kind,
        "data": data,
    }


def ca_bundle(
    owner: Owner,
    name: str,
    ca_cert: bytes,
    label: str = keys.ADAPTATION_POLICY_LABEL,
    component: str = "trainer",
) -> Body:
    """A ConfigMap holding one CA certificate (``ca.crt``)."""
    data = {CA_CERT: ca_cert.decode()}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(owner, name, label, component, data),
        "data": data,
    }


def key_secret(
    owner: Owner,
    name: str,
    key: bytes,
    label: str = keys.ADAPTATION_POLICY_LABEL,
    component: str = "trainer",
) -> Body:
    """A token key (create-once: an existing key is never replaced)."""
    return _secret(owner, name, label, component, {TOKEN_KEY_FILE: b64(key)})


def token_key_secret(owner: Owner, key: bytes) -> Body:
    """The policy's token key."""
    return key_secret(owner, token_key_secret_name(owner.name), key)


def token_key_of(secret: Mapping[str, Any] | None) -> bytes | None:
    """The key an observed token-key Secret holds, if it holds a usable one."""
    key = unb64((secret or {}).get("data"), TOKEN_KEY_FILE)
    return key if key is not None and len(key.strip()) >= 16 else None


def device_token_secret(owner: Owner, policy_key: bytes) -> Body:
    """The device's token, minted from its policy's key."""
    token = mint_token(policy_key.strip(), owner.name)
    return _secret(
        owner,
        device_token_secret_name(owner.name),
        keys.EDGE_DEVICE_LABEL,
        "edge-agent",
        {TOKEN_FILE: b64(token.encode())},
    )


def caller_token_secret(owner: Owner, name: str, key: bytes, caller: str) -> Body:
    """A token minted from another service's key for ``caller`` (a policy's trainers calling
    its ModelZoo's gating service)."""
    token = mint_token(key.strip(), caller)
    return _secret(
        owner, name, keys.ADAPTATION_POLICY_LABEL, "trainer", {TOKEN_FILE: b64(token.encode())}
    )


def service_hosts(service: str, namespace: str, cluster_domain: str) -> tuple[str, ...]:
    """Names a ClusterIP Service's certificate covers."""
    return (f"{service}.{namespace}.svc.{cluster_domain}", f"{service}.{namespace}.svc", service)


def trainer_hosts(policy: str, namespace: str, cluster_domain: str) -> tuple[str, ...]:
    """Names a trainer's certificate covers: the headless Service and each pod under it."""
    svc = f"{policy}-trainer"
    return (
        f"{svc}.{namespace}.svc.{cluster_domain}",
        f"*.{svc}.{namespace}.svc.{cluster_domain}",
        f"{svc}.{namespace}.svc",
        f"*.{svc}.{namespace}.svc",
    )


def tls_pair(
    observed: Mapping[str, Any] | None,
    ca: KeyPair,
    hosts: tuple[str, ...],
    now: datetime.datetime | None = None,
) -> KeyPair:
    """The trainers' certificate: the observed one while it is good, else a fresh one."""
    data = (observed or {}).get("data")
    cert, key, bundle = unb64(data, TLS_CERT), unb64(data, TLS_KEY), unb64(data, CA_CERT)
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        good = (
            cert is not None
            and key is not None
            and bundle == ca.cert
            and signed_by(cert, ca.cert)
            and set(hosts) <= set(dns_names(cert))
            and not_after(cert) - now > RENEW_BEFORE
        )
    except ValueError:  # not a certificate (edited by hand)
        good = False
    if good and cert is not None and key is not None:
        return KeyPair(cert, key)
    return issue(ca, hosts[0].split(".", 1)[0], hosts, days=CERT_DAYS)


def client_pair(
    observed: Mapping[str, Any] | None,
    ca: KeyPair,
    device: str,
    now: datetime.datetime | None = None,
) -> KeyPair:
    """A device's client certificate: the observed one while it is good, else a fresh one."""
    data = (observed or {}).get("data")
    cert, key = unb64(data, TLS_CERT), unb64(data, TLS_KEY)
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        good = (
            cert is not None
            and key is not None
            and signed_by(cert, ca.cert)
            and common_name(cert) == device
            and not_after(cert) - now > RENEW_BEFORE
        )
    except ValueError:
        good = False
    if good and cert is not None and key is not None:
        return KeyPair(cert, key)
    return issue(ca, device, server=False, days=CERT_DAYS)


def client_tls_secret(owner: Owner, pair: KeyPair) -> Body:
    return _secret(
        owner,
        client_tls_secret_name(owner.name),
        keys.EDGE_DEVICE_LABEL,
        "edge-agent",
        {TLS_CERT: b64(pair.cert), TLS_KEY: b64(pair.key)},
        kind="kubernetes.io/tls",
    )


def client_ca_config_map(owner: Owner, ca_cert: bytes) -> Body:
    """The CA trainers check devices' client certificates with."""
    return ca_bundle(owner, client_ca_config_map_name(owner.name), ca_cert)


def server_tls_secret(
    owner: Owner,
    name: str,
    pair: KeyPair,
    ca: KeyPair,
    label: str = keys.ADAPTATION_POLICY_LABEL,
    component: str = "trainer",
) -> Body:
    """A server's certificate, key and the CA that signed it."""
    return _secret(
        owner,
        name,
        label,
        component,
        {TLS_CERT: b64(pair.cert), TLS_KEY: b64(pair.key), CA_CERT: b64(ca.cert)},
        kind="kubernetes.io/tls",
    )


def tls_secret(owner: Owner, pair: KeyPair, ca: KeyPair) -> Body:
    return server_tls_secret(owner, tls_secret_name(owner.name), pair, ca)


def trainer_certificate(owner: Owner, hosts: tuple[str, ...], issuer: IssuerRef) -> Body:
    return server_certificate(owner, tls_secret_name(owner.name), hosts, issuer)


def server_certificate(
    owner: Owner,
    name: str,
    hosts: tuple[str, ...],
    issuer: IssuerRef,
    label: str = keys.ADAPTATION_POLICY_LABEL,
    component: str = "trainer",
) -> Body:
    """The cert-manager Certificate for a server's names; its Secret carries our labels, so
    the operator sees it like the Secret it would have written itself."""
    labels = child_metadata(owner, "", label, component, None)["labels"]
    spec = {
        "secretName": name,
        "secretTemplate": {"labels": labels},
        "dnsNames": list(hosts),
        "duration": f"{CERT_DAYS * 24}h",
        "renewBefore": f"{int(RENEW_BEFORE.total_seconds()) // 3600}h",
        "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        "usages": ["server auth", "digital signature", "key encipherment"],
        "issuerRef": issuer.reference(),
    }
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": child_metadata(owner, name, label, component, spec),
        "spec": spec,
    }


def issued_ca(secret: Mapping[str, Any] | None) -> bytes | None:
    """The CA certificate an issuer wrote beside the trainers' certificate, if it is one."""
    bundle = unb64((secret or {}).get("data"), CA_CERT)
    if bundle is None or b"-----BEGIN CERTIFICATE-----" not in bundle:
        return None
    try:
        dns_names(bundle)  # parses
    except ValueError:
        return None
    return bundle


def ca_config_map(owner: Owner, ca_cert: bytes) -> Body:
    """The CA bundle agents verify trainers with."""
    return ca_bundle(owner, ca_config_map_name(owner.name), ca_cert)
