"""A small asynchronous Kubernetes REST client on aiohttp, with kopf's credentials.

The operator needs a handful of verbs on known paths (create, merge-patch, delete, list); this
keeps them on one connection pool, retries what the API server asks to be retried, counts
requests, and treats 404 on delete and 409 on create as the no-ops they are.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp
import kopf

from edgeadapt.operator import metrics

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body

    @property
    def message(self) -> str:
        """The API server's own words: the ``message`` of its Status body, else the body."""
        try:
            decoded = json.loads(self.body)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict) and decoded.get("message"):
            return str(decoded["message"])
        return f"HTTP {self.status}: {self.body[:500]}"

    @property
    def refused(self) -> bool:
        """A definite no (4xx other than throttling), which asking again will not change."""
        return 400 <= self.status < 500 and self.status not in (408, 429)

    @property
    def namespace_terminating(self) -> bool:
        """Refused because the namespace is being deleted (nothing to do there any more)."""
        return self.status == 403 and "NamespaceTerminating" in self.body


def login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """In-cluster service account first, else the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )
    if info is None:
        raise kopf.LoginError("neither a service account nor a kubeconfig was found")
    return info


class Client(Protocol):
    """What the manager asks of the API server; ``Kube`` over HTTP, and an in-memory fake for
    unit tests (``edgeadapt.devcluster.fakeclient``)."""

    requests: int

    async def create(self, path: str, body: Mapping[str, Any]) -> bool: ...

    async def get(self, path: str) -> dict[str, Any] | None: ...

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> bool: ...

    async def delete(self, path: str) -> bool: ...

    async def list(
        self, path: str, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...


class Kube:
    """One aiohttp session against one API server (a ``Client``)."""

    def __init__(self, info: kopf.ConnectionInfo, *, attempts: int = 6) -> None:
        self.server = info.server.rstrip("/")
        self.attempts = attempts
        self.requests = 0
        headers = dict(info.as_http_headers())
        headers["User-Agent"] = "edgeadapt-operator"
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, ssl=info.as_ssl_context()),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=60),
        )

    async def close(self) -> None:
        await self.session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (),
    ) -> tuple[int, dict[str, Any]]:
        """Send one request, retrying throttling and transient failures with backoff.

        Statuses in ``ok`` are returned rather than raised (with the decoded body, or {})."""
        data = None if body is None else json.dumps(body)
        delay = 0.2
        for attempt in range(self.attempts):
            self.requests += 1
            metrics.API_REQUESTS.labels(method).inc()
            try:
                async with self.session.request(
                    method,
                    self.server + path,
                    data=data,
                    params=params,
                    headers={"Content-Type": content_type} if data is not None else None,
                ) as resp:
                    text = await resp.text()
                    if resp.status < 300 or resp.status in ok:
                        return resp.status, json.loads(text) if text else {}
                    if resp.status not in RETRY_STATUSES or attempt == self.attempts - 1:
                        raise ApiError(resp.status, method, path, text)
                    retry_after = resp.headers.get("Retry-After", "")
                    wait = float(retry_after) if retry_after.isdigit() else delay
            except (TimeoutError, aiohttp.ClientConnectionError):
                if attempt == self.attempts - 1:
                    raise
                wait = delay
            await asyncio.sleep(wait)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    async def create(self, path: str, body: Mapping[str, Any]) -> bool:
        """Create at the collection ``path``; False if it already exists or its namespace is
        being deleted."""
        try:
            status, _ = await self.request("POST", path, body, ok=(409,))
        except ApiError as e:
            if e.namespace_terminating:
                return False
            raise
        return status != 409

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path``, or None if there is none."""
        status, body = await self.request("GET", path, ok=(404,))
        return None if status == 404 else body

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> bool:
        """Merge-patch the object at ``path``; False if it is gone."""
        status, _ = await self.request("PATCH", path, body, content_type=MERGE_PATCH, ok=(404,))
        return status != 404

    async def delete(self, path: str) -> bool:
        """Delete the object at ``path`` (dependents in the background); False if it was gone."""
        status, _ = await self.request(
            "DELETE", path, {"propagationPolicy": "Background"}, ok=(404, 409)
        )
        return status < 300

    async def list(self, path: str, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        """Every item of a collection, page by page."""
        items: list[dict[str, Any]] = []
        params: dict[str, str] = {"limit": "500"}
        if label_selector:
            params["labelSelector"] = label_selector
        while True:
            _, page = await self.request("GET", path, params=params)
            items.extend(page.get("items") or [])
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                return items
            params["continue"] = cont
