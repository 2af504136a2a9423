"""Reads every trainer's ``/status``, one request per trainer per interval (and each ModelZoo's
gating service's, with a token from the zoo's key, at ``gating_url``).

For each AdaptationPolicy whose token key the operator knows, each trainer pod it wants is asked
``GET /status`` with the bearer token derived from that key (``edgeadapt.stream.auth.
status_token``): the endpoint is not world-readable, and the chart's NetworkPolicy lets only the
operator (and, optionally, a monitoring namespace) reach the trainers' HTTP port. Requests run
concurrently up to a bound, each with a timeout; a trainer that does not answer is recorded as
unreachable, which its devices show as ``TrainerUnavailable``.

The address of a trainer's endpoint is its stable DNS name under the policy's headless Service;
``EDGEADAPT_TRAINER_STATUS_URL`` replaces it with a template (``{namespace}``, ``{policy}``,
``{pod}``) where the operator cannot resolve cluster names, as in the kwok benchmark.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from edgeadapt.api import keys
from edgeadapt.controllers.observe import TrainerObservation

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 10.0
STATUS_TIMEOUT_S = 5.0
CONCURRENCY = 64
MAX_STATUS_BYTES = 32 * 1024 * 1024
STATUS_CHUNK_BYTES = 256 * 1024

# (namespace, policy, pod) -> URL of the trainer's /status
UrlOf = Callable[[str, str, str], str]
# (namespace, zoo) -> URL of the zoo's gating service's /status
ZooUrlOf = Callable[[str, str], str]


def cluster_url(cluster_domain: str) -> UrlOf:
    def url(namespace: str, policy: str, pod: str) -> str:
        host = f"{pod}.{policy}-trainer.{namespace}.svc.{cluster_domain}"
        return f"http://{host}:{keys.METRICS_PORT}/status"

    return url


def url_from_env(cluster_domain: str) -> UrlOf:
    template = os.environ.get("EDGEADAPT_TRAINER_STATUS_URL")
    if not template:
        return cluster_url(cluster_domain)
    return lambda namespace, policy, pod: template.format(
        namespace=namespace, policy=policy, pod=pod
    )


def gating_url(cluster_domain: str) -> ZooUrlOf:
    """Where a ModelZoo's gating service answers ``/status``: its Service's cluster name, or
    the ``EDGEADAPT_GATING_STATUS_URL`` template (``{namespace}``, ``{zoo}``)."""
    template = os.environ.get("EDGEADAPT_GATING_STATUS_URL")
    if template:
        return lambda namespace, zoo: template.format(namespace=namespace, zoo=zoo)

    def url(namespace: str, zoo: str) -> str:
        host = f"{zoo}-gating.{namespace}.svc.{cluster_domain}"
        return f"http://{host}:{keys.METRICS_PORT}/status"

    return url


async def fetch_json(
    session: aiohttp.ClientSession, url: str, token: str, timeout: float = STATUS_TIMEOUT_S
) -> tuple[dict[str, Any] | None, str]:
    """A ``/status`` answer as a JSON object, or None and why not."""
    try:
        async with session.get(
            url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            if resp.status != 200:
                return None, f"/status answered HTTP {resp.status}"
            # The whole body, chunk by chunk up to the cap (``read(n)`` returns what has
            # arrived so far, which cuts a large answer short).
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(STATUS_CHUNK_BYTES):
                size += len(chunk)
                if size > MAX_STATUS_BYTES:
                    return None, "/status answer is too large"
                chunks.append(chunk)
            body = json.loads(b"".join(chunks))
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:300]
    if not isinstance(body, dict):
        return None, "/status answer is not a JSON object"
    return body, ""


async def fetch(
    session: aiohttp.ClientSession, url: str, token: str, timeout: float = STATUS_TIMEOUT_S
) -> TrainerObservation:
    """One trainer's /status as an observation (unreachable, with the error, if it fails)."""
    now = time.time()
    body, error = await fetch_json(session, url, token, timeout)
    if body is None:
        return TrainerObservation(now, False, error)
    return TrainerObservation.of(body, now)
