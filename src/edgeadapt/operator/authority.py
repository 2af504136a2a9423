"""The operator's CA: one Secret in the operator's namespace, made on first start.

Secret ``edgeadapt-ca`` (``tls.crt``, ``tls.key``) holds an ECDSA P-256 CA valid for ten years.
Every policy's trainer certificate is issued from it (``edgeadapt.controllers.security``) and
every agent trusts it through its policy's ``<policy>-trainer-ca`` ConfigMap. Deleting the Secret
makes a new CA at the operator's next start, after which every trainer certificate and CA bundle
is re-issued.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from edgeadapt.api import keys
from edgeadapt.controllers.common import SECRET
from edgeadapt.controllers.security import b64, unb64
from edgeadapt.operator.kube import Client
from edgeadapt.pki import KeyPair, new_ca

log = logging.getLogger(__name__)

CA_SECRET = "edgeadapt-ca"
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def operator_namespace() -> str:
    """``EDGEADAPT_OPERATOR_NAMESPACE`` (the chart sets it), else the pod's own namespace."""
    ns = os.environ.get("EDGEADAPT_OPERATOR_NAMESPACE")
    if ns:
        return ns
    try:
        return SA_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


async def load_or_create_ca(kube: Client, namespace: str) -> KeyPair:
    path = SECRET.path(namespace, CA_SECRET)
    for _ in range(3):
        existing = await kube.get(path)
        if existing is not None:
            data = existing.get("data") or {}
            cert, key = unb64(data, "tls.crt"), unb64(data, "tls.key")
            if cert is None or key is None:
                raise RuntimeError(f"Secret {namespace}/{CA_SECRET} lacks tls.crt or tls.key")
            return KeyPair(cert, key)
        ca = new_ca("edgeadapt-operator-ca")
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {
                "name": CA_SECRET,
                "namespace": namespace,
                "labels": {keys.PART_OF: "edgeadapt"},
            },
            "data": {"tls.crt": b64(ca.cert), "tls.key": b64(ca.key)},
        }
        if await kube.create(SECRET.path(namespace), body):
            log.info("created the operator's CA", extra={"secret": f"{namespace}/{CA_SECRET}"})
            return ca
        # Another operator process made it first: read theirs.
    raise RuntimeError(f"could not read or create Secret {namespace}/{CA_SECRET}")
