"""The starting model of an agent that has no model files: fetched once from its trainer.

An edge pod carries no weights. On first start the agent asks its trainer for the student every
device of that trainer starts from (``GetStartingModel``), checks the file's size and SHA-256,
and keeps it on its volume; the adaptation stream then brings it to the trainer's current
version (the chain of updates, or a snapshot). While the trainer is unreachable, still
provisioning, or refuses the token (which the operator re-mints), the agent retries with backoff.

A restart with a kept file asks once whether it is still the trainer's (its digest; the answer
carries no data when it is) and starts at once when the trainer cannot be reached: a device
keeps inferring offline. A policy whose student changed gives a new file, and the state kept
for the old one (``model.pt``) is dropped with it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
import threading
from pathlib import Path
from typing import BinaryIO

import grpc

from edgeadapt._proto.stream.v1 import stream_pb2 as pb
from edgeadapt._proto.stream.v1 import stream_pb2_grpc as pb_grpc
from edgeadapt.durable import write_atomically
from edgeadapt.edge_agent.link import LinkConfig, open_channel
from edgeadapt.stream.auth import call_metadata

log = logging.getLogger(__name__)

STARTING_MODEL = "starting-model.pth"
FETCH_TIMEOUT = 600.0  # one attempt, seconds
MAX_MODEL_BYTES = 1 << 30


class FetchError(RuntimeError):
    pass


def fetch_once(cfg: LinkConfig, timeout: float = FETCH_TIMEOUT, have: str = "") -> bytes | None:
    """The trainer's starting model, whole and verified; None if it is the file whose digest is
    ``have``. Raises ``grpc.RpcError`` or ``FetchError``."""
    with open_channel(cfg) as channel:
        stub = pb_grpc.AdaptationServiceStub(channel)  # type: ignore[no-untyped-call]
        chunks = stub.GetStartingModel(
            pb.StartingModelRequest(device_id=cfg.device_id, have_sha256=have),
            metadata=call_metadata(cfg.device_id, cfg.current_token()),
            timeout=timeout,
        )
        data = bytearray()
        total, digest = -1, ""
        for chunk in chunks:
            if chunk.offset != len(data):
                raise FetchError(f"chunk at offset {chunk.offset}, expected {len(data)}")
            if total < 0:
                total, digest = int(chunk.total_size), chunk.sha256
                if not 0 < total <= MAX_MODEL_BYTES:
                    raise FetchError(f"the trainer announces a model of {total} bytes")
            elif (chunk.total_size, chunk.sha256) != (total, digest):
                raise FetchError("the model's size or checksum changed mid-transfer")
            if have and digest == have and not chunk.data:
                return None
            data += chunk.data
            if len(data) > total:
                raise FetchError(f"more than the announced {total} bytes")
    if len(data) != total:
        raise FetchError(f"{len(data)} of {total} bytes arrived")
    if hashlib.sha256(data).hexdigest() != digest:
        raise FetchError("the model's SHA-256 does not match the trainer's")
    return bytes(data)


def _write(data: bytes, f: BinaryIO) -> None:
    f.write(data)


def starting_model(
    cfg: LinkConfig,
    folder: Path,
    stop: threading.Event,
    backoff_initial: float = 1.0,
) -> Path | None:
    """The starting model in ``folder``, fetched first if it is not there; None if ``stop`` is
    set before it arrives."""
    path = folder / STARTING_MODEL
    if path.exists():
        return _check_kept(cfg, path)
    folder.mkdir(parents=True, exist_ok=True)
    delay = backoff_initial
    while not stop.is_set():
        try:
            data = fetch_once(cfg)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            log.warning(
                "cannot fetch the starting model yet",
                extra={"trainer": cfg.target, "code": getattr(code, "name", None),
                       "error": exc.details() if hasattr(exc, "details") else str(exc)},
            )  # fmt: skip
        except FetchError as exc:
            log.warning("the starting model arrived damaged", extra={"error": str(exc)})
        else:
            assert data is not None  # asked without a digest: the whole file comes
            write_atomically(path, functools.partial(_write, data))
            log.info("fetched the starting model", extra={"bytes": len(data), "path": str(path)})
            return path
        stop.wait(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, cfg.backoff_max)
    return None


CHECK_TIMEOUT = 15.0
KEPT_STATE = "model.pt"  # edge_agent.agent's saved version, which is relative to this file


def _check_kept(cfg: LinkConfig, path: Path) -> Path:
    """The kept starting model, replaced first if the trainer now starts devices from another."""
    have = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        data = fetch_once(cfg, CHECK_TIMEOUT, have=have)
    except (grpc.RpcError, FetchError) as exc:
        log.info("using the kept starting model; the trainer did not confirm it (%s)", exc)
        return path
    if data is not None:
        log.warning("the trainer's starting model changed; the kept model and state are replaced")
        (path.parent / KEPT_STATE).unlink(missing_ok=True)
        write_atomically(path, functools.partial(_write, data))
    return path
