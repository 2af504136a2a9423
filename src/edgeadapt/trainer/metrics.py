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
            "Model updates written to device streams, by kind (sparse, snapshot; RECL: switch to"
            " a cached expert, expert or retrained model sent)",
            ["kind"],
            registry=r,
        )
        self.stream_bytes = Counter(
            "edgeadapt_trainer_stream_bytes_total",
            "Bytes of gRPC messages on device streams, by direction (up, down)",
            ["direction"],
            registry=r,
        )
        self.phases_held = Counter(
            "edgeadapt_trainer_phases_held_total",
            "Training phases put off because the device's downlink budget was spent",
            registry=r,
        )
        self.update_parts = Counter(
            "edgeadapt_trainer_update_parts_total",
            "Parts written for updates split to be paced within a downlink budget",
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
            "Compute time of one device's AMS training phase (all its slices in a round)",
            buckets=(0.1, 0.3, 1, 2, 4, 8, 16, 32),
            registry=r,
        )
        self.resyncs = Counter(
            "edgeadapt_trainer_resync_requests_total",
            "Resync requests, by what was done (served, coalesced, deferred)",
            ["result"],
            registry=r,
        )
        self.thread_failures = Counter(
            "edgeadapt_trainer_thread_failures_total",
            "Unexpected exceptions caught in the worker, by stage (label, process, housekeeping,"
            " gating: the gating service could not be reached)",
            ["stage"],
            registry=r,
        )
        self.timestamps_clamped = Counter(
            "edgeadapt_trainer_timestamps_clamped_total",
            "Sample batches whose capture times lay ahead of the trainer's clock and were shifted",
            registry=r,
        )
        self.evictions = Counter(
            "edgeadapt_trainer_devices_evicted_total",
            "Idle devices written to disk and dropped from memory",
            registry=r,
        )
        self.queued_bytes = Gauge(
            "edgeadapt_trainer_queued_bytes",
            "Decoded frame bytes of the sample batches waiting for the worker",
            registry=r,
        )
        self.state_bytes = Histogram(
            "edgeadapt_trainer_state_bytes",
            "Size of one device's checkpoint on disk",
            buckets=(1e5, 1e6, 4e6, 1.6e7, 6.4e7, 2.56e8),
            registry=r,
        )
        for counter, values in (
            (self.batches, ("accepted", "rejected", "failed")),
            (self.updates, ("sparse", "snapshot", "switch", "expert", "retrained")),
            (self.stream_bytes, ("up", "down")),
            (self.resyncs, ("served", "coalesced", "deferred")),
            (self.thread_failures, ("label", "process", "housekeeping", "gating")),
        ):
            for value in values:
                counter.labels(value)  # exported from the start, at zero
        self.rounds = Counter(
            "edgeadapt_trainer_scheduler_rounds_total",
            "Scheduling rounds, by policy and how they ended (done: every job had its share;"
            " budget: jobs deferred; converged: no job gained any more and each had its share)",
            ["policy", "ended"],
            registry=r,
        )
        self.round_budget = Gauge(
            "edgeadapt_trainer_scheduler_round_budget_seconds",
            "Compute seconds the last round could spend",
            registry=r,
        )
        self.round_spent = Gauge(
            "edgeadapt_trainer_scheduler_round_spent_seconds",
            "Compute seconds the last round spent",
            registry=r,
        )
        self.jobs_deferred = Counter(
            "edgeadapt_trainer_scheduler_jobs_deferred_total",
            "Devices' jobs a round's budget did not reach (they go first in the next)",
            registry=r,
        )
        gpu = "(NVML; absent without an NVIDIA GPU)"
        self.gpu_utilization = Gauge(
            "edgeadapt_trainer_gpu_utilization_ratio", f"Whole-GPU utilisation {gpu}", registry=r
        )
        self.gpu_process_utilization = Gauge(
            "edgeadapt_trainer_gpu_process_utilization_ratio",
            f"SM utilisation of this trainer (self) and of every other process (others) {gpu}",
            ["scope"],
            registry=r,
        )
        self.gpu_memory_used = Gauge(
            "edgeadapt_trainer_gpu_memory_used_bytes", f"GPU memory in use {gpu}", registry=r
        )
        self.gpu_memory_total = Gauge(
            "edgeadapt_trainer_gpu_memory_total_bytes", f"GPU memory {gpu}", registry=r
        )
        self.gpu_memory_low = Gauge(
            "edgeadapt_trainer_gpu_memory_low",
            "1 while free GPU memory is below the trainer's headroom: no new devices are bound",
            registry=r,
        )
        self.gpu_share = Gauge(
            "edgeadapt_trainer_gpu_share_ratio",
            "Share of the GPU the scheduler plans with (other processes' load lowers it)",
            registry=r,
        )
        self.gpu_power = Gauge("edgeadapt_trainer_gpu_power_watts", f"GPU power {gpu}", registry=r)
        self.gpu_temperature = Gauge(
            "edgeadapt_trainer_gpu_temperature_celsius", f"GPU temperature {gpu}", registry=r
        )
        self.recl_seconds = Histogram(
            "edgeadapt_trainer_recl_window_seconds",
            "Time to end one device's RECL window (selection, safety check, switch, offer)",
            buckets=(0.1, 0.3, 1, 2, 4, 8, 16, 32),
            registry=r,
        )
        self.persist_seconds = Histogram(
            "edgeadapt_trainer_persist_seconds",
            "Time to write one device's checkpoint, or to log one update before it is sent",
            buckets=(0.005, 0.02, 0.05, 0.1, 0.3, 1, 3),
            registry=r,
        )
