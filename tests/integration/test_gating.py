"""The gating service as a real process over TLS gRPC: selection, admission, restarts, crashes."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgeadapt import procs
from edgeadapt._proto.gating.v1 import gating_pb2 as pb
from edgeadapt._proto.gating.v1 import gating_pb2_grpc as pb_grpc
from edgeadapt.gating.server import encode_labels
from edgeadapt.models.zoo import build_student
from edgeadapt.stream.auth import call_metadata
from edgeadapt.stream.tls import channel_credentials
from edgeadapt.video.codec import encode_h264

pytestmark = pytest.mark.processes

ARCH = "lraspp_mobilenet_v3_large"
CONFIG = {"num_classes": 3, "width_mult": 0.25}
CALLER = "pol-trainer-0"


def _checkpoint(cls: int, arch: str = ARCH) -> bytes:
    """A student that labels every pixel ``cls``: an expert for scenes of that class only."""
    model = build_student(3, 0.25)
    state = model.state_dict()
    for name in state:
        if "classifier" in name and name.endswith("weight"):
            state[name] = torch.zeros_like(state[name])
        if "classifier" in name and name.endswith("bias"):
            bias = torch.full_like(state[name], -5.0)
            bias[cls] = 5.0
            state[name] = bias
    buf = io.BytesIO()
    torch.save({"model": state, "ids": {"arch": arch, "config": CONFIG}}, buf)
    return buf.getvalue()


def _window(cls: int, n: int = 10) -> tuple[pb.Frames, bytes]:
    rng = np.random.default_rng(cls)
    images = rng.integers(0, 60, (n, 32, 48, 3), dtype=np.uint8)
    images[..., cls] += 180  # red scenes are class 0, green scenes class 1, blue class 2
    labels = torch.full((n, 32, 48), cls, dtype=torch.uint8)
    return pb.Frames(h264=encode_h264(list(images), crf=18), count=n), encode_labels(labels)


def _admit(stub: Any, candidate: str, cls: int, window: int = 1) -> pb.AdmitResponse:
    frames, labels = _window(cls)
    request = pb.AdmitRequest(
        candidate_id=candidate,
        checkpoint=_checkpoint(cls),
        source_device=f"cam-{cls}",
        window=window,
        frames=frames,
        labels=labels,
    )
    response: pb.AdmitResponse = stub.Admit(request, metadata=META)
    return response


META: list[tuple[str, str]] = []  # the caller's token metadata, once the service has a secret


class Service:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.creds = procs.dev_credentials(workdir / "creds")
        self.zoo = workdir / "zoo"
        self.port = procs.free_port()
        self.proc: procs.Proc | None = None
        META[:] = call_metadata(CALLER, self.creds.token(CALLER))

    def start(self) -> None:
        self.proc = procs.start_gating(
            self.workdir,
            zoo_dir=self.zoo,
            arch=ARCH,
            credentials=self.creds,
            listen=f"127.0.0.1:{self.port}",
            extra=["--fit-steps", "30", "--history-size", "64"],
            top_k=2,
            gamma=1,
        )
        procs.wait_ready(self.proc, 120)

    def channel(self) -> grpc.Channel:
        return grpc.secure_channel(
            f"localhost:{self.port}",
            channel_credentials(self.creds.pki.ca),
            options=[("grpc.max_send_message_length", 64 * 2**20)],
        )

    def status(self, stub: Any) -> pb.ZooStatus:
        status: pb.ZooStatus = stub.Status(pb.StatusRequest(), metadata=META)
        return status

    def wait_for(self, stub: Any, experts: int, timeout: float = 180) -> pb.ZooStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(stub)
            if status.experts == experts and not status.admitting:
                return status
            time.sleep(0.3)
        raise AssertionError(f"the zoo did not reach {experts} experts: {self.status(stub)}")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path)
    svc.start()
    yield svc
    if svc.proc is not None:
        procs.stop(svc.proc)


def _select(stub: Any, cls: int) -> list[str]:
    frames, _ = _window(cls)
    response = stub.Select(pb.SelectRequest(frames=frames), metadata=META)
    return [e.id for e in response.experts]


def test_the_gating_service_selects_admits_and_survives_restarts_and_crashes(
    service: Service,
) -> None:
    with service.channel() as channel:
        stub = pb_grpc.GatingServiceStub(channel)  # type: ignore[no-untyped-call]
        health = health_pb2_grpc.HealthStub(channel)
        check = health.Check(health_pb2.HealthCheckRequest(service=""))
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        assert _select(stub, 0) == []  # an empty zoo: nothing to choose
        first = service.status(stub)
        assert (first.experts, first.arch, first.top_k) == (0, ARCH, 2)

        # Bad callers and bad input are refused with what is wrong.
        with pytest.raises(grpc.RpcError) as refused:
            stub.Status(pb.StatusRequest(), metadata=call_metadata(CALLER, "ea1.wrong"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        frames, labels = _window(0)
        bad = {
            "not a checkpoint": pb.AdmitRequest(
                candidate_id="x", checkpoint=b"junk", frames=frames, labels=labels
            ),
            "the zoo holds": pb.AdmitRequest(
                candidate_id="x",
                checkpoint=_checkpoint(0, "deeplabv3_mobilenet_v3_large"),
                frames=frames,
                labels=labels,
            ),
            "not the 11 declared": pb.AdmitRequest(
                candidate_id="x",
                checkpoint=_checkpoint(0),
                frames=pb.Frames(h264=frames.h264, count=11),
                labels=labels,
            ),
            "truncated": pb.AdmitRequest(
                candidate_id="x", checkpoint=_checkpoint(0), frames=frames, labels=labels[:-3]
            ),
        }
        for text, request in bad.items():
            with pytest.raises(grpc.RpcError) as invalid:
                stub.Admit(request, metadata=META)
            assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert text in str(invalid.value.details())

        # gamma = 1: the second promising model admits the queue.
        assert not _admit(stub, "red", 0).admitting
        assert _admit(stub, "green", 1).admitting
        admitted = service.wait_for(stub, 2)
        assert admitted.zoo_version > first.zoo_version
        assert admitted.admitted == 2
        assert _select(stub, 0)[0] == "red"
        assert _select(stub, 1)[0] == "green"

        chunks = list(stub.GetExpert(pb.ExpertRequest(id="green"), metadata=META))
        data = b"".join(c.data for c in chunks)
        assert (len(data), hashlib.sha256(data).hexdigest()) == (
            chunks[0].total_size,
            chunks[0].sha256,
        )
        ckpt = torch.load(io.BytesIO(data), weights_only=True)
        assert ckpt["ids"] == {"arch": ARCH, "config": CONFIG}
        with pytest.raises(grpc.RpcError) as missing:
            list(stub.GetExpert(pb.ExpertRequest(id="nope"), metadata=META))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        stub.Record(pb.RecordRequest(picks=["red", "green", ""]), metadata=META)

    # A restart keeps the zoo.
    assert service.proc is not None
    assert procs.stop(service.proc) < 15
    service.start()
    with service.channel() as channel:
        stub = pb_grpc.GatingServiceStub(channel)  # type: ignore[no-untyped-call]
        again = service.status(stub)
        assert (again.zoo_version, again.experts) == (admitted.zoo_version, 2)
        assert again.selections == 3  # the picks were kept on the volume
        assert _select(stub, 1)[0] == "green"

        # Killed during an admission: the zoo reopens at one whole version.
        _admit(stub, "blue", 2)
        assert _admit(stub, "red-2", 0).admitting
        assert service.status(stub).admitting
    procs.kill(service.proc)
    service.start()
    with service.channel() as channel:
        stub = pb_grpc.GatingServiceStub(channel)  # type: ignore[no-untyped-call]
        after = service.status(stub)
        assert after.experts in (2, 4)
        assert after.zoo_version in (admitted.zoo_version, admitted.zoo_version + 1)
        ids = _select(stub, 2) if after.experts == 2 else _select(stub, 2)[:1]
        for expert in ids:
            assert list(stub.GetExpert(pb.ExpertRequest(id=expert), metadata=META))
