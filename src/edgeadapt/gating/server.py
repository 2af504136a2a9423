"""The gating service's gRPC server: a thin asyncio servicer over the live zoo (``recl.zoo``).

Every call is authenticated like the trainer's streams (a token minted from the zoo's secret
for the caller id in the metadata). Model work (scoring frames, decoding checkpoints) runs in
worker threads; an admission runs as one background task at a time, so calls keep being
answered from the current zoo version while the next one is built, and it becomes current only
once committed to the zoo's volume.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import torch
from grpc_health.v1 import health, health_pb2_grpc

from edgeadapt import serving
from edgeadapt._proto.gating.v1 import gating_pb2 as pb
from edgeadapt._proto.gating.v1 import gating_pb2_grpc as pb_grpc
from edgeadapt.recl.rules import AdmissionQueue
from edgeadapt.recl.zoo import Candidate, Zoo
from edgeadapt.serving import bind, set_health
from edgeadapt.stream.auth import from_metadata, verify_token
from edgeadapt.video.codec import CodecError, decode_h264_bounded

log = logging.getLogger(__name__)

SERVICE_NAME = "edgeadapt.gating.v1.GatingService"
MAX_FRAMES = 300  # per window: 30 s at the highest sampling rate, ten times over
MAX_FRAME_PIXELS = 1920 * 1080
MAX_REQUEST_BYTES = 128 * 1024 * 1024  # an admission carries a checkpoint and a window
CHUNK = 1 << 20
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
]
SAVE_LOG_EVERY = 50  # selections between writes of the selection counts
REFRESH_S = 2.0  # how stale a replica's zoo version may be before a selection looks again


class BadRequestError(ValueError):
    pass


def decode_frames(frames: pb.Frames) -> np.ndarray:
    """A window's frames, refused unless they decode to what they declare."""
    count = int(frames.count)
    if not 0 < count <= MAX_FRAMES:
        raise BadRequestError(f"frames.count must be 1..{MAX_FRAMES}, got {count}")
    try:
        first = _probe_size(frames.h264)
        images = decode_h264_bounded(
            frames.h264,
            max_frames=count,
            width=first[0],
            height=first[1],
            max_decoded_bytes=count * MAX_FRAME_PIXELS * 3,
        )
    except CodecError as exc:
        raise BadRequestError(str(exc)) from exc
    if len(images) != count:
        raise BadRequestError(f"frames hold {len(images)} frames, not the {count} declared")
    return np.stack(images)


def _probe_size(data: bytes) -> tuple[int, int]:
    import av

    try:
        with av.open(io.BytesIO(data), mode="r", format="h264") as container:
            for frame in container.decode(video=0):
                if frame.width * frame.height > MAX_FRAME_PIXELS:
                    raise CodecError(f"frames of {frame.width}x{frame.height} are too large")
                return int(frame.width), int(frame.height)
    except (av.error.FFmpegError, ValueError) as exc:
        raise CodecError(f"not a decodable H.264 stream: {exc}") from exc
    raise CodecError("H.264 stream holds no frames")


def decode_labels(data: bytes, shape: tuple[int, int, int]) -> torch.Tensor:
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, shape[0] * shape[1] * shape[2] + 1)
    except zlib.error as exc:
        raise BadRequestError(f"labels are not zlib data: {exc}") from exc
    if not inflater.eof:
        raise BadRequestError("labels hold a truncated zlib stream")
    if len(raw) != shape[0] * shape[1] * shape[2]:
        raise BadRequestError(f"labels hold {len(raw)} bytes; the frames need {shape}")
    return torch.from_numpy(np.frombuffer(raw, np.uint8).reshape(shape).copy())


def encode_labels(labels: torch.Tensor) -> bytes:
    return zlib.compress(labels.to(torch.uint8).numpy().tobytes(), 6)


def parse_checkpoint(data: bytes, arch: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, builder config) of an edgeadapt checkpoint of the zoo's architecture."""
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        raise BadRequestError(f"not a checkpoint: {type(exc).__name__}: {exc}") from exc
    ids = ckpt.get("ids") if isinstance(ckpt, dict) else None
    if not isinstance(ids, dict) or "model" not in ckpt:
        raise BadRequestError("not an edgeadapt checkpoint (no model / ids)")
    if ids.get("arch") != arch:
        raise BadRequestError(f"the checkpoint is a {ids.get('arch')!r}; the zoo holds {arch!r}")
    return dict(ckpt["model"]), dict(ids.get("config") or {})


