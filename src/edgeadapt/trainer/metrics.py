"""The trainer's Prometheus metrics (``edgeadapt_trainer_*``), one registry per process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.devices_connected = Gauge(
            "edgeadapt_trainer_devices_connected", "Devices with an open stream", registry=r
        )
        self.devices_known = Gauge(
            "edgeadapt_trainer_devices_known", "Devices with state in this trainer", registry=r
        )
        self.batches = Counter(
            "edgeadapt_trainer_sample_batches_total",
            "Sample batches received, by result",
            ["result"],
            registry=r,
        )
        self.frames_labelled = Counter(
            "edgeadapt_trainer_frames_labelled_total", "Frames labelled by the teacher", registry=r
        )
        self.updates = Counter(
            "edgeadapt_trainer_updates_sent_total",
            "Model updates written to device streams, by kind (sparse, snapshot)",
            ["kind"],
            registry=r,
        )
        self.stream_bytes = Counter(
            "edgeadapt_trainer_stream_bytes_total",
            "Bytes of gRPC messages on device streams, by direction (up, down)",
            ["direction"],
            registry=r,
        )
        self.auth_failures = Counter(
            "edgeadapt_trainer_auth_failures_total",
            "Streams refused for a missing or wrong device token",
            registry=r,
        )
        self.stream_errors = Counter(
            "edgeadapt_trainer_stream_errors_total",
            "Streams ended by the trainer with an error status, by gRPC code",
            ["code"],
            registry=r,
        )
        self.queue = Gauge(
            "edgeadapt_trainer_queued_batches", "Sample batches waiting for the worker", registry=r
        )
        self.label_seconds = Histogram(
            "edgeadapt_trainer_label_seconds",
            "Teacher labelling time per worker cycle (all devices' pending batches)",
            buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10),
            registry=r,
        )
        self.train_seconds = Histogram(
            "edgeadapt_trainer_train_phase_seconds",
            "Time of one AMS training phase (K iterations) for one device",
            buckets=(0.1, 0.3, 1, 2, 4, 8, 16, 32),
            registry=r,
        )
        for counter, values in (
            (self.batches, ("accepted", "rejected")),
            (self.updates, ("sparse", "snapshot")),
            (self.stream_bytes, ("up", "down")),
        ):
            for value in values:
                counter.labels(value)  # exported from the start, at zero
        self.persist_seconds = Histogram(
            "edgeadapt_trainer_persist_seconds",
            "Time to write one device's state",
            buckets=(0.005, 0.02, 0.05, 0.1, 0.3, 1, 3),
            registry=r,
        )
