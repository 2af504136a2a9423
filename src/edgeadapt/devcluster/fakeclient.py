"""An in-memory API server behind the operator's client interface, for unit tests of ``act``.

It keeps objects by path and answers as the API server does for what the operator asks: create
(409 for a name that exists, a generated name for ``generateName``), get, JSON merge patch of an
object or of its ``/status``, delete, and list of a collection in one namespace or all of them,
with an equality label selector. ``refuse`` makes a write to a path raise the given error, as an
admission webhook or a quota would. Developer-only: it does not ship in images.
"""

from __future__ import annotations

import builtins
import copy
import itertools
from collections.abc import Mapping
from typing import Any

from edgeadapt.operator.kube import ApiError

Body = dict[str, Any]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class FakeClient:
    """The operator's ``Client`` over a dict of objects (see the module docstring)."""

    def __init__(self) -> None:
        self.objects: dict[str, Body] = {}
        self.refuse: dict[str, ApiError] = {}  # path of an object -> error for writes to it
        self.log: list[tuple[str, str]] = []  # (verb, path) of every call
        self.status_writes: builtins.list[Body] = []  # every status patch, in order
        self.requests = 0
        self._serial = itertools.count(1)

    # -- the Client interface ---------------------------------------------------------
    async def create(self, path: str, body: Mapping[str, Any]) -> bool:
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            meta["name"] = f"{meta.get('generateName', 'obj-')}{next(self._serial):05d}"
        full = f"{path}/{meta['name']}"
        self._call("create", full)
        if full in self.objects:
            return False
        meta.setdefault("uid", f"uid-{next(self._serial)}")
        meta["resourceVersion"] = str(next(self._serial))
        meta.setdefault("generation", 1)
        self.objects[full] = obj
        return True

    async def get(self, path: str) -> Body | None:
        self._call("get", path, write=False)
        obj = self.objects.get(path)
        return copy.deepcopy(obj) if obj is not None else None

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> bool:
        status = path.endswith("/status")
        target = path.removesuffix("/status") if status else path
        self._call("patch", target)
        obj = self.objects.get(target)
        if obj is None:
            return False
        if status:
            self.status_writes.append(copy.deepcopy(dict(body.get("status") or {})))
            obj["status"] = merge_patch(obj.get("status"), body.get("status") or {})
        else:
            spec_before = obj.get("spec")
            patched = merge_patch(obj, {k: v for k, v in body.items() if k != "status"})
            obj.clear()
            obj.update(patched)
            if obj.get("spec") != spec_before:
                obj["metadata"]["generation"] = int(obj["metadata"].get("generation", 1)) + 1
        obj["metadata"]["resourceVersion"] = str(next(self._serial))
        return True

    async def delete(self, path: str) -> bool:
        self._call("delete", path)
        return self.objects.pop(path, None) is not None

    async def list(self, path: str, *, label_selector: str | None = None) -> list[Body]:
        self._call("list", path, write=False)
        wanted = dict(
            part.split("=", 1) for part in (label_selector or "").split(",") if "=" in part
        )
        out = []
        for full, obj in self.objects.items():
            collection, _, _ = full.rpartition("/")
            if not _in_collection(collection, path):
                continue
            labels = (obj.get("metadata") or {}).get("labels") or {}
            if all(labels.get(k) == v for k, v in wanted.items()):
                out.append(copy.deepcopy(obj))
        return out

    async def close(self) -> None:
        return None

    # -- helpers for tests ------------------------------------------------------------
    def at(self, path: str) -> Body:
        return self.objects[path]

    def created(self) -> builtins.list[str]:
        return [path for verb, path in self.log if verb == "create" and path in self.objects]

    def events(self) -> builtins.list[Body]:
        return [o for path, o in self.objects.items() if "/events/" in path]

    def writes(self) -> builtins.list[tuple[str, str]]:
        return [(verb, path) for verb, path in self.log if verb not in ("get", "list")]

    def _call(self, verb: str, path: str, write: bool = True) -> None:
        self.requests += 1
        self.log.append((verb, path))
        if write and path in self.refuse:
            raise self.refuse[path]


def _in_collection(collection: str, listed: str) -> bool:
    """Whether objects of ``collection`` (with its namespace) belong to the ``listed`` path,
    which may name all namespaces (``/api/v1/pods``)."""
    if collection == listed:
        return True
    prefix, sep, rest = collection.partition("/namespaces/")
    if not sep:
        return False
    _, _, plural = rest.partition("/")
    return listed == f"{prefix}/{plural}"
