"""Group, version and kinds of the ``edgeadapt.io/v1alpha1`` API."""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "edgeadapt.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


@dataclass(frozen=True)
class Kind:
    """One custom resource kind: what kopf and the REST paths need to address it."""

    kind: str
    plural: str
    short_name: str

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    def path(self, namespace: str, name: str | None = None, *, status: bool = False) -> str:
        """REST path of the collection, one object, or one object's status subresource."""
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{self.plural}"
        if name is None:
            return base
        return f"{base}/{name}/status" if status else f"{base}/{name}"


EDGE_DEVICE = Kind("EdgeDevice", "edgedevices", "ed")
MODEL_ZOO = Kind("ModelZoo", "modelzoos", "mz")
ADAPTATION_POLICY = Kind("AdaptationPolicy", "adaptationpolicies", "ap")
KINDS = (EDGE_DEVICE, MODEL_ZOO, ADAPTATION_POLICY)
