"""The trainer's gRPC server: a thin asyncio servicer over the device hub, plus health and HTTP.

Each device stream runs as one handler coroutine: it checks the token, reads Register, attaches
the device to the hub and then relays in both directions. A reader task validates and decodes
every sample batch before the hub sees it; an undecodable batch ends only that device's stream
with INVALID_ARGUMENT (and the batch's seq in the trailing metadata), never the trainer. The
hub's worker thread hands messages back through the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2_grpc

from edgeadapt import serving
from edgeadapt._proto.stream.v1 import stream_pb2 as pb
from edgeadapt._proto.stream.v1 import stream_pb2_grpc as pb_grpc
from edgeadapt.serving import bind, set_health
from edgeadapt.stream.auth import from_metadata, valid_device_id, verify_token
from edgeadapt.stream.messages import (
    REJECTED_BATCH_KEY,
    SERVER_OPTIONS,
    split_update,
    wire_size,
)
from edgeadapt.trainer.budget import LinkBudget, TokenBucket, pacing_bucket, pacing_part_bytes
from edgeadapt.trainer.device import Batch, BatchLimits
from edgeadapt.trainer.hub import CloseReason, Hub, PreconditionError
from edgeadapt.video.codec import CodecError, decode_h264_bounded

log = logging.getLogger(__name__)

_EOF: object = getattr(grpc.aio, "EOF")  # noqa: B009 - not in the type stubs
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AdaptationService"].full_name
REGISTER_TIMEOUT = 10.0
DRAIN_TIMEOUT = 60.0  # after the agent half-closes, the longest wait for its last batches
MAX_FRAME_PIXELS = 4096 * 4096
CLOCK_TOLERANCE = 1.0  # seconds a capture time may lie ahead of the trainer's clock
OUT_QUEUE = 64  # messages waiting to be written on one stream; beyond it the stream ends
HUB_THREADS = 8  # attach, resync (may wait for a training phase) and ack
DECODE_THREADS = 2
SUBMIT_RETRY = 0.05  # seconds between tries to queue a batch while the hub's queue is full
MODEL_CHUNK = 256 * 1024  # bytes per ModelChunk of the starting model
MAX_EXPERT_CACHE = 64  # experts an agent may say it caches (EdgeDevice spec.expertCache maximum)
REFUSALS_KEPT = 1024  # device ids whose last refused call /status remembers


@dataclass(frozen=True)
class _End:
    """Ends a stream from the writer side: an error status, or a clean close if code is None."""

    code: grpc.StatusCode | None
    details: str = ""
    trailing: tuple[tuple[str, str], ...] = ()


class BatchRejectedError(ValueError):
    pass


def decode_batch(
    msg: pb.SampleBatch, limits: BatchLimits, now: float | None = None
) -> tuple[Batch, bool]:
    """Validate and decode an uploaded batch (and whether its times were clamped).

    :class:`BatchRejectedError` says what is wrong with a batch that is refused.

    Everything the batch declares is checked before a frame is decoded, and the stream is
    decoded frame by frame against those declarations and the trainer's limits, so a small
    upload that would decode to gigabytes is refused after at most one frame too many. Frames
    come out at the model's input size. Capture times ahead of the trainer's clock (a device
    whose clock runs fast, or lies) are shifted back so the last is ``now``: the spacing is
    kept, and no timestamp from the future can hold back the device's later frames.
    """
    if msg.codec != pb.CODEC_H264:
        raise BatchRejectedError(f"codec {pb.Codec.Name(msg.codec)} is not supported")
    n = len(msg.timestamps)
    if not 0 < n <= limits.max_frames:
        raise BatchRejectedError(f"{n} timestamps; a batch holds 1 to {limits.max_frames} frames")
    if not 0 < msg.width * msg.height <= MAX_FRAME_PIXELS or msg.width % 2 or msg.height % 2:
        raise BatchRejectedError(f"frame size {msg.width}x{msg.height} is out of range")
    if len(msg.data) > limits.max_bytes:
        raise BatchRejectedError(f"{len(msg.data)} bytes; a batch holds at most {limits.max_bytes}")
    ts = np.asarray(msg.timestamps, dtype=np.float64)
    if not np.isfinite(ts).all() or (np.diff(ts) < 0).any() or ts[0] < 0:
        raise BatchRejectedError("timestamps must be finite, non-negative and non-decreasing")
    try:
        frames = decode_h264_bounded(
            msg.data,
            max_frames=n,
            width=msg.width,
            height=msg.height,
            max_decoded_bytes=limits.max_decoded_bytes,
            resize_to=limits.input_size,
        )
    except CodecError as exc:
        raise BatchRejectedError(str(exc)) from exc
    if len(frames) != n:
        raise BatchRejectedError(f"{len(frames)} frames decoded, {n} timestamps sent")
    now = time.time() if now is None else now
    clamped = ts[-1] > now + CLOCK_TOLERANCE
    if clamped:
        ts = ts - (ts[-1] - now)
    return Batch(seq=msg.seq, images=np.stack(frames), times=[float(t) for t in ts]), clamped


@dataclass
class _Pacer:
    """A budgeted stream's writer: its token bucket and the largest part an update goes in."""

    bucket: TokenBucket
    part_bytes: int


