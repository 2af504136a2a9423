"""The kopf operator: wiring only (handlers.py), the reconcile loop (manager.py), API access."""
