"""The controllers the operator runs, wired to one cache and one set of trainer bindings."""

from __future__ import annotations

from edgeadapt.controllers.adaptationpolicy import AdaptationPolicyController
from edgeadapt.controllers.base import Cache, Controller
from edgeadapt.controllers.binding import Bindings
from edgeadapt.controllers.edgedevice import EdgeDeviceController
from edgeadapt.controllers.modelzoo import ModelZooController

# In the order the start-up listing reads them: policies before the devices bound to them.
CONTROLLER_TYPES = (AdaptationPolicyController, ModelZooController, EdgeDeviceController)


def build(cache: Cache, bindings: Bindings) -> dict[str, Controller]:
    """Every kind's controller, by the plural of its kind, in listing order."""
    controllers: list[Controller] = [
        AdaptationPolicyController(cache, bindings),
        ModelZooController(cache),
        EdgeDeviceController(cache, bindings),
    ]
    return {c.kind.plural: c for c in controllers}
