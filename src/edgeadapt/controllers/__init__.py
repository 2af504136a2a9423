"""Per-kind controllers as pure functions: spec + observed children -> desired children + status.

Nothing here talks to the API server; ``edgeadapt.operator`` observes, calls these, and acts.
Each kind's module declares the API access it needs in ``RBAC_RULES``; the Helm chart grants
exactly their union (a test checks it).
"""