class GatingServicer(pb_grpc.GatingServiceServicer):
    def __init__(self, zoo: Zoo, token_secret: bytes | None) -> None:
        self.zoo = zoo
        self.secret = token_secret
        self.queue = AdmissionQueue(zoo.params.gamma)
        self.waiting: dict[str, Candidate] = {}
        self.admission: asyncio.Task[None] | None = None
        self.last_admission = 0.0
        self._since_save = 0
        self._refreshed = time.monotonic()

    async def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        caller, token = from_metadata(context.invocation_metadata())
        if self.secret is not None and not verify_token(self.secret, caller, token):
            log.warning("refused a call: bad token", extra={"caller": caller})
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid token")
        return caller

    async def Select(  # noqa: N802 - the generated servicer's name
        self, request: pb.SelectRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SelectResponse:
        await self._authenticate(context)
        try:
            images = await asyncio.to_thread(decode_frames, request.frames)
        except BadRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if time.monotonic() - self._refreshed >= REFRESH_S and self.admission is None:
            # Another replica of the service may have committed a newer version.
            self._refreshed = time.monotonic()
            if await asyncio.to_thread(self.zoo.refresh):
                log.info(
                    "loaded a newer zoo version",
                    extra={"zoo_version": self.zoo.snapshot.version.version},
                )
        snap = self.zoo.snapshot
        chosen = await asyncio.to_thread(self.zoo.select, images, request.k or None)
        experts = {e.id: e for e in snap.version.experts}
        return pb.SelectResponse(
            zoo_version=snap.version.version,
            experts=[
                pb.ScoredExpert(
                    id=e,
                    score=s,
                    sha256=experts[e].blob.sha256 if e in experts else "",
                    size=experts[e].blob.size if e in experts else 0,
                    source_device=experts[e].source_device if e in experts else "",
                )
                for e, s in chosen
            ],
        )

    async def GetExpert(  # noqa: N802 - the generated servicer's name
        self, request: pb.ExpertRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ExpertChunk]:
        await self._authenticate(context)
        snap = self.zoo.snapshot
        expert = next((e for e in snap.version.experts if e.id == request.id), None)
        if expert is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no expert {request.id!r} in the zoo")
        state = await asyncio.to_thread(self.zoo.store.get_tensors, expert.blob)
        buf = io.BytesIO()
        ids = {"arch": snap.version.arch, "config": dict(snap.version.config)}
        torch.save({"model": state, "ids": ids}, buf)
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        for i in range(0, len(data), CHUNK):
            first = i == 0
            yield pb.ExpertChunk(
                data=data[i : i + CHUNK],
                total_size=len(data) if first else 0,
                sha256=digest if first else "",
            )

    async def Record(  # noqa: N802 - the generated servicer's name
        self, request: pb.RecordRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RecordResponse:
        await self._authenticate(context)
        for pick in request.picks:
            self.zoo.record(pick)
        self._since_save += len(request.picks)
        if self._since_save >= SAVE_LOG_EVERY:
            self._since_save = 0
            await asyncio.to_thread(self.zoo.save_log)
        if self.admission is None and self.zoo.log.prunable(self.zoo.params.eta):
            version = await asyncio.to_thread(self.zoo.prune)
            if version is not None:
                log.info("pruned the zoo", extra={"zoo_version": version.version})
        return pb.RecordResponse(zoo_version=self.zoo.snapshot.version.version)

    async def Admit(  # noqa: N802 - the generated servicer's name
        self, request: pb.AdmitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AdmitResponse:
        await self._authenticate(context)
        try:
            candidate = await asyncio.to_thread(self._candidate, request)
        except BadRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if candidate.id in self.zoo.snapshot.ids:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, f"expert {candidate.id!r} is in the zoo already"
            )
        self.waiting[candidate.id] = candidate
        self.queue.offer(candidate.id)
        admitting = False
        if self.queue.due and self.admission is None:
            batch = [self.waiting.pop(c) for c in self.queue.drain()]
            self.admission = asyncio.create_task(self._admit(batch), name="admission")
            admitting = True
        return pb.AdmitResponse(
            queued=True,
            queue_length=len(self.queue.waiting),
            zoo_version=self.zoo.snapshot.version.version,
            admitting=admitting,
        )

    def _candidate(self, request: pb.AdmitRequest) -> Candidate:
        if not request.candidate_id:
            raise BadRequestError("candidate_id is empty")
        state, config = parse_checkpoint(request.checkpoint, self.zoo.arch)
        images = decode_frames(request.frames)
        labels = decode_labels(request.labels, images.shape[:3])
        return Candidate(
            id=request.candidate_id,
            state=state,
            config=config,
            source_device=request.source_device,
            window=int(request.window),
            images=images,
            labels=labels,
        )

    async def _admit(self, batch: list[Candidate]) -> None:
        started = time.monotonic()
        try:
            version = await asyncio.to_thread(self.zoo.admit, batch)
            self.last_admission = time.time()
            log.info(
                "admitted %d experts",
                len(batch),
                extra={"zoo_version": version.version, "seconds": time.monotonic() - started},
            )
            pruned = await asyncio.to_thread(self.zoo.prune)
            if pruned is not None:
                log.info("pruned the zoo", extra={"zoo_version": pruned.version})
            await asyncio.to_thread(self.zoo.save_log)
        except Exception:  # a failed admission leaves the zoo at its version; the next may work
            log.exception("admission of %s failed", [c.id for c in batch])
        finally:
            self.admission = None

    async def Status(  # noqa: N802 - the generated servicer's name
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ZooStatus:
        await self._authenticate(context)
        return self.status_message()

    def status_message(self) -> pb.ZooStatus:
        version = self.zoo.snapshot.version
        return pb.ZooStatus(
            zoo_version=version.version,
            experts=len(version.experts),
            queue_length=len(self.queue.waiting),
            admitted=int(version.counters.get("admitted", 0)),
            pruned=int(version.counters.get("pruned", 0)),
            last_admission_unix=self.last_admission,
            selections=self.zoo.log.total,
            arch=version.arch,
            admitting=self.admission is not None,
            top_k=self.zoo.params.top_k,
            alpha=self.zoo.params.alpha,
        )

    def status(self) -> dict[str, Any]:
        """The ``/status`` view."""
        s = self.status_message()
        counts = self.zoo.log.counts()
        return {
            "zoo_version": s.zoo_version,
            "experts": s.experts,
            "queue_length": s.queue_length,
            "admitted": s.admitted,
            "pruned": s.pruned,
            "last_admission_unix": s.last_admission_unix or None,
            "selections": s.selections,
            "arch": s.arch,
            "admitting": s.admitting,
            "top_k": s.top_k,
            "alpha": round(s.alpha, 4),
            "expert_list": [
                {
                    "id": e.id,
                    "source_device": e.source_device,
                    "window": e.window,
                    "created_unix": round(e.created, 3),
                    "picks": counts.get(e.id, 0),
                }
                for e in self.zoo.snapshot.version.experts
            ],
        }


class GatingServer:
    """The gRPC server (gating and health) around a zoo."""

    def __init__(
        self,
        zoo: Zoo,
        listen: str,
        credentials: grpc.ServerCredentials | None,
        token_secret: bytes | None,
    ) -> None:
        self.listen = listen
        self.credentials = credentials
        self.servicer = GatingServicer(zoo, token_secret)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.server: Any = None
        self.port = 0

    async def start(self) -> int:
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        pb_grpc.add_GatingServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self.servicer, self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = bind(self.server, self.listen, self.credentials)
        await self.server.start()
        await set_health(self.health, [SERVICE_NAME], serving=True)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls, let a running admission finish (or be cut: the zoo stays at its
        last committed version), keep the selection counts."""
        await set_health(self.health, [SERVICE_NAME], serving=False)
        if self.server is not None:
            await self.server.stop(grace)
        task = self.servicer.admission
        if task is not None:
            await asyncio.wait([task], timeout=grace)
        await asyncio.to_thread(self.servicer.zoo.save_log)


async def serve(server: Any, on_started: Any = None, shutdown_timeout: float = 20.0) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    await serving.serve(server, "gating service", on_started, shutdown_timeout)
