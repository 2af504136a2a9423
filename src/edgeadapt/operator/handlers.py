"""kopf wiring: login, settings, watch-event handlers feeding the manager, probes, shutdown.

Run with ``kopf run -m edgeadapt.operator.handlers --standalone --all-namespaces`` or
``python -m edgeadapt.operator``. Only event handlers are registered, so kopf keeps no state on
the objects: no finalizers, no annotations, no status fields of its own.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import kopf

from edgeadapt.api import keys
from edgeadapt.api.v1alpha1 import GROUP, VERSION
from edgeadapt.controllers.common import Images, IssuerRef
from edgeadapt.controllers.registry import CONTROLLER_TYPES
from edgeadapt.operator import metrics, poller
from edgeadapt.operator.authority import operator_namespace
from edgeadapt.operator.kube import Kube, login
from edgeadapt.operator.manager import Manager

log = logging.getLogger(__name__)


def images_from_env() -> Images:
    default = Images()
    return Images(
        trainer=os.environ.get("EDGEADAPT_TRAINER_IMAGE", default.trainer),
        gating=os.environ.get("EDGEADAPT_GATING_IMAGE", default.gating),
        edge_agent=os.environ.get("EDGEADAPT_EDGE_AGENT_IMAGE", default.edge_agent),
        pull_policy=os.environ.get("EDGEADAPT_IMAGE_PULL_POLICY", default.pull_policy),
        cluster_domain=os.environ.get("EDGEADAPT_CLUSTER_DOMAIN", default.cluster_domain),
        agent_state_path=os.environ.get("EDGEADAPT_AGENT_STATE_PATH", default.agent_state_path),
        cert_issuer=IssuerRef.parse(issuer)
        if (issuer := os.environ.get("EDGEADAPT_CERT_ISSUER"))
        else None,
    )


def manager(memo: kopf.Memo) -> Manager:
    """The operator's one manager, kept in kopf's ``memo`` from startup to cleanup."""
    mgr = getattr(memo, "manager", None)
    if not isinstance(mgr, Manager):  # startup handlers finish before kopf starts watching
        raise RuntimeError("the operator has not started")
    return mgr


@kopf.on.login()
def _login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    return login(settings)


@kopf.on.startup()
async def _startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.WARNING
    if not log.isEnabledFor(logging.DEBUG):
        # kopf logs every handled watch event at INFO; with thousands of objects that costs more
        # CPU than the reconciling. Failures still show (WARNING and above).
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    namespaces = [n for n in os.environ.get("EDGEADAPT_WATCH_NAMESPACES", "").split(",") if n]
    own = os.environ.get("EDGEADAPT_OPERATOR_NAMESPACE") or (
        namespaces[0] if namespaces else operator_namespace()
    )
    images = dataclasses.replace(
        images_from_env(),
        network_policy=os.environ.get("EDGEADAPT_NETWORK_POLICY", "") == "true",
        operator_namespace=own,
        metrics_namespace=os.environ.get("EDGEADAPT_METRICS_NAMESPACE", ""),
    )
    mgr = Manager(
        Kube(login(settings)),
        images=images,
        workers=int(os.environ.get("EDGEADAPT_RECONCILE_WORKERS", "8")),
        operator_namespace=own,
        status_url=poller.url_from_env(images.cluster_domain),
        status_interval=float(
            os.environ.get("EDGEADAPT_STATUS_INTERVAL", str(poller.STATUS_INTERVAL_S))
        ),
    )
    metrics_port = int(os.environ.get("EDGEADAPT_METRICS_PORT", "0"))
    if metrics_port:
        metrics.serve(metrics_port)
    await mgr.prime(namespaces or None)
    mgr.start()
    memo.manager = mgr
    log.info(
        "edgeadapt operator started: %d objects, %d children",
        len(mgr.cache.objects),
        len(mgr.cache.children),
    )


@kopf.on.cleanup()
async def _cleanup(memo: kopf.Memo, **_: Any) -> None:
    mgr = getattr(memo, "manager", None)
    if isinstance(mgr, Manager):
        await mgr.stop()
        await mgr.kube.close()
        memo.manager = None


@kopf.on.probe(id="queue")
def _queue_depth(memo: kopf.Memo, **_: Any) -> int:
    mgr = getattr(memo, "manager", None)
    return len(mgr.queue) if isinstance(mgr, Manager) else -1


def _register() -> None:
    for kind in (controller.kind for controller in CONTROLLER_TYPES):

        def on_custom(
            type: str | None,
            body: kopf.Body,
            memo: kopf.Memo,
            _plural: str = kind.plural,
            **_: Any,
        ) -> None:
            manager(memo).on_event(_plural, type, body)

        kopf.on.event(GROUP, VERSION, kind.plural, id=f"watch-{kind.plural}")(on_custom)

    for child in images_from_env().child_kinds():
        group, _, version = child.api_version.rpartition("/")

        def on_child(
            type: str | None,
            body: kopf.Body,
            memo: kopf.Memo,
            _plural: str = child.plural,
            **_: Any,
        ) -> None:
            manager(memo).on_event(_plural, type, body)

        kopf.on.event(
            group,
            version,
            child.plural,
            id=f"watch-{child.plural}",
            labels={keys.MANAGED_BY: keys.MANAGED_BY_VALUE},
        )(on_child)


_register()
