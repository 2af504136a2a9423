"""The agent's side of the adaptation stream: connect, upload, apply, reconnect.

The link runs on its own thread so that inference never waits for the network. It keeps sealed
sample batches in a bounded queue until the trainer acknowledges them (the oldest is dropped, and
counted, when the queue is full), so batches taken while the trainer is unreachable are uploaded
after the link comes back. A lost stream is retried with exponential backoff and jitter; a
refused token or an unsupported student is retried too, at the longest backoff, since an operator
may fix either without touching the device.
"""

from __future__ import annotations

import collections
import enum
import logging
import queue
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from edgeadapt._proto.stream.v1 import stream_pb2 as pb
from edgeadapt._proto.stream.v1 import stream_pb2_grpc as pb_grpc
from edgeadapt.adapt.ams import EdgeModel
from edgeadapt.adapt.update import UpdateError, parameter_vector
from edgeadapt.edge_agent.experts import ExpertCache
from edgeadapt.stream.auth import call_metadata
from edgeadapt.stream.messages import (
    CHANNEL_OPTIONS,
    REJECTED_BATCH_KEY,
    UpdateJoiner,
    update_bytes,
    wire_size,
)

log = logging.getLogger(__name__)


class LinkState(enum.StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # waiting to retry
    REFUSED = "refused"  # the trainer refused this device (token, student); retrying slowly
    STOPPED = "stopped"


@dataclass(frozen=True)
class EncodedBatch:
    seq: int
    data: bytes
    timestamps: list[float]
    width: int
    height: int
    model_version: int


@dataclass
class LinkConfig:
    target: str
    device_id: str
    token: str
    credentials: grpc.ChannelCredentials | None  # None: plaintext (tests, loopback only)
    register: pb.Register
    max_pending: int = 60
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    server_name: str | None = None  # TLS name override
    token_file: Path | None = None  # read again on every connect (a re-minted token is used)
    experts: ExpertCache | None = None  # recently run zoo experts (RECL switches)

    def current_token(self) -> str:
        if self.token_file is None:
            return self.token
        try:
            return self.token_file.read_text().strip()
        except OSError:
            return self.token


def open_channel(cfg: LinkConfig) -> grpc.Channel:
    """A channel to the trainer with the stream's options (TLS unless ``credentials`` is None)."""
    options = list(CHANNEL_OPTIONS)
    if cfg.server_name:
        options.append(("grpc.ssl_target_name_override", cfg.server_name))
    if cfg.credentials is None:
        return grpc.insecure_channel(cfg.target, options=options)
    return grpc.secure_channel(cfg.target, cfg.credentials, options=options)


class LinkEvents:
    """Callbacks into the agent; every method may be called from the link thread."""

    def settings(self, settings: pb.Settings) -> None: ...

    def state(self, state: LinkState) -> None: ...

    def bytes(self, up: int, down: int) -> None: ...

    def update(self, applied: bool, reason: str) -> None: ...

    def batch(self, result: str) -> None: ...

    def failure(self, thread: str, error: BaseException) -> None: ...


_DONE = object()


class Link(threading.Thread):
    def __init__(self, config: LinkConfig, edge: EdgeModel, events: LinkEvents) -> None:
        super().__init__(name="link", daemon=True)
        self.cfg = config
        self.edge = edge
        self.events = events
        self.state = LinkState.DISCONNECTED
        self.pending: collections.deque[EncodedBatch] = collections.deque()
        self._pending_lock = threading.Lock()
        self._out: queue.Queue[object] | None = None
        self._stop_event = threading.Event()
        self._call: Any = None
        self._welcomed = threading.Event()
        self._joiner = UpdateJoiner()
        self.connects = 0
        self.dropped = 0
        self.failures = 0  # sessions ended by an unexpected exception
        self.last_error = ""
        self.backoff = config.backoff_initial

    # -- from the agent -----------------------------------------------------------------
    def enqueue(self, batch: EncodedBatch) -> None:
        # Callbacks run after the lock is released: they may ask for pending_count().
        with self._pending_lock:
            dropped = len(self.pending) >= self.cfg.max_pending
            if dropped:
                self.pending.popleft()
                self.dropped += 1
            self.pending.append(batch)
            out = self._out if self._welcomed.is_set() else None
        if dropped:
            self.events.batch("dropped")
        if out is not None:
            self._send(out, pb.AgentMessage(samples=self._samples(batch)))

    def pending_count(self) -> int:
        with self._pending_lock:
            return len(self.pending)

    def stop(self, drain: float = 0.0) -> None:
        """Stop the link; first wait up to ``drain`` s for pending batches to be acknowledged."""
        deadline = time.monotonic() + drain
        # Offline, the wait also covers a reconnect: a trainer that is back within the drain
        # timeout still receives the last batches.
        while drain and self.pending_count() and time.monotonic() < deadline:
            if self.state in (LinkState.REFUSED, LinkState.STOPPED) or not self.is_alive():
                break
            time.sleep(0.05)
        self._stop_event.set()
        out, call = self._out, self._call
        if out is not None:
            out.put(_DONE)
        if call is not None:
            call.cancel()

    # -- the thread ---------------------------------------------------------------------
    def _set_state(self, state: LinkState) -> None:
        if state != self.state:
            self.state = state
            self.events.state(state)

    def _samples(self, b: EncodedBatch) -> pb.SampleBatch:
        return pb.SampleBatch(
            seq=b.seq,
            codec=pb.CODEC_H264,
            data=b.data,
            timestamps=b.timestamps,
            width=b.width,
            height=b.height,
            model_version=b.model_version,
        )

    def _send(self, out: queue.Queue[object], message: pb.AgentMessage) -> None:
        out.put(message)

    def _requests(self, out: queue.Queue[object]) -> Iterator[pb.AgentMessage]:
        while True:
            item = out.get()
            if item is _DONE:
                return
            assert isinstance(item, pb.AgentMessage)
            self.events.bytes(wire_size(item), 0)
            yield item

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                refused = self._session()
            except Exception as exc:  # a bug must cost one stream, never the link
                log.exception("link session failed", extra={"device": self.cfg.device_id})
                self.failures += 1
                self.last_error = f"internal error: {exc!r}"
                self.events.failure("link", exc)
                refused = False
                if self.state != LinkState.REFUSED:
                    self._set_state(LinkState.DISCONNECTED)
            if self._stop_event.is_set():
                break
            delay = self.cfg.backoff_max if refused else self.backoff
            delay *= random.uniform(0.8, 1.2)
            log.info(
                "trainer unreachable; retrying",
                extra={
                    "device": self.cfg.device_id,
                    "in_s": round(delay, 2),
                    "error": self.last_error,
                },
            )
            self._stop_event.wait(delay)
            self.backoff = min(self.backoff * 2, self.cfg.backoff_max)
        self._set_state(LinkState.STOPPED)

    def _session(self) -> bool:
        """One stream, from connect to its end; True if the trainer refused the device."""
        if self.state != LinkState.REFUSED:  # stays "refused" until a stream is accepted
            self._set_state(LinkState.CONNECTING)
        out: queue.Queue[object] = queue.Queue()
        self._welcomed.clear()
        self._joiner.reset()  # parts of an update never span two streams
        register = pb.Register()
        register.CopyFrom(self.cfg.register)
        register.model_version = self.edge.version
        register.model_checksum = self.edge.checksum()
        if self.cfg.experts is not None:
            register.expert_cache_size = self.cfg.experts.capacity
            del register.cached_experts[:]
            for expert_id, checksum in self.cfg.experts.entries():
                register.cached_experts.add(id=expert_id, model_checksum=checksum)
        out.put(pb.AgentMessage(register=register))
        self._out = out
        with open_channel(self.cfg) as channel:
            stub = pb_grpc.AdaptationServiceStub(channel)  # type: ignore[no-untyped-call]
            call = stub.Connect(
                self._requests(out),
                metadata=call_metadata(self.cfg.device_id, self.cfg.current_token()),
            )
            self._call = call
            try:
                for message in call:
                    self.events.bytes(0, wire_size(message))
                    self._handle(out, message)
                self.last_error = "stream closed by the trainer"
                return False
            except grpc.RpcError as exc:
                return self._failed(exc)
            finally:
                out.put(_DONE)
                self._out = None
                self._call = None
                self._welcomed.clear()
                if not self._stop_event.is_set() and self.state != LinkState.REFUSED:
                    self._set_state(LinkState.DISCONNECTED)

    def _failed(self, exc: grpc.RpcError) -> bool:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        self.last_error = f"{code.name}: {details}"
        if self._stop_event.is_set():
            return False
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
            seq = next((str(m.value) for m in trailing or () if m.key == REJECTED_BATCH_KEY), None)
            if seq is not None:
                with self._pending_lock:
                    self.pending = collections.deque(b for b in self.pending if str(b.seq) != seq)
                self.events.batch("rejected")
            log.error(
                "trainer rejected a message: %s", details, extra={"device": self.cfg.device_id}
            )
            return False
        if code in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.FAILED_PRECONDITION,
        ):
            self._set_state(LinkState.REFUSED)
            log.error(
                "trainer refused the device: %s", details, extra={"device": self.cfg.device_id}
            )
            return True
        return False

    def _handle(self, out: queue.Queue[object], message: pb.TrainerMessage) -> None:
        kind = message.WhichOneof("body")
        if kind == "welcome":
            w = message.welcome
            self.connects += 1
            self.backoff = self.cfg.backoff_initial
            self._set_state(LinkState.CONNECTED)
            self.events.settings(w.settings)
            log.info(
                "connected",
                extra={
                    "device": self.cfg.device_id,
                    "trainer_version": w.model_version,
                    "agent_version": self.edge.version,
                    "pending_batches": self.pending_count(),
                },
            )
            with self._pending_lock:
                backlog = list(self.pending)
                self._welcomed.set()
            for b in backlog:
                self._send(out, pb.AgentMessage(samples=self._samples(b)))
        elif kind == "update":
            self._apply(out, message.update)
        elif kind == "switch_expert":
            self._switch(out, message.switch_expert)
        elif kind == "settings":
            self.events.settings(message.settings)
        elif kind == "batch_ack":
            # Counted once, when the batch leaves the queue: a batch resent after a reconnect
            # may be acknowledged twice, and one the full queue dropped may still be answered.
            with self._pending_lock:
                before = len(self.pending)
                self.pending = collections.deque(
                    b for b in self.pending if b.seq != message.batch_ack.seq
                )
                acked = len(self.pending) < before
            if acked:
                self.events.batch("acked")

    def _apply(self, out: queue.Queue[object], message: pb.ModelUpdate) -> None:
        update = message
        try:
            # A split update (a budgeted link) is applied once its last part is here.
            joined = self._joiner.add(message)
            if joined is None:
                return
            update = joined
            data = update_bytes(update)
            applied = self.edge.apply(data, expected_checksum=update.model_checksum)
        except UpdateError as exc:
            self.edge.rejected += 1
            self.edge.last_error = str(exc)
            applied = False
        except Exception as exc:  # never lose the link over one update: reject and resync
            log.exception("update could not be applied", extra={"device": self.cfg.device_id})
            self.edge.rejected += 1
            self.edge.last_error = f"internal error: {exc!r}"
            self.events.failure("link", exc)
            applied = False
        if applied and update.expert_id and self.cfg.experts is not None:
            # The model is now that zoo expert: keep it, so switching back costs a message.
            self.cfg.experts.put(update.expert_id, parameter_vector(self.edge.active))
        reason = "" if applied else self.edge.last_error
        self._answer(out, applied, reason)
        if applied:
            log.info(
                "update applied",
                extra={
                    "device": self.cfg.device_id,
                    "version": self.edge.version,
                    "bytes": len(update.mask) + len(update.values),
                    "snapshot": update.snapshot,
                },
            )
        else:
            log.warning(
                "update rejected: %s",
                reason,
                extra={
                    "device": self.cfg.device_id,
                    "version": update.version,
                    "base_version": update.base_version,
                },
            )
            self._resync(out)

    def _answer(self, out: queue.Queue[object], applied: bool, reason: str) -> None:
        self.events.update(applied, reason)
        self._send(
            out,
            pb.AgentMessage(
                ack=pb.UpdateAck(version=self.edge.version, applied=applied, reason=reason)
            ),
        )

    def _resync(self, out: queue.Queue[object]) -> None:
        self._send(
            out,
            pb.AgentMessage(
                resync=pb.ResyncRequest(
                    have_version=self.edge.version, have_checksum=self.edge.checksum()
                )
            ),
        )

    def _switch(self, out: queue.Queue[object], message: pb.SwitchExpert) -> None:
        """Run a cached expert; a miss or a mismatch is rejected and answered with a resync."""
        cache = self.cfg.experts
        params = None
        if cache is not None:
            params = cache.get(message.expert_id, message.model_checksum)
        if params is None:
            self.edge.rejected += 1
            self.edge.last_error = f"expert {message.expert_id!r} is not in the expert cache"
            applied = False
        else:
            applied = self.edge.switch(
                params, message.version, message.base_version, message.model_checksum
            )
        reason = "" if applied else self.edge.last_error
        self._answer(out, applied, reason)
        if applied:
            log.info(
                "switched to a cached expert",
                extra={
                    "device": self.cfg.device_id,
                    "expert": message.expert_id,
                    "version": self.edge.version,
                },
            )
        else:
            log.warning("switch rejected: %s", reason, extra={"device": self.cfg.device_id})
            self._resync(out)
