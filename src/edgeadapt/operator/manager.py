"""The operator's loop: caches fed by kopf's watch events, a work queue, observe -> decide -> act.

kopf watches the three kinds and the children (by the managed-by label) and hands every event to
``Manager.on_event``, which updates a slim cache (``controllers.base.Cache``) and queues the
owner's key. Workers reconcile a key with its kind's ``Controller`` (edgeadapt.controllers), which
observes the cache and calls its pure ``decide``, and apply the plan with idempotent requests
(act). The reconcile loop knows no kind by name; the trainer-status poller (the data plane)
fills the cache's observations and queues the policies and devices they concern. The operator
writes only children and the ``status`` subresource, never ``spec``. At start it lists everything
once, so decisions (trainer bindings above all) are made against the whole picture, not a
half-listed one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp

from edgeadapt.api import keys
from edgeadapt.api.conditions import now_rfc3339
from edgeadapt.api.v1alpha1 import ADAPTATION_POLICY, EDGE_DEVICE, MODEL_ZOO, Kind
from edgeadapt.controllers import edgedevice, observe, registry, security
from edgeadapt.controllers.base import Cache, Controller, Key
from edgeadapt.controllers.binding import Bindings
from edgeadapt.controllers.common import (
    SECRET,
    STATEFUL_SET,
    Apply,
    Body,
    ChildFailure,
    ChildKind,
    Images,
    Owner,
    Plan,
    child_failure_status,
    spec_hash_of,
    status_differs,
    transition_events,
)
from edgeadapt.controllers.modelzoo import gating_key_secret_name
from edgeadapt.operator import metrics, poller
from edgeadapt.operator.authority import load_or_create_ca
from edgeadapt.operator.kube import ApiError, Client
from edgeadapt.operator.workqueue import ReportedError, WorkQueue
from edgeadapt.stream.auth import status_token

log = logging.getLogger(__name__)

RESYNC_INTERVAL_S = 600.0
# What the controllers read of a child's status (pods, workloads, claims).
CHILD_STATUS_FIELDS = (
    "phase",
    "conditions",
    "observedGeneration",
    "readyReplicas",
    "availableReplicas",
    "updatedReplicas",
)


def slim(body: Mapping[str, Any], *, child: bool) -> Body:
    """The parts of an object the controllers read; the cache keeps only these."""
    meta = body.get("metadata") or {}
    out: Body = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "generation", "labels", "deletionTimestamp")
            if k in meta
        },
        "status": body.get("status") or {},
    }
    if child:
        status = out["status"]
        out["status"] = {k: status[k] for k in CHILD_STATUS_FIELDS if k in status}
        if "conditions" in status:
            out["status"]["conditions"] = [
                c for c in status["conditions"] if c.get("type") == "Ready"
            ]
        exits = [_slim_container(c) for c in status.get("containerStatuses") or []]
        if any(exits):  # why a trainer exited (models it could not load)
            out["status"]["containerStatuses"] = exits
        if "data" in body:  # Secrets and ConfigMaps: compared with what is wanted
            out["data"] = dict(body.get("data") or {})
    annotations = meta.get("annotations") or {}
    if keys.SPEC_HASH in annotations:
        out["metadata"]["annotations"] = {keys.SPEC_HASH: annotations[keys.SPEC_HASH]}
    if child:
        spec = body.get("spec") or {}
        out["spec"] = {k: spec[k] for k in ("nodeName", "replicas") if k in spec}
    else:
        out["spec"] = body.get("spec") or {}
    return out


def _slim_container(status: Mapping[str, Any]) -> Body:
    out: Body = {}
    for part in ("state", "lastState"):
        term = (status.get(part) or {}).get("terminated")
        if term:
            out[part] = {
                "terminated": {k: term[k] for k in ("exitCode", "message", "reason") if k in term}
            }
    return out


def _zoo_digest(body: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
    """What a zoo's status shows of its gating service's answer."""
    if body is None:
        return None
    return tuple(body.get(k) for k in ZOO_FIGURES)


ZOO_FIGURES = ("experts", "zoo_version", "admitted", "pruned", "last_admission_unix", "selections")


@dataclass
class Manager:
    kube: Client
    images: Images = field(default_factory=Images)
    workers: int = 8
    operator_namespace: str = "default"
    status_url: poller.UrlOf | None = None  # default: the trainers' cluster DNS names
    zoo_status_url: poller.ZooUrlOf | None = None  # default: the gating Services' DNS names
    status_interval: float = poller.STATUS_INTERVAL_S
    bindings: Bindings = field(default_factory=Bindings)
    _figures_queued: dict[tuple[str, str], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.queue = WorkQueue(self._reconcile, workers=self.workers)
        self.cache = Cache(self.images, self.queue.add)
        self.controllers = registry.build(self.cache, self.bindings)
        self._owner_labels = [(c.owner_label, c) for c in self.controllers.values()]
        self._child_kinds = {k.plural for k in self.images.child_kinds()}
        self._tasks: list[asyncio.Task[None]] = []
        if self.status_url is None:
            self.status_url = poller.cluster_url(self.images.cluster_domain)
        if self.zoo_status_url is None:
            self.zoo_status_url = poller.gating_url(self.images.cluster_domain)

    def start(self) -> None:
        self.queue.start()
        self._tasks = [
            asyncio.create_task(self._resync(), name="resync"),
            asyncio.create_task(self._poll_trainers(), name="trainer-status"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.queue.stop()

    # ----------------------------------------------------------------- the data plane

    async def _poll_trainers(self) -> None:
        """Every interval, each wanted trainer's /status (see ``edgeadapt.operator.poller``)."""
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session:
            while True:
                started = loop.time()
                try:
                    await self.poll_once(session)
                except Exception:  # one bad round must not end polling
                    log.exception("polling the trainers failed")
                await asyncio.sleep(max(0.5, self.status_interval - (loop.time() - started)))

    async def poll_once(self, session: aiohttp.ClientSession) -> None:
        limit = asyncio.Semaphore(poller.CONCURRENCY)
        jobs = []
        wanted = set()
        for (ns, policy), pool in list(self.bindings.pools.items()):
            key = self.cache.token_key(ns, policy)
            if key is None:
                continue
            token = status_token(key)
            # kopf calls on_event from its handler threads: group a copy of the bindings.
            devices: dict[int, list[str]] = {}
            for device, index in tuple(pool.bound.items()):
                devices.setdefault(index, []).append(device)
            for index in range(pool.trainers_wanted):
                wanted.add((ns, policy, index))
                jobs.append(
                    self._poll_trainer(
                        session, limit, ns, policy, index, token, devices.get(index, [])
                    )
                )
        observations = self.cache.observations
        for gone in set(observations) - wanted:
            del observations[gone]
        zoos = set()
        for plural, ns, zoo in list(self.cache.objects):
            if plural != MODEL_ZOO.plural:
                continue
            secret = self.cache.child(SECRET, ns, gating_key_secret_name(zoo))
            zoo_key = security.token_key_of(secret)
            if zoo_key is not None:
                zoos.add((ns, zoo))
                jobs.append(self._poll_zoo(session, limit, ns, zoo, status_token(zoo_key)))
        for old_zoo in set(self.cache.zoo_status) - zoos:
            del self.cache.zoo_status[old_zoo]
        await asyncio.gather(*jobs)

    async def _poll_zoo(
        self,
        session: aiohttp.ClientSession,
        limit: asyncio.Semaphore,
        ns: str,
        zoo: str,
        token: str,
    ) -> None:
        """Ask a zoo's gating service for its figures; queue the zoo when they moved."""
        assert self.zoo_status_url is not None
        async with limit:
            body, _ = await poller.fetch_json(session, self.zoo_status_url(ns, zoo), token)
        old = self.cache.zoo_status.get((ns, zoo), {})
        self.cache.zoo_status[(ns, zoo)] = body
        if _zoo_digest(old) != _zoo_digest(body):
            self.cache.queue(MODEL_ZOO, ns, zoo)

    async def _poll_trainer(
        self,
        session: aiohttp.ClientSession,
        limit: asyncio.Semaphore,
        ns: str,
        policy: str,
        index: int,
        token: str,
        devices: list[str],
    ) -> None:
        """Ask one trainer; queue its policy if its summary changed, and each of its ``devices``
        whose conditions could change or whose figures are due."""
        assert self.status_url is not None
        pod = edgedevice.trainer_pod_name(policy, index)
        async with limit:
            obs = await poller.fetch(session, self.status_url(ns, policy, pod), token)
        old = self.cache.observations.get((ns, policy, index))
        self.cache.observations[(ns, policy, index)] = obs
        if old is None or _shape(old) != _shape(obs):
            self.cache.queue(ADAPTATION_POLICY, ns, policy)
        now = time.monotonic()
        for device in devices:
            before, after = _device_digest(old, device), _device_digest(obs, device)
            last = self._figures_queued.get((ns, device), -math.inf)
            # A condition (connected, in step, refused) may change: now. Figures only: the
            # decision writes them within the documented tolerance, so looking again more often
            # than that would only cost reconciles.
            if before[0] != after[0] or (
                before != after and now - last >= observe.FIGURES_REFRESH_S / 2
            ):
                self.cache.queue(EDGE_DEVICE, ns, device)
                self._figures_queued[(ns, device)] = now

    async def _resync(self) -> None:
        """Look at everything again now and then, in case a watch event was missed."""
        while True:
            await asyncio.sleep(RESYNC_INTERVAL_S)
            for key in list(self.cache.objects):
                self.queue.add(key)

    # ----------------------------------------------------------------- cache maintenance

    async def prime(self, namespaces: list[str] | None) -> None:
        """List everything once, let the controllers rebuild their state (the trainer pools from
        the devices' bindings), queue all."""
        self.cache.ca = await load_or_create_ca(self.kube, self.operator_namespace)
        scopes = namespaces or [None]  # type: ignore[list-item]
        selector = f"{keys.MANAGED_BY}={keys.MANAGED_BY_VALUE}"
        for ns in scopes:
            for controller in self.controllers.values():
                for item in await self.kube.list(_collection(controller.kind.path("x"), ns)):
                    self._store(controller, item)
            for child in self.images.child_kinds():
                for item in await self.kube.list(
                    _collection(child.path("x"), ns), label_selector=selector
                ):
                    self.on_event(child.plural, None, item)
        for controller in self.controllers.values():
            controller.primed()
        for key in list(self.cache.objects):
            self.queue.add(key)

    def on_event(self, plural: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event from kopf (type None for the initial listing)."""
        controller = self.controllers.get(plural)
        if controller is not None:
            if event_type == "DELETED":
                meta = body.get("metadata") or {}
                ns, name = meta.get("namespace", ""), meta.get("name", "")
                self.cache.objects.pop((plural, ns, name), None)
                controller.forgotten(ns, name)
            else:
                self._store(controller, body)
        elif plural in self._child_kinds:
            meta = body.get("metadata") or {}
            labels = meta.get("labels") or {}
            owner = next((c for label, c in self._owner_labels if label in labels), None)
            if owner is not None and any(k.plural == plural for k in owner.ignores):
                return
            key = (plural, meta.get("namespace", ""), meta.get("name", ""))
            if event_type == "DELETED":
                self.cache.children.pop(key, None)
            else:
                self.cache.children[key] = slim(body, child=True)
            if owner is not None:
                self.queue.add((owner.kind.plural, key[1], labels[owner.owner_label]))

    def _store(self, controller: Controller, body: Mapping[str, Any]) -> None:
        item = slim(body, child=False)
        meta = item["metadata"]
        key = (controller.kind.plural, meta["namespace"], meta["name"])
        self.cache.objects[key] = item
        controller.stored(item)
        self.queue.add(key)

    # ----------------------------------------------------------------- reconcile

    async def _reconcile(self, key: Hashable) -> None:
        plural, ns, name = cast(Key, key)
        started = time.monotonic()
        result = "error"
        try:
            obj = self.cache.objects.get((plural, ns, name))
            # Gone or going: the garbage collector removes the children.
            if obj is not None and not obj["metadata"].get("deletionTimestamp"):
                controller = self.controllers[plural]
                await self._act(controller.kind, obj, controller.reconcile(obj))
            result = "success"
        finally:
            metrics.RECONCILE_SECONDS.labels(plural, result).observe(time.monotonic() - started)
            metrics.QUEUE_DEPTH.set(len(self.queue))

    # ----------------------------------------------------------------- act

    async def _act(self, kind: Kind, obj: Body, plan: Plan) -> None:
        """Write the plan: deletes, then the children together, then the status and events.

        A child that cannot be written does not stop the rest: the status is written all the
        same, showing Ready=False with ``ChildApplyFailed`` naming the child and the API
        server's error (``child_failure_status``), and then ``ChildApplyError`` makes the work
        queue retry the object with backoff. Once the writes succeed, the decided status
        replaces the failure."""
        owner = Owner.of(kind, obj)
        ns = owner.namespace
        failures: list[ChildFailure] = []
        for d in plan.delete:
            try:
                await self.kube.delete(d.kind.path(ns, d.name))
            except Exception as e:
                failures.append(_failure("delete", d.kind, d.name, e))
        writes = []
        for a in plan.apply:  # children are independent of each other: write them together
            observed = self.cache.child(a.kind, ns, a.name)
            if observed is None:
                writes.append(self._create(owner, a))
            elif a.mode == "patch" and _drifted(observed, a.body):
                writes.append(self._patch(owner, a))
        failures += [f for f in await asyncio.gather(*writes) if f is not None]
        status, events = plan.status, plan.events
        if failures:
            current = obj.get("status") or {}
            status = child_failure_status(
                current, plan.status, failures, generation=owner.generation, now=now_rfc3339()
            )
            if not status_differs(current, status):
                status = {}
            events = transition_events(current, status, kind.kind) if status else []
        if status:
            patched = await self.kube.merge_patch(
                kind.path(ns, owner.name, status=True), {"status": status}
            )
            if patched:
                # Our own write comes back as a watch event; until then, decide against it.
                obj["status"] = {**(obj.get("status") or {}), **status}
        for ev in events:
            await self._post_event(kind, owner, ev.type, ev.reason, ev.message)
        if failures:
            raise ChildApplyError(owner, failures)

    async def _create(self, owner: Owner, a: Apply) -> ChildFailure | None:
        """Create a child. An existing object of that name is fine if it is ours (the cache has
        not seen it yet); one the owner does not control is in the way, and that is a failure."""
        path = a.kind.path(owner.namespace)
        try:
            if await self.kube.create(path, a.body):
                return None
            existing = await self.kube.get(a.kind.path(owner.namespace, a.name))
        except Exception as e:
            return _failure("create", a.kind, a.name, e)
        if existing is None or owner.controls(existing):
            return None  # gone again, or ours
        terminating = bool((existing.get("metadata") or {}).get("deletionTimestamp"))
        return ChildFailure(
            "create",
            a.kind.kind,
            a.name,
            f"an object of that name exists and is not controlled by {owner.kind.kind} "
            f'"{owner.name}"' + (" (it is being deleted)" if terminating else ""),
            refused=not terminating,
        )

    async def _patch(self, owner: Owner, a: Apply) -> ChildFailure | None:
        try:
            await self.kube.merge_patch(
                a.kind.path(owner.namespace, a.name), _patch_of(a.kind, a.body)
            )
        except Exception as e:
            return _failure("patch", a.kind, a.name, e)
        return None

    async def _post_event(
        self, kind: Kind, owner: Owner, etype: str, reason: str, message: str
    ) -> None:
        now = now_rfc3339()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{owner.name}.", "namespace": owner.namespace},
            "involvedObject": {
                "apiVersion": owner.reference()["apiVersion"],
                "kind": kind.kind,
                "name": owner.name,
                "namespace": owner.namespace,
                "uid": owner.uid,
            },
            "type": etype,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": keys.MANAGED_BY_VALUE},
            "reportingComponent": keys.MANAGED_BY_VALUE,
            "reportingInstance": keys.MANAGED_BY_VALUE,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.kube.create(f"/api/v1/namespaces/{owner.namespace}/events", event)
        except Exception:  # an event is a courtesy; never fail a reconcile over one
            log.warning("could not post event %s for %s/%s", reason, owner.namespace, owner.name)


class ChildApplyError(ReportedError):
    """Children of an object could not be written; its status says so already."""

    def __init__(self, owner: Owner, failures: list[ChildFailure]) -> None:
        super().__init__(
            f"{owner.kind.kind} {owner.namespace}/{owner.name}: "
            + "; ".join(f.describe() for f in failures)
        )
        self.failures = failures


def _failure(action: str, kind: ChildKind, name: str, error: Exception) -> ChildFailure:
    if isinstance(error, ApiError):
        return ChildFailure(action, kind.kind, name, error.message, refused=error.refused)
    return ChildFailure(action, kind.kind, name, f"{type(error).__name__}: {error}", refused=False)


def _drifted(observed: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether a child differs from what we want: its spec hash (our last write), its data (a
    Secret or ConfigMap edited by hand), or its replica count (the field people most often
    change by hand, e.g. ``kubectl scale``)."""
    if spec_hash_of(observed) != spec_hash_of(desired):
        return True
    if "data" in desired and (observed.get("data") or {}) != desired["data"]:
        return True
    want = (desired.get("spec") or {}).get("replicas")
    have = (observed.get("spec") or {}).get("replicas")
    return want is not None and have is not None and want != have


def _patch_of(kind: ChildKind, body: Body) -> Body:
    """A merge patch that makes an existing child match ``body`` in the parts we own."""
    meta = body["metadata"]
    patch: Body = {
        "metadata": {"labels": meta["labels"], "annotations": meta["annotations"]},
    }
    for part in ("spec", "data"):
        if part in body:
            patch[part] = body[part]
    if kind == STATEFUL_SET:  # claim templates cannot change; a new size applies to a new one
        patch["spec"] = {k: v for k, v in body["spec"].items() if k != "volumeClaimTemplates"}
    return patch


def _shape(obs: observe.TrainerObservation) -> tuple[Any, ...]:
    """What of a trainer's observation its policy's status shows (the GPU's figures coarsely:
    its status follows memory headroom at once, utilisation and memory in 10 % and GiB steps)."""
    gpu = observe.trainer_gpus({"": obs})
    return (
        obs.reachable,
        obs.phase,
        sum(1 for v in obs.devices.values() if v.get("connected")),
        sum(1 for v in obs.devices.values() if v.get("agent_in_step")),
        tuple(
            (g["memoryLow"], g["utilizationPercent"] // 10, g["memoryUsedMiB"] // 1024) for g in gpu
        ),
    )


def _device_digest(
    obs: observe.TrainerObservation | None, device: str
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(what a device's conditions depend on, its figures) in an observation."""
    if obs is None:
        return ((None,), ())
    view = obs.devices.get(device) or {}
    conditions = (
        obs.serving,
        device in obs.refused,
        bool(view.get("connected")),
        bool(view.get("agent_in_step")),
    )
    figures = tuple(
        view.get(k)
        for k in (
            "agent_model_version",
            "miou_teacher_last_60s",
            "uplink_kbps",
            "downlink_kbps",
            "sampling_rate_fps",
        )
    )
    return conditions, figures


def _collection(path: str, namespace: str | None) -> str:
    """The collection path in one namespace, or across all of them."""
    base, _, rest = path.partition("/namespaces/x/")
    return f"{base}/{rest}" if namespace is None else f"{base}/namespaces/{namespace}/{rest}"
