"""Bringing a device that is behind the trainer back to its version.

A device is behind when it reconnects after missing updates, when it rejected an update, or when
what it runs does not match what the trainer sent (checksums differ). It gets the unacknowledged
updates it missed, when the chain reaches back to exactly the version it runs, or else one
float32 snapshot of the committed model. At most one snapshot per device is in flight (a request
while one is on its way is coalesced), and resync requests are served at most once per
``interval``: a request inside the interval is kept, the latest one replacing the earlier, and
answered by the worker once the interval has passed, so a flood of requests costs one answer per
interval.
"""

from __future__ import annotations

import itertools
import logging

import torch

from edgeadapt._proto.stream.v1 import stream_pb2 as pb
from edgeadapt.adapt.update import encode_update, snapshot_update
from edgeadapt.stream.messages import update_message
from edgeadapt.trainer.device import Device
from edgeadapt.trainer.metrics import TrainerMetrics

log = logging.getLogger(__name__)


class CatchUp:
    def __init__(self, base: torch.Tensor, metrics: TrainerMetrics, interval: float) -> None:
        self.base = base  # the pretrained student's parameters (a device without a session)
        self.metrics = metrics
        self.interval = interval

    def admit(self, dev: Device, have: int, have_checksum: int, now: float) -> bool:
        """Whether a resync request may be served now; if not, it is kept for :meth:`due`."""
        with dev.chain_lock:
            if now - dev.last_resync < self.interval:
                dev.deferred_resync = (have, have_checksum)
                self.metrics.resyncs.labels("deferred").inc()
                return False
            dev.last_resync = now
            dev.deferred_resync = None
        return True

    def due(self, dev: Device, now: float) -> tuple[int, int] | None:
        """The request kept by :meth:`admit`, once its interval has passed (then forgotten)."""
        with dev.chain_lock:
            deferred = dev.deferred_resync
            if deferred is None or now - dev.last_resync < self.interval:
                return None
            dev.deferred_resync = None
            dev.last_resync = now
        return deferred

    def reset(self, dev: Device, now: float) -> None:
        """A new stream: what was queued on the old one is gone."""
        with dev.chain_lock:
            dev.snapshot_in_flight = None
            dev.deferred_resync = None
            dev.last_resync = now

    def serve(self, dev: Device, have: int, have_checksum: int) -> list[pb.TrainerMessage]:
        """Caller holds ``dev.lock``: the chain of missed updates, a snapshot, or nothing."""
        if have == dev.version and have_checksum == dev.checksum:
            return []
        with dev.chain_lock:
            links = [k for k in dev.chain if k.version > have]
            if dev.snapshot_in_flight == dev.version:
                # The device will be at our version once it applies the snapshot on its way.
                self.metrics.resyncs.labels("coalesced").inc()
                return []
        contiguous = all(a.version == b.base_version for a, b in itertools.pairwise(links))
        if (
            links
            and links[0].base_version == have
            and links[0].base_checksum == have_checksum
            and links[-1].version == dev.version
            and contiguous
        ):
            self.metrics.updates.labels("sparse").inc(len(links))
            self.metrics.resyncs.labels("served").inc()
            return [pb.TrainerMessage(update=update_message(k.data, k.checksum)) for k in links]
        cache = dev.snapshot_cache
        if cache is None or cache[0] != dev.version:
            snapshot = snapshot_update(dev.committed(self.base), dev.version)
            cache = (dev.version, encode_update(snapshot))
        with dev.chain_lock:
            dev.snapshot_cache = cache
            dev.snapshot_in_flight = dev.version
        dev.snapshots_sent += 1
        self.metrics.updates.labels("snapshot").inc()
        self.metrics.resyncs.labels("served").inc()
        log.info(
            "sending a snapshot",
            extra={"device": dev.device_id, "have": have, "version": dev.version},
        )
        return [pb.TrainerMessage(update=update_message(cache[1], dev.checksum, snapshot=True))]
