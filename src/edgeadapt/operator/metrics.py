"""The operator's Prometheus metrics (``edgeadapt_operator_*``); no per-object labels."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILE_SECONDS = Histogram(
    "edgeadapt_operator_reconcile_duration_seconds",
    "Time one reconcile took. kind: edgedevices, modelzoos, adaptationpolicies; "
    "result: success, error.",
    ["kind", "result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_DEPTH = Gauge("edgeadapt_operator_queue_depth", "Keys waiting for or under reconciliation.")
API_REQUESTS = Counter(
    "edgeadapt_operator_api_requests_total",
    "Requests the operator sent to the API server (its own client; kopf's watches excluded). "
    "method: GET, POST, PATCH, DELETE.",
    ["method"],
)


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (all interfaces)."""
    start_http_server(port)
