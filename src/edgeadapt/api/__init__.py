"""The ``edgeadapt.io/v1alpha1`` API as Python sees it: kinds, condition types and reasons, keys.

The CRD YAML in ``crds/`` is the API's single source; this package names its parts for code.
"""

from edgeadapt.api.v1alpha1 import (
    ADAPTATION_POLICY,
    EDGE_DEVICE,
    GROUP,
    KINDS,
    MODEL_ZOO,
    VERSION,
    Kind,
)

__all__ = ["ADAPTATION_POLICY", "EDGE_DEVICE", "GROUP", "KINDS", "MODEL_ZOO", "VERSION", "Kind"]
