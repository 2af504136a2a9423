"""One controller per kind: its child builders, a pure ``decide`` (spec + observed children ->
desired children + status), and a ``Controller`` (``base.py``) that observes the cache for it.

Nothing here talks to the API server; ``edgeadapt.operator`` feeds the cache, runs the queue and
acts. Each kind's module declares the API access it needs in ``RBAC_RULES``; the Helm chart
grants exactly their union (a test checks it).
"""
