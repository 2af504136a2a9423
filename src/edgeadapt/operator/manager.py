"""The operator's loop: caches fed by kopf's watch events, a work queue, observe -> decide -> act.

kopf watches the three kinds and the children (by the managed-by label) and hands every event to
``Manager.on_event``, which updates a slim cache and queues the owner's key. Workers reconcile a
key by reading the cache (observe), calling the kind's pure ``decide`` (edgeadapt.controllers),
and applying the plan with idempotent requests (act). The operator writes only children and the
``status`` subresource, never ``spec``. At start it lists everything once, so decisions (trainer
bindings above all) are made against the whole picture, not a half-listed one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp

from edgeadapt.api import keys
from edgeadapt.api.conditions import now_rfc3339
from edgeadapt.api.v1alpha1 import ADAPTATION_POLICY, EDGE_DEVICE, MODEL_ZOO, Kind
from edgeadapt.controllers import adaptationpolicy, edgedevice, modelzoo, observe, security
from edgeadapt.controllers.binding import Capacity, TrainerPool
from edgeadapt.controllers.common import (
    CERTIFICATE,
    CHILD_KINDS,
    CONFIG_MAP,
    DEPLOYMENT,
    POD,
    PVC,
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
from edgeadapt.operator import metrics, poller
from edgeadapt.operator.authority import load_or_create_ca
from edgeadapt.operator.kube import ApiError, Client
from edgeadapt.operator.workqueue import ReportedError, WorkQueue
from edgeadapt.pki import KeyPair
from edgeadapt.stream.auth import status_token

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # (plural, namespace, name)
POLICY_DEBOUNCE_S = 0.5
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
KINDS_BY_PLURAL = {k.plural: k for k in (EDGE_DEVICE, MODEL_ZOO, ADAPTATION_POLICY)}
CHILDREN_BY_PLURAL = {k.plural: k for k in (*CHILD_KINDS, CERTIFICATE)}
OWNER_LABELS = (
    (keys.EDGE_DEVICE_LABEL, EDGE_DEVICE.plural),
    (keys.ADAPTATION_POLICY_LABEL, ADAPTATION_POLICY.plural),
    (keys.MODEL_ZOO_LABEL, MODEL_ZOO.plural),
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


@dataclass
class Manager:
    kube: Client
    images: Images = field(default_factory=Images)
    workers: int = 8
    operator_namespace: str = "default"
    status_url: poller.UrlOf | None = None  # default: the trainers' cluster DNS names
    status_interval: float = poller.STATUS_INTERVAL_S
    ca: KeyPair | None = None
    observations: dict[tuple[str, str, int], observe.TrainerObservation] = field(
        default_factory=dict
    )
    issued: dict[tuple[str, str], KeyPair] = field(default_factory=dict)  # trainer certificates
    client_issued: dict[tuple[str, str], KeyPair] = field(default_factory=dict)  # per device
    _figures_queued: dict[tuple[str, str], float] = field(default_factory=dict)
    objects: dict[Key, Body] = field(default_factory=dict)
    children: dict[Key, Body] = field(default_factory=dict)
    devices_by_policy: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    policies_by_zoo: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    pools: dict[tuple[str, str], TrainerPool] = field(default_factory=dict)
    device_ref: dict[tuple[str, str], str] = field(default_factory=dict)  # spec.policyRef
    device_policy: dict[tuple[str, str], str] = field(default_factory=dict)  # last bound under
    policy_generation: dict[tuple[str, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.queue = WorkQueue(self._reconcile, workers=self.workers)
        self._tasks: list[asyncio.Task[None]] = []
        if self.status_url is None:
            self.status_url = poller.cluster_url(self.images.cluster_domain)

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
        for (ns, policy), pool in list(self.pools.items()):
            key = self.token_key(ns, policy)
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
        for gone in set(self.observations) - wanted:
            del self.observations[gone]
        await asyncio.gather(*jobs)

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
        old = self.observations.get((ns, policy, index))
        self.observations[(ns, policy, index)] = obs
        if old is None or _shape(old) != _shape(obs):
            self.queue.add((ADAPTATION_POLICY.plural, ns, policy))
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
                self.queue.add((EDGE_DEVICE.plural, ns, device))
                self._figures_queued[(ns, device)] = now

    def token_key(self, ns: str, policy: str) -> bytes | None:
        secret = self.children.get((SECRET.plural, ns, security.token_key_secret_name(policy)))
        return security.token_key_of(secret)

    async def _resync(self) -> None:
        """Look at everything again now and then, in case a watch event was missed."""
        while True:
            await asyncio.sleep(RESYNC_INTERVAL_S)
            for key in list(self.objects):
                self.queue.add(key)

    # ----------------------------------------------------------------- cache maintenance

    async def prime(self, namespaces: list[str] | None) -> None:
        """List everything once, seed the trainer pools from the devices' bindings, queue all."""
        self.ca = await load_or_create_ca(self.kube, self.operator_namespace)
        scopes = namespaces or [None]  # type: ignore[list-item]
        selector = f"{keys.MANAGED_BY}={keys.MANAGED_BY_VALUE}"
        for ns in scopes:
            for kind in (ADAPTATION_POLICY, MODEL_ZOO, EDGE_DEVICE):
                for item in await self.kube.list(_collection(kind.path("x"), ns)):
                    self._store(kind.plural, item)
            for child in self.images.child_kinds():
                for item in await self.kube.list(
                    _collection(child.path("x"), ns), label_selector=selector
                ):
                    self._store_child(child.plural, item)
        for key, policy in list(self.objects.items()):
            if key[0] == ADAPTATION_POLICY.plural:
                self._ensure_pool(key[1], key[2], policy)
        for key in list(self.objects):
            self.queue.add(key)

    def on_event(self, plural: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event from kopf (type None for the initial listing)."""
        if plural in KINDS_BY_PLURAL:
            if event_type == "DELETED":
                self._forget(plural, body)
            else:
                self._store(plural, body)
        elif plural in CHILDREN_BY_PLURAL:
            meta = body.get("metadata") or {}
            key = (plural, meta.get("namespace", ""), meta.get("name", ""))
            if plural == POD.plural and keys.MODEL_ZOO_LABEL in (meta.get("labels") or {}):
                return  # gating pods: their Deployment speaks for them
            if event_type == "DELETED":
                self.children.pop(key, None)
            else:
                self._store_child(plural, body)
            owner = _owner_key(meta)
            if owner is not None:
                self.queue.add(owner)

    def _store(self, plural: str, body: Mapping[str, Any]) -> None:
        item = slim(body, child=False)
        meta = item["metadata"]
        ns, name = meta["namespace"], meta["name"]
        key = (plural, ns, name)
        self.objects[key] = item
        spec = item["spec"]
        if plural == EDGE_DEVICE.plural:
            policy = (spec.get("policyRef") or {}).get("name", "")
            previous = self.device_ref.get((ns, name))
            if previous != policy:
                if previous is not None:
                    self.devices_by_policy.get((ns, previous), set()).discard(name)
                self.device_ref[(ns, name)] = policy
                self.devices_by_policy.setdefault((ns, policy), set()).add(name)
        elif plural == ADAPTATION_POLICY.plural:
            zoo = (spec.get("modelZooRef") or {}).get("name")
            if zoo:
                self.policies_by_zoo.setdefault((ns, zoo), set()).add(name)
            if (ns, name) not in self.pools:
                self._ensure_pool(ns, name, item)
                self._queue_devices(ns, name)
        elif plural == MODEL_ZOO.plural:
            for policy in self.policies_by_zoo.get((ns, name), ()):
                self.queue.add((ADAPTATION_POLICY.plural, ns, policy))
        self.queue.add(key)

    def _forget(self, plural: str, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        self.objects.pop((plural, ns, name), None)
        if plural == EDGE_DEVICE.plural:
            self.client_issued.pop((ns, name), None)
            ref = self.device_ref.pop((ns, name), None)
            if ref is not None:
                self.devices_by_policy.get((ns, ref), set()).discard(name)
            old = self.device_policy.pop((ns, name), None)
            pool = self.pools.get((ns, old)) if old is not None else None
            if pool is not None and pool.release(name):
                self.queue.add((ADAPTATION_POLICY.plural, ns, old), POLICY_DEBOUNCE_S)
        elif plural == ADAPTATION_POLICY.plural:
            self.pools.pop((ns, name), None)
            self.policy_generation.pop((ns, name), None)
            for (zoo_ns, _), members in self.policies_by_zoo.items():
                if zoo_ns == ns:
                    members.discard(name)
            self._queue_devices(ns, name)
        elif plural == MODEL_ZOO.plural:
            for policy in self.policies_by_zoo.get((ns, name), ()):
                self.queue.add((ADAPTATION_POLICY.plural, ns, policy))

    def _store_child(self, plural: str, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        self.children[(plural, meta.get("namespace", ""), meta.get("name", ""))] = slim(
            body, child=True
        )

    def _ensure_pool(self, ns: str, name: str, policy: Mapping[str, Any]) -> None:
        """A pool for the policy, seeded with the bindings its devices' statuses show."""
        pool = TrainerPool(Capacity.of(policy.get("spec") or {}))
        self.pools[(ns, name)] = pool
        for device_name in sorted(self.devices_by_policy.get((ns, name), ())):
            device = self.objects.get((EDGE_DEVICE.plural, ns, device_name))
            if device is None or (device.get("spec") or {}).get("suspend"):
                continue
            status = device.get("status") or {}
            if status.get("trainer"):
                edgedevice.resolve_binding(device, policy, pool)
                self.device_policy[(ns, device_name)] = name

    def _queue_devices(self, ns: str, policy: str) -> None:
        for device in tuple(self.devices_by_policy.get((ns, policy), ())):
            self.queue.add((EDGE_DEVICE.plural, ns, device))

    # ----------------------------------------------------------------- reconcile

    async def _reconcile(self, key: Hashable) -> None:
        plural = cast(Key, key)[0]
        started = time.monotonic()
        result = "error"
        try:
            await self._reconcile_key(cast(Key, key))
            result = "success"
        finally:
            metrics.RECONCILE_SECONDS.labels(plural, result).observe(time.monotonic() - started)
            metrics.QUEUE_DEPTH.set(len(self.queue))

    async def _reconcile_key(self, key: Key) -> None:
        plural, ns, name = key
        obj = self.objects.get((plural, ns, name))
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return  # gone or going: the garbage collector removes the children
        if plural == EDGE_DEVICE.plural:
            await self._reconcile_device(ns, name, obj)
        elif plural == ADAPTATION_POLICY.plural:
            await self._reconcile_policy(ns, name, obj)
        elif plural == MODEL_ZOO.plural:
            await self._reconcile_zoo(ns, name, obj)

    async def _reconcile_device(self, ns: str, name: str, device: Body) -> None:
        policy_name = (device["spec"].get("policyRef") or {}).get("name", "")
        old = self.device_policy.get((ns, name))
        old_pool = self.pools.get((ns, old)) if old is not None and old != policy_name else None
        if old_pool is not None and old_pool.release(name):
            self.queue.add((ADAPTATION_POLICY.plural, ns, old), POLICY_DEBOUNCE_S)
        self.device_policy[(ns, name)] = policy_name
        policy = self.objects.get((ADAPTATION_POLICY.plural, ns, policy_name))
        pool = self.pools.get((ns, policy_name)) if policy is not None else None
        before = (pool.trainer_of(name), pool.trainers_wanted) if pool else None
        binding = edgedevice.resolve_binding(device, policy, pool)
        if pool is not None and before != (pool.trainer_of(name), pool.trainers_wanted):
            self.queue.add((ADAPTATION_POLICY.plural, ns, policy_name), POLICY_DEBOUNCE_S)
        pod = self.children.get((POD.plural, ns, edgedevice.agent_pod_name(name)))
        observation = None
        if binding.trainer is not None:
            observation = self.observations.get((ns, binding.policy, binding.trainer))
        mutual = policy is not None and adaptationpolicy.mutual_tls(policy.get("spec") or {})
        client_tls = None
        client_secret = (SECRET.plural, ns, security.client_tls_secret_name(name))
        if mutual and self.ca is not None:
            observed = self.children.get(client_secret)
            issued = self.client_issued.get((ns, name))
            if observed is None and issued is not None:  # written, not seen back yet
                observed = security.client_tls_secret(Owner.of(EDGE_DEVICE, device), issued)
            client_tls = security.client_pair(observed, self.ca, name)
            self.client_issued[(ns, name)] = client_tls
        plan = edgedevice.decide(
            device,
            binding,
            pod=pod,
            token_secret=self.children.get((SECRET.plural, ns, edgedevice.token_secret_name(name))),
            policy_key=self.token_key(ns, policy_name) if policy is not None else None,
            ca_published=(CONFIG_MAP.plural, ns, security.ca_config_map_name(policy_name))
            in self.children,
            observation=observation,
            images=self.images,
            now=now_rfc3339(),
            now_ts=time.time(),
            mutual_tls=mutual,
            client_tls=client_tls,
            client_tls_published=client_secret in self.children,
        )
        await self._act(EDGE_DEVICE, device, plan)

    async def _reconcile_policy(self, ns: str, name: str, policy: Body) -> None:
        pool = self.pools.get((ns, name))
        if pool is None:
            self._ensure_pool(ns, name, policy)
            pool = self.pools[(ns, name)]
        generation = int(policy["metadata"].get("generation", 1))
        if self.policy_generation.get((ns, name)) != generation:
            # The spec changed (or this is the first look): capacity and selector may differ,
            # so every device of the policy is looked at again.
            self.policy_generation[(ns, name)] = generation
            pool.resize(Capacity.of(policy.get("spec") or {}))
            self._queue_devices(ns, name)
        zoo_name = (policy["spec"].get("modelZooRef") or {}).get("name")
        zoo = self.objects.get((MODEL_ZOO.plural, ns, zoo_name)) if zoo_name else None
        members = self.devices_by_policy.get((ns, name), set())
        tls = issued_ca = None
        if self.images.cert_issuer is not None:
            observed = self.children.get((SECRET.plural, ns, security.tls_secret_name(name)))
            issued_ca = security.issued_ca(observed)
        elif self.ca is not None:
            observed = self.children.get((SECRET.plural, ns, security.tls_secret_name(name)))
            issued = self.issued.get((ns, name))
            if observed is None and issued is not None:  # written, not seen back yet
                observed = security.tls_secret(Owner.of(ADAPTATION_POLICY, policy), issued, self.ca)
            hosts = security.trainer_hosts(name, ns, self.images.cluster_domain)
            tls = security.tls_pair(observed, self.ca, hosts)
            self.issued[(ns, name)] = tls
        trainer_pods = [
            p
            for i in range(max(pool.trainers_wanted, 1))
            if (p := self.children.get((POD.plural, ns, edgedevice.trainer_pod_name(name, i))))
        ]
        observations = [o for (n, p, _), o in self.observations.items() if (n, p) == (ns, name)]
        plan = adaptationpolicy.decide(
            policy,
            zoo=zoo,
            trainers_wanted=pool.trainers_wanted,
            devices_bound=pool.devices_bound,
            devices_unbound=max(0, len(members) - pool.devices_bound),
            statefulset=self.children.get(
                (STATEFUL_SET.plural, ns, adaptationpolicy.trainer_name(name))
            ),
            token_key=self.token_key(ns, name),
            new_key=secrets.token_hex(32).encode(),
            ca=self.ca,
            tls=tls,
            trainer_pods=trainer_pods,
            figures=observe.policy_figures(observations),
            images=self.images,
            now=now_rfc3339(),
            issued_ca=issued_ca,
        )
        await self._act(ADAPTATION_POLICY, policy, plan)

    async def _reconcile_zoo(self, ns: str, name: str, zoo: Body) -> None:
        plan = modelzoo.decide(
            zoo,
            pvc=self.children.get((PVC.plural, ns, modelzoo.store_name(name))),
            deployment_obs=self.children.get((DEPLOYMENT.plural, ns, modelzoo.gating_name(name))),
            images=self.images,
            now=now_rfc3339(),
        )
        await self._act(MODEL_ZOO, zoo, plan)

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
            observed = self.children.get((a.kind.plural, ns, a.name))
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
    """What of a trainer's observation its policy's status shows."""
    return (
        obs.reachable,
        obs.phase,
        sum(1 for v in obs.devices.values() if v.get("connected")),
        sum(1 for v in obs.devices.values() if v.get("agent_in_step")),
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


def _owner_key(meta: Mapping[str, Any]) -> Key | None:
    labels = meta.get("labels") or {}
    for label, plural in OWNER_LABELS:
        if label in labels:
            return (plural, meta.get("namespace", ""), labels[label])
    return None


def _collection(path: str, namespace: str | None) -> str:
    """The collection path in one namespace, or across all of them."""
    base, _, rest = path.partition("/namespaces/x/")
    return f"{base}/{rest}" if namespace is None else f"{base}/namespaces/{namespace}/{rest}"
