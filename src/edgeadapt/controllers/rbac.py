"""The API access the operator needs: every controller's rules plus kopf's own.

The Helm chart's ClusterRole grants exactly ``required_rules()``; a test compares them.
"""

from __future__ import annotations

from edgeadapt.controllers import adaptationpolicy
from edgeadapt.controllers.common import Rule, rules
from edgeadapt.controllers.registry import CONTROLLER_TYPES

# kopf itself: it finds the CRDs it serves and posts Kubernetes events on transitions.
KOPF_RULES = rules(
    ("apiextensions.k8s.io", "customresourcedefinitions", "get list watch"),
    ("", "events", "create"),
)

# kopf serving named namespaces first lists the namespaces (it retries for about a minute and
# then assumes they exist if refused); cluster-wide it does not.
KOPF_NAMESPACED_RULES = rules(("", "namespaces", "list watch"))


def required_rules(*, cluster_wide: bool = True, cert_manager: bool = False) -> list[Rule]:
    """Union of all rules, one per (apiGroup, resource), verbs sorted."""
    merged: dict[tuple[str, str], set[str]] = {}
    for rule in (
        *KOPF_RULES,
        *(() if cluster_wide else KOPF_NAMESPACED_RULES),
        *(rule for controller in CONTROLLER_TYPES for rule in controller.rbac),
        *(adaptationpolicy.CERT_MANAGER_RULES if cert_manager else ()),
    ):
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                merged.setdefault((group, resource), set()).update(rule["verbs"])
    return [
        {"apiGroups": [group], "resources": [resource], "verbs": sorted(verbs)}
        for (group, resource), verbs in sorted(merged.items())
    ]