_CLOSE_CODES = {
    CloseReason.REPLACED: grpc.StatusCode.ABORTED,
    CloseReason.SHUTDOWN: grpc.StatusCode.UNAVAILABLE,
}


class _Outbox:
    """One stream's bounded queue of messages to write, fed from any thread.

    A device that stops reading (its HTTP/2 window stays full) would otherwise make the trainer
    hold every update and snapshot meant for it; past ``OUT_QUEUE`` messages its stream ends.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, on_overflow: Any) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[pb.TrainerMessage | _End] = asyncio.Queue(OUT_QUEUE)
        self.on_overflow = on_overflow
        self.overflowed = False
        self.ending = False  # an _End is queued: a paced write in progress stops early

    def put(self, item: pb.TrainerMessage | _End) -> None:
        """On the event loop."""
        if self.overflowed:
            return
        if isinstance(item, _End):
            self.ending = True
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True
            self.on_overflow()

    def put_threadsafe(self, item: pb.TrainerMessage | _End) -> None:
        self.loop.call_soon_threadsafe(self.put, item)


class AdaptationServicer(pb_grpc.AdaptationServiceServicer):
    def __init__(
        self,
        hub: Hub,
        token_secret: bytes | None,
        starting_model: Path | None = None,
        client_identity: bool = False,
    ) -> None:
        self.hub = hub
        self.secret = token_secret
        # Mutual TLS: the client certificate's common name must be the token's device.
        self.client_identity = client_identity
        self.starting_model = starting_model
        self._starting: tuple[bytes, str] | None = None
        # device id -> (reason, wall time) of its last refused call, newest last; bounded, since
        # the ids come from callers that could not authenticate.
        self.refused: collections.OrderedDict[str, tuple[str, float]] = collections.OrderedDict()
        self.metrics = hub.metrics
        # Own pools: decoding must not wait behind calls that wait for a training phase, and
        # neither may take the threads the event loop's default executor lends elsewhere.
        self.hub_pool = ThreadPoolExecutor(HUB_THREADS, thread_name_prefix="hub-call")
        self.decode_pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")

    def shutdown(self) -> None:
        self.hub_pool.shutdown(wait=False, cancel_futures=True)
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    async def _fail(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        code: grpc.StatusCode,
        details: str,
        trailing: tuple[tuple[str, str], ...] = (),
    ) -> NoReturn:
        self.metrics.stream_errors.labels(code.name).inc()
        await context.abort(code, details, trailing_metadata=trailing)
        raise AssertionError("abort returned")  # pragma: no cover - abort always raises

    async def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The caller's device id; a call without the device's valid token is aborted."""
        device_id, token = from_metadata(context.invocation_metadata())
        if self.secret is not None and not verify_token(self.secret, device_id, token):
            self.metrics.auth_failures.inc()
            log.warning("refused a call: bad token", extra={"device": device_id})
            self._refuse(device_id, "Unauthenticated")
            await self._fail(
                context, grpc.StatusCode.UNAUTHENTICATED, "missing or invalid device token"
            )
        if self.client_identity:
            names = list(context.auth_context().get("x509_common_name") or ())
            name = names[0].decode(errors="replace") if names else ""
            if name != device_id:
                self.metrics.auth_failures.inc()
                log.warning(
                    "refused a call: client certificate for another device",
                    extra={"device": device_id, "certificate": name},
                )
                self._refuse(device_id, "ClientCertificateMismatch")
                await self._fail(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"client certificate is for {name!r}, the token for {device_id!r}",
                )
        self.refused.pop(device_id, None)
        return device_id

    def _refuse(self, device_id: str, reason: str) -> None:
        if valid_device_id(device_id):
            self.refused[device_id] = (reason, time.time())
            self.refused.move_to_end(device_id)
            while len(self.refused) > REFUSALS_KEPT:
                self.refused.popitem(last=False)

    def refusals(self) -> dict[str, dict[str, Any]]:
        """Devices whose last call was refused: reason and time, for ``/status``."""
        return {d: {"reason": r, "time": t} for d, (r, t) in list(self.refused.items())}

    async def GetStartingModel(  # noqa: N802 - the generated servicer's name
        self,
        request: pb.StartingModelRequest,
        context: grpc.aio.ServicerContext[pb.StartingModelRequest, pb.ModelChunk],
    ) -> None:
        device_id = await self._authenticate(context)
        if self.secret is not None and request.device_id != device_id:
            await self._fail(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"token is for device {device_id!r}, the request names {request.device_id!r}",
            )
        if self.starting_model is None:
            await self._fail(context, grpc.StatusCode.UNAVAILABLE, "no starting model to serve")
        if self._starting is None:
            data = await asyncio.get_running_loop().run_in_executor(
                self.hub_pool, self.starting_model.read_bytes
            )
            self._starting = (data, hashlib.sha256(data).hexdigest())
        data, digest = self._starting
        if request.have_sha256 == digest:
            await context.write(pb.ModelChunk(offset=0, total_size=len(data), sha256=digest))
            return
        for offset in range(0, len(data), MODEL_CHUNK):
            chunk = pb.ModelChunk(
                offset=offset,
                data=data[offset : offset + MODEL_CHUNK],
                total_size=len(data),
                sha256=digest,
            )
            await context.write(chunk)
            self.hub.metrics.stream_bytes.labels("down").inc(chunk.ByteSize())
        log.info("sent the starting model", extra={"device": device_id, "bytes": len(data)})

    async def Connect(  # noqa: N802 - the generated servicer's name
        self,
        request_iterator: Any,
        context: grpc.aio.ServicerContext[pb.AgentMessage, pb.TrainerMessage],
    ) -> None:
        device_id = await self._authenticate(context)
        try:
            first = await asyncio.wait_for(context.read(), REGISTER_TIMEOUT)
        except TimeoutError:
            await self._fail(context, grpc.StatusCode.DEADLINE_EXCEEDED, "no Register received")
        if first is _EOF or first.WhichOneof("body") != "register":
            await self._fail(
                context, grpc.StatusCode.INVALID_ARGUMENT, "first message must be Register"
            )
        register = first.register
        if self.secret is not None and register.device_id != device_id:
            await self._fail(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"token is for device {device_id!r}, Register names {register.device_id!r}",
            )
        if not valid_device_id(register.device_id):
            await self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid device id")
        if register.expert_cache_size > MAX_EXPERT_CACHE or len(register.cached_experts) > max(
            register.expert_cache_size, 0
        ):
            await self._fail(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"expert cache of {register.expert_cache_size} holding "
                f"{len(register.cached_experts)} experts (at most {MAX_EXPERT_CACHE})",
            )
        device_id = register.device_id
        loop = asyncio.get_running_loop()
        handler = asyncio.current_task()

        def overflow() -> None:  # on the loop
            self.metrics.stream_errors.labels(grpc.StatusCode.RESOURCE_EXHAUSTED.name).inc()
            log.warning("device does not read its stream; ending it", extra={"device": device_id})
            if handler is not None:
                handler.cancel()

        out = _Outbox(loop, overflow)
        try:
            budget = LinkBudget.from_message(register.link)
        except ValueError as exc:
            await self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        pacer = None
        if budget.downlink_kbps is not None:
            pacer = _Pacer(
                pacing_bucket(budget.downlink_kbps, loop.time()),
                pacing_part_bytes(budget.downlink_kbps),
            )

        def send(message: pb.TrainerMessage) -> None:  # from any thread
            out.put_threadsafe(message)

        def close(reason: CloseReason) -> None:
            out.put_threadsafe(_End(_CLOSE_CODES[reason], reason.value))

        try:
            initial = await loop.run_in_executor(
                self.hub_pool, self.hub.attach, register, send, close
            )
        except PreconditionError as exc:
            await self._fail(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except ValueError as exc:
            await self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self.hub.count_bytes(device_id, up=wire_size(first))
        reader = asyncio.create_task(self._read(context, device_id, out))
        try:
            for message in initial:
                out.put(message)
            while True:
                item = await out.queue.get()
                if isinstance(item, _End):
                    if item.code is None:
                        return
                    await self._fail(context, item.code, item.details, item.trailing)
                else:
                    await self._write(context, device_id, item, pacer, out)
        finally:
            reader.cancel()
            self.hub.detach(device_id, send)

    async def _write(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        device_id: str,
        message: pb.TrainerMessage,
        pacer: _Pacer | None = None,
        out: _Outbox | None = None,
    ) -> None:
        if pacer is None:
            await context.write(message)
            self.hub.count_bytes(device_id, down=wire_size(message))
            return
        messages = [message]
        if message.WhichOneof("body") == "update":
            messages = [
                pb.TrainerMessage(update=part)
                for part in split_update(message.update, pacer.part_bytes)
            ]
            if len(messages) > 1:
                self.metrics.update_parts.inc(len(messages))
        loop = asyncio.get_running_loop()
        for m in messages:
            if out is not None and out.ending:  # replaced or shutting down: the rest is moot
                return
            size = wire_size(m)
            delay = pacer.bucket.wait(size, loop.time())
            if delay > 0:
                await asyncio.sleep(delay)
            pacer.bucket.take(size, loop.time())
            await context.write(m)
            self.hub.count_bytes(device_id, down=size)

    async def _read(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        device_id: str,
        out: _Outbox,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                msg = await context.read()
                if msg is _EOF:
                    # The agent sends nothing more; what it already sent is still answered
                    # (acknowledgements, updates) before the stream ends.
                    deadline = loop.time() + DRAIN_TIMEOUT
                    while self.hub.in_flight(device_id) and loop.time() < deadline:
                        await asyncio.sleep(0.05)
                    out.put(_End(None))
                    return
                kind = msg.WhichOneof("body")
                frames = len(msg.samples.timestamps) if kind == "samples" else 0
                self.hub.count_bytes(device_id, up=wire_size(msg), frames=frames)
                if kind == "samples":
                    try:
                        batch, clamped = await loop.run_in_executor(
                            self.decode_pool, decode_batch, msg.samples, self.hub.limits
                        )
                    except BatchRejectedError as exc:
                        self.metrics.batches.labels("rejected").inc()
                        log.warning(
                            "rejected a sample batch",
                            extra={"device": device_id, "seq": msg.samples.seq, "error": str(exc)},
                        )
                        out.put(
                            _End(
                                grpc.StatusCode.INVALID_ARGUMENT,
                                f"sample batch {msg.samples.seq}: {exc}",
                                ((REJECTED_BATCH_KEY, str(msg.samples.seq)),),
                            )
                        )
                        return
                    if clamped:
                        self.metrics.timestamps_clamped.inc()
                    self.metrics.batches.labels("accepted").inc()
                    while not self.hub.try_submit(device_id, batch):  # the hub's queue is full
                        await asyncio.sleep(SUBMIT_RETRY)
                elif kind == "ack":
                    self.hub.ack(device_id, msg.ack)  # only a short lock: fine on the loop
                elif kind == "resync":
                    for m in await loop.run_in_executor(
                        self.hub_pool, self.hub.resync, device_id, msg.resync
                    ):
                        out.put(m)
                else:
                    out.put(
                        _End(
                            grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {kind} on an open stream"
                        )
                    )
                    return
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            out.put(_End(None))
        except Exception as exc:  # a bug must end this stream, not the trainer
            log.exception("stream reader failed", extra={"device": device_id})
            out.put(_End(grpc.StatusCode.INTERNAL, f"trainer error: {exc}"))


class TrainerServer:
    """The gRPC server (adaptation stream and health) around a hub."""

    def __init__(
        self,
        hub: Hub,
        listen: str,
        credentials: grpc.ServerCredentials | None,
        token_secret: bytes | None,
        starting_model: Path | None = None,
        client_identity: bool = False,
    ) -> None:
        self.hub = hub
        self.listen = listen
        self.credentials = credentials
        self.servicer = AdaptationServicer(hub, token_secret, starting_model, client_identity)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.server: Any = None
        self.port = 0

    async def start(self) -> int:
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        pb_grpc.add_AdaptationServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self.servicer, self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = bind(self.server, self.listen, self.credentials)
        await self.server.start()
        self.hub.start()
        await set_health(self.health, [SERVICE_NAME], serving=True)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking streams, let the worker finish and persist, close streams, stop."""
        await set_health(self.health, [SERVICE_NAME], serving=False)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.hub.stop)
        if self.server is not None:
            await self.server.stop(grace)
        self.servicer.shutdown()


async def serve(server: Any, on_started: Any = None, shutdown_timeout: float = 20.0) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    await serving.serve(server, "trainer", on_started, shutdown_timeout)
