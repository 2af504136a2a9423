"""Trainer and edge agents as real processes over real gRPC (TLS, tokens) on loopback.

The failure behaviour the adaptation stream promises: a killed trainer does not stop inference
and its devices resume from the persisted version; a garbage upload ends only its own stream; a
wrong token is refused; corrupt updates are rejected, counted and never change the model;
SIGTERM shuts both sides down within a bound with their state on disk.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import shutil
import signal
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgeadapt._proto.stream.v1 import stream_pb2 as pb
from edgeadapt._proto.stream.v1 import stream_pb2_grpc as pb_grpc
from edgeadapt.adapt.update import (
    HEADER,
    MASK_BITS,
    ModelUpdate,
    encode_update,
    model_checksum,
    parameter_vector,
)
from edgeadapt.api.launch import AgentLaunch, ModelRef, TrainerLaunch, WeightsSource
from edgeadapt.models.cache import ensure_checkpoint
from edgeadapt.models.zoo import load_checkpoint_model
from edgeadapt.pki import issue, new_ca
from edgeadapt.procs import (
    Credentials,
    Proc,
    dev_credentials,
    get_json,
    start,
    start_agent,
    start_trainer,
    stop,
    wait_ready,
)
from edgeadapt.stream.auth import call_metadata, mint_token
from edgeadapt.stream.messages import REJECTED_BATCH_KEY, register_message, update_message
from edgeadapt.stream.tls import PKI, channel_credentials
from edgeadapt.video.render import write_video

pytestmark = pytest.mark.processes

VIDEO = "synthetic:seed={seed},duration=600,fps=15"


@dataclass
class Env:
    credentials: Credentials
    teacher: Path
    student: Path
    root: Path

    @property
    def pki(self) -> PKI:
        return self.credentials.pki

    @property
    def secret(self) -> bytes:
        return self.credentials.secret


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("stream")
    return Env(
        credentials=dev_credentials(root),
        teacher=ensure_checkpoint("teacher", "tiny"),
        student=ensure_checkpoint("student", "tiny"),
        root=root,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Cluster:
    """Starts processes in a per-test directory and kills whatever is left at the end."""

    def __init__(self, env: Env, workdir: Path) -> None:
        self.env, self.workdir = env, workdir
        self.procs: list[Proc] = []

    def trainer(
        self, state: Path, port: int = 0, name: str = "trainer", extra: tuple[str, ...] = ()
    ) -> Proc:
        e = self.env
        p = start_trainer(
            self.workdir,
            state_dir=state,
            teacher=e.teacher,
            student=e.student,
            credentials=e.credentials,
            listen=f"127.0.0.1:{port}",
            extra=("--t-update", "2", "--iterations", "4", "--log-format", "json", *extra),
            name=name,
        )
        self.procs.append(p)
        wait_ready(p, 120)
        return p

    def agent(
        self,
        name: str,
        port: int,
        token: str | None = None,
        extra: tuple[str, ...] = (),
        seed: int = 1,
        secure: bool = True,
        source: str | None = None,
    ) -> Proc:
        token_file = self.workdir / f"{name}.token"
        token_file.write_text(token if token is not None else mint_token(self.env.secret, name))
        launch = AgentLaunch(
            device_id=name,
            source=source or VIDEO.format(seed=seed),
            trainer=f"127.0.0.1:{port}",
            ca_file=str(self.env.pki.ca) if secure else None,
            token_file=str(token_file) if secure else None,
            insecure=not secure,
            student_file=str(self.env.student),
            http_listen="127.0.0.1:0",
            backoff_max=1,
            state_dir=str(self.workdir / f"{name}-state"),
            summary_out=str(self.workdir / f"{name}.summary.json"),
            log_format="json",
        )
        p = start_agent(launch, self.workdir, extra=extra)
        self.procs.append(p)
        wait_ready(p, 120)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait()


@pytest.fixture
def cluster(env: Env, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(env, tmp_path)
    try:
        yield c
    finally:
        c.close()


def status(p: Proc) -> dict[str, Any]:
    s = get_json(p.http_port, timeout=10, token=p.status_token)
    assert s is not None, f"{p.name} /status unreachable; log {p.log_file}"
    return s


def at_version(agent: Proc, version: int) -> Callable[[], bool]:
    return lambda: bool(status(agent)["model_version"] >= version)


def device(trainer: Proc, device_id: str) -> dict[str, Any] | None:
    s = get_json(trainer.http_port, timeout=10, token=trainer.status_token) or {"devices": []}
    return next((d for d in s["devices"] if d["id"] == device_id), None)


def secure_channel(env: Env, port: int) -> grpc.Channel:
    return grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(env.pki.ca))


def register(env: Env, device_id: str) -> pb.AgentMessage:
    return pb.AgentMessage(register=register_message(device_id, load_checkpoint_model(env.student)))


# ------------------------------------------------------------------------------------------------


def test_health_service_over_tls_and_plaintext_refused(cluster: Cluster, env: Env) -> None:
    trainer = cluster.trainer(cluster.workdir / "state")
    with secure_channel(env, trainer.grpc_port) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "edgeadapt.stream.v1.AdaptationService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(f"127.0.0.1:{trainer.grpc_port}") as plain:
        with pytest.raises(grpc.RpcError) as exc:
            health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_agent_on_a_video_file(cluster: Cluster, env: Env, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    assert write_video("synthetic:seed=5,duration=12,fps=10", clip) == 120
    trainer = cluster.trainer(cluster.workdir / "state")
    agent = cluster.agent("cam-1", trainer.grpc_port, source=str(clip))
    agent.popen.wait(60)
    assert agent.popen.returncode == 0, agent.log_file.read_text()[-2000:]
    summary = json.loads((cluster.workdir / "cam-1.summary.json").read_text())
    assert summary["frames_inferred"] == 120, "every frame of the clip, once"
    assert summary["inference_fps"] == pytest.approx(10, rel=0.05), "paced at the clip's rate"
    assert summary["model_version"] >= 1
    assert summary["batches_acked"] == summary["batches_sealed"] >= 5
    assert summary["batches_pending"] == 0, "the last, partial batch too, before exit"
    # Structured logs: one JSON object per line, with the fields an operator filters on.
    lines = agent.log_file.read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    applied = [e for e in events if e["msg"] == "update applied"]
    assert applied
    assert all(e["device"] == "cam-1" for e in applied)
    assert [e["version"] for e in applied] == list(range(1, len(applied) + 1))


def in_step(trainer: Proc, device_id: str) -> bool:
    return bool((device(trainer, device_id) or {}).get("agent_in_step"))


@pytest.mark.parametrize("policy", ["micro-window", "urgency"])
def test_a_scheduled_trainer_keeps_every_device_adapting(cluster: Cluster, policy: str) -> None:
    trainer = cluster.trainer(
        cluster.workdir / "state",
        extra=("--scheduler", policy, "--micro-window-seconds", "0.2"),
    )
    agents = {name: cluster.agent(name, trainer.grpc_port, seed=seed)
              for name, seed in (("cam-1", 1), ("cam-2", 2), ("cam-3", 3))}  # fmt: skip
    for name, agent in agents.items():
        wait_for(f"{name} at version 3", at_version(agent, 3), timeout=240)
    view = status(trainer)["scheduler"]
    assert view["policy"] == policy
    assert view["rounds"] >= 3
    # Frames are held out for scoring only while rounds are over-subscribed; which these three
    # devices' rounds are depends on the machine (tests/unit/test_hub.py checks both sides).
    assert isinstance(view["over_subscribed"], bool)
    assert view["last_round"]["spent_s"] <= view["last_round"]["budget_s"] * 1.05 + 1.0
    for name, agent in agents.items():
        d = device(trainer, name)
        assert d is not None
        sched = d["scheduler"]
        assert sched["slices"] >= 3, sched
        assert sched["compute_seconds"] > 0
        # The agent runs what the trainer holds: every phase was committed and delivered.
        wait_for(f"{name} in step", functools.partial(in_step, trainer, name))
        assert status(agent)["model_version"] >= 3


@pytest.mark.parametrize("strategy", ["edgesync", "ams+edgesync"])
def test_edgesync_agents_upload_their_most_uncertain_samples(
    cluster: Cluster, strategy: str
) -> None:
    # 6 s batches at 1 fps: 6 samples, of which ceil(0.7 * 6) = 5 are uploaded.
    trainer = cluster.trainer(
        cluster.workdir / "state", extra=("--strategy", strategy, "--t-update", "6")
    )
    agent = cluster.agent("cam-1", trainer.grpc_port, seed=4)
    wait_for("version 2", at_version(agent, 2), timeout=240)
    s = status(agent)
    assert s["upload_fraction"] == 0.7
    assert s["samples_filtered"] > 0
    d = device(trainer, "cam-1")
    assert d is not None
    assert status(trainer)["scheduler"]["policy"] == "urgency"
    # The trainer learns from what was uploaded: about 70 % of the samples.
    assert d["frames"] > 0
    wait_for("in step", functools.partial(in_step, trainer, "cam-1"))


class _DroppingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files; the first response is cut off halfway, as a failing stream would be."""

    requests = 0

    def copyfile(self, source: Any, outputfile: Any) -> None:
        type(self).requests += 1
        if type(self).requests == 1:
            data = source.read()
            outputfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().copyfile(source, outputfile)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_agent_on_an_http_stream_that_drops(cluster: Cluster, env: Env, tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"  # MPEG-TS: a streaming container, as cameras serve
    assert write_video("synthetic:seed=5,duration=12,fps=10", clip) == 120
    trainer = cluster.trainer(cluster.workdir / "state")
    handler = functools.partial(_DroppingHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{clip.name}"
        agent = cluster.agent("cam-1", trainer.grpc_port, source=url)
        agent.popen.wait(90)
    finally:
        server.shutdown()
        server.server_close()
    assert agent.popen.returncode == 0, agent.log_file.read_text()[-2000:]
    summary = json.loads((cluster.workdir / "cam-1.summary.json").read_text())
    assert summary["source_errors"] == 1, "the cut was seen and the stream reopened"
    # Part of the clip before the cut, then all of it again after reopening.
    assert 120 + 30 <= summary["frames_inferred"] <= 120 + 90
    assert summary["model_version"] >= 1
    assert summary["batches_pending"] == 0


def test_mutual_tls_needs_the_devices_own_client_certificate(
    cluster: Cluster, env: Env, tmp_path: Path
) -> None:
    clients = new_ca("clients")
    (tmp_path / "clients.crt").write_bytes(clients.cert)
    certs = {}
    for name in ("cam-2", "cam-x"):
        pair = issue(clients, name, server=False)
        (tmp_path / f"{name}.crt").write_bytes(pair.cert)
        (tmp_path / f"{name}.key").write_bytes(pair.key)
        certs[name] = ("--cert-file", str(tmp_path / f"{name}.crt"),
                       "--key-file", str(tmp_path / f"{name}.key"))  # fmt: skip
    trainer = cluster.trainer(
        cluster.workdir / "state", extra=("--client-ca", str(tmp_path / "clients.crt"))
    )
    anonymous = cluster.agent("cam-1", trainer.grpc_port)
    own = cluster.agent("cam-2", trainer.grpc_port, extra=certs["cam-2"])
    borrowed = cluster.agent("cam-3", trainer.grpc_port, extra=certs["cam-2"])
    wait_for("the agent with its own certificate to adapt", at_version(own, 1), 120)
    wait_for(
        "the borrowed certificate refused", lambda: status(borrowed)["connection"] == "refused"
    )
    for agent in (anonymous, borrowed):
        # Refused, and inferring all the same.
        wait_for(f"{agent.name} inferring", functools.partial(inferring, agent))
        s = status(agent)
        assert s["connects"] == 0
        assert s["model_version"] == 0
    assert "PERMISSION_DENIED" in status(borrowed)["last_link_error"]
    assert device(trainer, "cam-1") is None
    assert device(trainer, "cam-3") is None
    assert status(trainer)["refused"]["cam-3"]["reason"] == "ClientCertificateMismatch"


def inferring(agent: Proc) -> bool:
    return bool(status(agent)["frames_inferred"] > 0)


def test_wrong_token_is_refused(cluster: Cluster, env: Env) -> None:
    trainer = cluster.trainer(cluster.workdir / "state")
    # A raw stream with another device's token.
    with secure_channel(env, trainer.grpc_port) as channel:
        stub = pb_grpc.AdaptationServiceStub(channel)  # type: ignore[no-untyped-call]
        call = stub.Connect(
            iter([register(env, "cam-x")]),
            metadata=call_metadata("cam-x", mint_token(env.secret, "cam-y")),
            timeout=20,
        )
        with pytest.raises(grpc.RpcError) as exc:
            list(call)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A real agent with a token minted under another secret: refused, keeps inferring.
    agent = cluster.agent("cam-bad", trainer.grpc_port, token=mint_token(b"x" * 32, "cam-bad"))
    s = wait_for(
        "the agent to be refused", lambda: (st := status(agent))["connection"] == "refused" and st
    )
    assert "UNAUTHENTICATED" in s["last_link_error"]
    assert s["connects"] == 0
    frames = s["frames_inferred"]
    wait_for("frames after refusal", lambda: status(agent)["frames_inferred"] > frames + 10)
    assert device(trainer, "cam-bad") is None
    metrics = _metrics(trainer.http_port)
    assert metrics["edgeadapt_trainer_auth_failures_total"] >= 2
    # The trainer says which device it refused (the operator reads this), and /status itself
    # answers only its bearer token.
    assert status(trainer)["refused"]["cam-bad"]["reason"] == "Unauthenticated"
    assert get_json(trainer.http_port, timeout=10) is None
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(f"http://127.0.0.1:{trainer.http_port}/status", timeout=10)
    assert denied.value.code == 401
    # The right token written to the file (as the kubelet updates a re-minted Secret): the
    # agent reads it on its next connect and adapts, and the refusal is cleared.
    (cluster.workdir / "cam-bad.token").write_text(mint_token(env.secret, "cam-bad"))
    wait_for("the agent to adapt with its new token", at_version(agent, 1), 120)
    assert "cam-bad" not in status(trainer)["refused"]


def test_an_agent_without_model_files_starts_from_the_trainer(cluster: Cluster, env: Env) -> None:
    """The trainer provisions its models from sources into its models folder; the agent has no
    --student, fetches the starting model once, keeps it, and adapts from there."""
    state = cluster.workdir / "state"
    launch = TrainerLaunch(
        state_dir=str(state / "devices"),
        teacher=ModelRef("lraspp_mobilenet_v3_large", WeightsSource("file", str(env.teacher))),
        student=ModelRef("lraspp_mobilenet_v3_large", WeightsSource("file", str(env.student))),
        models_dir=str(state / "models"),
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        tls_cert=str(env.pki.server_cert),
        tls_key=str(env.pki.server_key),
        token_key_file=str(env.credentials.secret_file),
    )
    trainer = start("trainer", launch.MODULE, [*launch.args(), "--t-update", "2"], cluster.workdir)
    trainer.status_token = env.credentials.status_token
    cluster.procs.append(trainer)
    wait_ready(trainer, 120)
    token_file = cluster.workdir / "cam-1.token"
    token_file.write_text(mint_token(env.secret, "cam-1"))
    agent_state = cluster.workdir / "cam-1-state"
    agent_launch = AgentLaunch(
        device_id="cam-1",
        source=VIDEO.format(seed=3),
        trainer=f"127.0.0.1:{trainer.grpc_port}",
        ca_file=str(env.pki.ca),
        token_file=str(token_file),
        state_dir=str(agent_state),
        http_listen="127.0.0.1:0",
        backoff_max=1,
    )

    def start_cam(name: str) -> Proc:
        proc = start_agent(agent_launch, cluster.workdir, name=name)
        cluster.procs.append(proc)
        wait_ready(proc, 120)
        return proc

    agent = start_cam("cam-1")
    fetched = agent_state / "starting-model.pth"
    # The student's weights, without the training checkpoint's optimizer state.
    got, want = load_checkpoint_model(fetched), load_checkpoint_model(env.student)
    assert torch.equal(parameter_vector(got), parameter_vector(want))
    assert fetched.stat().st_size < 0.6 * env.student.stat().st_size
    wait_for("the agent to adapt", at_version(agent, 2), 180)
    # The trainer knows what the agent runs: a version it produced (equal checksums), at most
    # the update in flight behind (a new one is made every 2 s).
    d = wait_for(
        "the trainer to see the agent in step",
        lambda: (x := device(trainer, "cam-1")) and x["agent_in_step"] and x,
        60,
    )
    assert d["agent_model_version"] >= d["model_version"] - 1
    assert d["checksums"][str(d["agent_model_version"])] == d["agent_model_checksum"]
    assert d["last_update_time"] > 0
    # A restart fetches nothing: the kept file is used as it is.
    stop(agent)
    mtime = fetched.stat().st_mtime_ns
    again = start_cam("cam-1-again")
    assert status(again)["model_version"] >= 2
    assert fetched.stat().st_mtime_ns == mtime


def test_link_budgets_hold_the_measured_rates_and_split_a_snapshot(
    cluster: Cluster, env: Env
) -> None:
    """A device with small budgets keeps adapting inside them while its neighbour without one
    uses far more; a fresh agent behind the trainer gets its snapshot in paced parts."""
    trainer = cluster.trainer(cluster.workdir / "state")
    port = trainer.grpc_port
    down, up = 30.0, 8.0
    budgeted = cluster.agent(
        "cam-b", port, seed=2, extra=("--downlink-kbps", f"{down:g}", "--uplink-kbps", f"{up:g}")
    )
    free = cluster.agent("cam-f", port, seed=3)
    started = time.monotonic()
    wait_for("the budgeted device to adapt", at_version(budgeted, 2), 180)
    time.sleep(max(0.0, 80.0 - (time.monotonic() - started)))
    b, f = device(trainer, "cam-b"), device(trainer, "cam-f")
    assert b is not None
    assert f is not None
    # The trainer's last-minute rates, and the agent's own count over its whole run.
    assert 0 < b["downlink_kbps"] <= down, b
    assert 0 < b["uplink_kbps"] <= up, b
    agent_view = status(budgeted)
    assert agent_view["downlink_kbps"] <= down, agent_view
    assert agent_view["uplink_kbps"] <= up, agent_view
    assert f["downlink_kbps"] > 3 * down, "the budget, not the scene, held the rate"
    link = b["link"]
    assert link["limited"], link
    assert link["limits"], link
    assert b["sampling_rate_fps"] < f["sampling_rate_fps"] or b["sampling_rate_fps"] < 0.5
    assert f["link"] is None
    assert status(free)["model_version"] >= 2
    print(
        "budgeted device, trainer's last minute:",
        {k: b[k] for k in ("uplink_kbps", "downlink_kbps", "sampling_rate_fps", "model_version")},
        "agent's whole run:",
        {k: agent_view[k] for k in ("uplink_kbps", "downlink_kbps")},
        "limits:",
        link["limits"],
        "unbudgeted device:",
        {k: f[k] for k in ("uplink_kbps", "downlink_kbps", "sampling_rate_fps", "model_version")},
    )
    # A fresh agent (version 0, the trainer's chain long acknowledged) needs a snapshot: it
    # comes in parts within a larger budget, and the agent lands on the trainer's version.
    stop(budgeted)
    parts_before = _metrics(trainer.http_port).get("edgeadapt_trainer_update_parts_total", 0.0)
    shutil.rmtree(cluster.workdir / "cam-b-state")
    fresh = cluster.agent("cam-b", port, seed=2, extra=("--downlink-kbps", "1500"))
    target = device(trainer, "cam-b")
    assert target is not None
    wait_for("the snapshot to arrive", at_version(fresh, int(target["model_version"])), 120)
    parts = _metrics(trainer.http_port)["edgeadapt_trainer_update_parts_total"] - parts_before
    assert parts >= 2
    assert status(fresh)["updates_rejected"] == 0


def test_garbage_upload_fails_only_that_stream(cluster: Cluster, env: Env) -> None:
    trainer = cluster.trainer(cluster.workdir / "state")
    agents = [cluster.agent(f"cam-{i}", trainer.grpc_port, seed=i) for i in (1, 2)]
    for a in agents:
        wait_for(f"{a.name} to adapt", at_version(a, 1), 120)
    before = {a.name: status(a)["model_version"] for a in agents}

    with secure_channel(env, trainer.grpc_port) as channel:
        stub = pb_grpc.AdaptationServiceStub(channel)  # type: ignore[no-untyped-call]
        garbage = pb.AgentMessage(
            samples=pb.SampleBatch(
                seq=7,
                codec=pb.CODEC_H264,
                data=b"\x00\x00\x00\x01garbage" * 50,
                timestamps=[time.time()],
                width=128,
                height=64,
            )
        )

        def requests() -> Iterator[pb.AgentMessage]:
            yield register(env, "cam-garbage")
            time.sleep(0.5)
            yield garbage
            time.sleep(30)  # the trainer must end the stream, not us

        call = stub.Connect(
            requests(), metadata=call_metadata("cam-garbage", mint_token(env.secret, "cam-garbage"))
        )
        with pytest.raises(grpc.RpcError) as exc:
            for _ in call:
                pass
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "sample batch 7" in (exc.value.details() or "")
        trailing = {str(m.key): str(m.value) for m in exc.value.trailing_metadata() or ()}
        assert trailing[REJECTED_BATCH_KEY] == "7"

    for a in agents:  # the other devices keep adapting, undisturbed
        wait_for(f"{a.name} to keep adapting", at_version(a, before[a.name] + 2), 120)
        s = status(a)
        assert s["connects"] == 1, "the other streams were not interrupted"
        assert s["updates_rejected"] == 0
        # The agent's Prometheus endpoint says the same.
        m = _metrics(a.http_port)
        assert m["edgeadapt_agent_model_version"] >= before[a.name] + 2
        assert m["edgeadapt_agent_frames_inferred_total"] > 0
        assert m['edgeadapt_agent_stream_bytes_total{direction="up"}'] > 0
        assert m['edgeadapt_agent_stream_bytes_total{direction="down"}'] > 0
        assert m['edgeadapt_agent_updates_total{result="rejected"}'] == 0
        assert (
            m['edgeadapt_agent_connection_state{edgeadapt_agent_connection_state="connected"}'] == 1
        )
    assert (
        _metrics(trainer.http_port)['edgeadapt_trainer_sample_batches_total{result="rejected"}']
        == 1
    )


def test_trainer_sigkill_agents_keep_inferring_and_resume(cluster: Cluster, env: Env) -> None:
    state = cluster.workdir / "state"
    port = free_port()
    trainer = cluster.trainer(state, port=port)
    agent = cluster.agent("cam-1", port)
    wait_for("two updates", lambda: status(agent)["model_version"] >= 2, 120)

    trainer.popen.send_signal(signal.SIGKILL)
    trainer.popen.wait(10)
    killed_at = status(agent)
    wait_for("the agent to notice", lambda: status(agent)["connection"] != "connected", 30)
    time.sleep(3)
    offline = status(agent)
    assert offline["frames_inferred"] >= killed_at["frames_inferred"] + 30, "inference stopped"
    assert offline["model_version"] == killed_at["model_version"], "the model in use is kept"

    restarted = cluster.trainer(state, port=port, name="trainer-2")
    d = wait_for("the restored device", lambda: device(restarted, "cam-1"), 30)
    assert d["model_version"] >= killed_at["model_version"]
    wait_for("the agent to reconnect", lambda: status(agent)["connects"] >= 2, 60)
    wait_for(
        "training to continue from the persisted version",
        lambda: status(agent)["model_version"] >= d["model_version"] + 2,
        120,
    )
    d = device(restarted, "cam-1")
    assert d is not None
    assert d["snapshots_sent"] == 0, "resumed from the persisted version, no full resend"
    s = status(agent)
    assert s["updates_rejected"] == 0
    assert d["checksums"].get(str(s["model_version"])) == s["model_checksum"]
    assert s["batches_dropped"] == 0


def test_sigterm_is_graceful_and_state_persists(cluster: Cluster, env: Env) -> None:
    state = cluster.workdir / "state"
    trainer = cluster.trainer(state)
    agent = cluster.agent("cam-1", trainer.grpc_port)
    wait_for("an update", lambda: status(agent)["model_version"] >= 1, 120)

    seconds = stop(agent, timeout=30)
    assert agent.popen.returncode == 0
    assert seconds < 10, f"agent took {seconds:.1f} s to stop"
    summary = json.loads((cluster.workdir / "cam-1.summary.json").read_text())
    assert (cluster.workdir / "cam-1-state" / "model.pt").exists()

    seconds = stop(trainer, timeout=30)
    assert trainer.popen.returncode == 0
    assert seconds < 15, f"trainer took {seconds:.1f} s to stop"
    assert (state / "cam-1" / "state.pt").exists()

    # Both come back where they stopped: no snapshot, the same version and checksum.
    trainer = cluster.trainer(state, name="trainer-2")
    agent = cluster.agent("cam-1", trainer.grpc_port, extra=("--duration", "600"))

    def connected() -> dict[str, Any] | None:
        st = status(agent)
        return st if st["connects"] >= 1 else None

    s = wait_for("reconnect", connected, 60)
    assert s["model_version"] >= summary["model_version"]
    d = device(trainer, "cam-1")
    assert d is not None
    assert d["snapshots_sent"] == 0

    # A device that lost its model (a new agent with no state) gets a float32 snapshot of the
    # trainer's over the stream and runs exactly the trainer's model.
    wait_for("a later version", at_version(agent, s["model_version"] + 1), 120)
    stop(agent, timeout=30)
    shutil.rmtree(cluster.workdir / "cam-1-state")
    agent = cluster.agent("cam-1", trainer.grpc_port, extra=("--duration", "600"))
    wait_for("the snapshot", lambda: (device(trainer, "cam-1") or {}).get("snapshots_sent") == 1)
    s = wait_for("the snapshot applied", lambda: (st := status(agent))["model_version"] > 0 and st)
    d = device(trainer, "cam-1")
    assert d is not None
    assert d["checksums"].get(str(s["model_version"])) == s["model_checksum"]
    assert s["updates_rejected"] == 0


# -- a fake trainer in this process feeds a real agent corrupt updates ---------------------------


class FakeTrainer(pb_grpc.AdaptationServiceServicer):
    def __init__(self, script: list[pb.TrainerMessage], then: pb.TrainerMessage) -> None:
        self.script, self.then = script, then
        self.received: list[pb.AgentMessage] = []
        self.done = threading.Event()
        self.release = threading.Event()

    def Connect(self, request_iterator: Any, context: Any) -> Iterator[pb.TrainerMessage]:  # noqa: N802
        first = next(request_iterator)
        self.received.append(first)

        def read() -> None:
            with contextlib.suppress(grpc.RpcError):  # the stream ends with the test
                for m in request_iterator:
                    self.received.append(m)

        threading.Thread(target=read, daemon=True).start()
        yield pb.TrainerMessage(
            welcome=pb.Welcome(settings=pb.Settings(sampling_rate_fps=1, update_interval_s=10))
        )
        for m in self.script:
            time.sleep(0.3)
            yield m
        self.done.set()
        self.release.wait(60)
        yield self.then
        while context.is_active():
            time.sleep(0.2)


def test_corrupt_and_truncated_updates_are_rejected(cluster: Cluster, env: Env) -> None:
    student = load_checkpoint_model(env.student)
    flat = parameter_vector(student)
    base = model_checksum(flat)
    n = flat.numel()
    idx = np.arange(0, n, 97, dtype=np.int64)
    new = flat.clone()
    new[idx] += 0.01
    values = new[idx].half().numpy()
    new[idx] = new[idx].half().float()
    good = encode_update(ModelUpdate(1, 0, n, idx, values))
    good_msg = update_message(good, model_checksum(new))

    flipped = pb.ModelUpdate()
    flipped.CopyFrom(good_msg)
    flipped.values = bytes([good_msg.values[0] ^ 0x40]) + good_msg.values[1:]
    truncated = pb.ModelUpdate()
    truncated.CopyFrom(good_msg)
    truncated.values = good_msg.values[: len(good_msg.values) // 2]
    wrong_model = pb.ModelUpdate()
    wrong_model.CopyFrom(good_msg)
    wrong_model.model_checksum ^= 1
    # Malformed beyond corruption: an out-of-range enum, and a zlib bomb under a valid checksum.
    negative = pb.ModelUpdate()
    negative.CopyFrom(good_msg)
    negative.mask_encoding = -1  # type: ignore[assignment]
    bomb_mask = zlib.compress(b"\0" * 64_000_000, 9)
    header = HEADER.pack(b"EAUP", 1, MASK_BITS, 0, 1, 0, n, 0, len(bomb_mask), 0)
    crc = zlib.crc32(bomb_mask, zlib.crc32(header))
    bomb = update_message(header[:-4] + struct.pack("<I", crc) + bomb_mask, base)
    bad = (flipped, truncated, wrong_model, negative, bomb)
    script = [pb.TrainerMessage(update=m) for m in bad]
    fake = FakeTrainer(script, then=pb.TrainerMessage(update=good_msg))
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_AdaptationServiceServicer_to_server(fake, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        agent = cluster.agent("cam-1", port, secure=False)
        wait_for("the script", fake.done.wait, 60)
        s = wait_for(
            "five rejections", lambda: (st := status(agent))["updates_rejected"] == 5 and st, 30
        )
        assert s["model_version"] == 0
        assert s["updates_applied"] == 0
        assert s["model_checksum"] == f"{base:08x}", "a rejected update changed the model"

        def received(kind: str) -> list[pb.AgentMessage]:
            return [m for m in list(fake.received) if m.WhichOneof("body") == kind]

        wait_for("five acks and resyncs", lambda: len(received("resync")) == 5, 30)
        acks = [m.ack for m in received("ack")]
        assert [a.applied for a in acks] == [False] * 5
        assert "checksum" in acks[0].reason
        assert "model checksum" in acks[2].reason
        assert "mask encoding" in acks[3].reason
        assert "more than" in acks[4].reason
        # The link stayed up through all of it, and the agent says it is healthy.
        assert s["connects"] == 1
        assert s["connection"] == "connected"
        assert s["thread_failures"] == 0
        assert healthz(agent.http_port) == 200
        resyncs = [m.resync for m in received("resync")]
        assert all(r.have_version == 0 for r in resyncs)
        assert all(r.have_checksum == base for r in resyncs)
        # The intact update still applies, and the agent then runs exactly the trainer's model.
        fake.release.set()
        s = wait_for(
            "the good update", lambda: (st := status(agent))["updates_applied"] == 1 and st
        )
        assert s["model_version"] == 1
        assert s["updates_rejected"] == 5
        assert s["model_checksum"] == f"{model_checksum(new):08x}"
    finally:
        server.stop(0)


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _metrics(port: int) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


# -- offline autonomy and hostile input --------------------------------------------------------


def test_an_agent_offline_with_a_full_queue_keeps_inferring_and_exits(
    cluster: Cluster, env: Env
) -> None:
    """The offline queue overflows within seconds; the agent must neither hang nor stop."""
    with socket.socket() as s:  # a port nobody listens on: the trainer is unreachable
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
        agent = cluster.agent(
            "cam-offline",
            dead,
            extra=("--max-pending", "2", "--t-update", "1", "--duration", "14"),
            source="synthetic:seed=1,duration=600,fps=10",
        )
        t0 = time.monotonic()
        samples = []
        while agent.popen.poll() is None and time.monotonic() - t0 < 40:
            st = get_json(agent.http_port, timeout=3)
            if st is not None:
                samples.append(st)
            time.sleep(1)
    rc = agent.popen.wait(30)
    elapsed = time.monotonic() - t0
    assert rc == 0
    assert elapsed < 14 + 10 + 8, "exits within its duration plus the drain timeout"
    assert len(samples) >= 8, "/status answered all along"
    late = samples[-1]
    assert late["batches_dropped"] >= 5, late
    assert late["batches_pending"] <= 2
    # Inference at the source's 10 fps all through the run (after the first 5 s window filled;
    # the last samples may fall into the drain after the duration, when inference has stopped
    # and the link may already show "stopped").
    running = [st for st in samples if 6.0 <= st["elapsed_s"] <= 13.0]
    assert len(running) >= 4, samples
    assert all(st["connection"] in ("connecting", "disconnected") for st in running), running
    assert min(st["inference_fps_5s"] for st in running) >= 9.0, running
    summary = json.loads((cluster.workdir / "cam-offline.summary.json").read_text())
    assert summary["frames_inferred"] >= 130
    assert summary["batches_sealed"] == summary["batches_dropped"] + summary["batches_pending"]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_hostile_device_cannot_grow_the_trainer_or_disturb_the_others(
    cluster: Cluster, env: Env
) -> None:
    from edgeadapt.video.codec import encode_h264

    trainer = cluster.trainer(cluster.workdir / "state")
    agent = cluster.agent("cam-1", trainer.grpc_port, seed=1)
    wait_for("cam-1 to adapt", at_version(agent, 1), 120)
    before = status(agent)["model_version"]
    rss0 = _rss_mb(trainer.popen.pid)
    metadata = call_metadata("cam-evil", mint_token(env.secret, "cam-evil"))
    big = encode_h264([np.zeros((720, 1280, 3), np.uint8)] * 40)  # a few KB
    lies = {
        "one frame declared, forty 720p frames sent": pb.SampleBatch(
            seq=1, codec=pb.CODEC_H264, data=big, timestamps=[time.time()], width=1280, height=720
        ),
        "small frames declared, 720p sent": pb.SampleBatch(
            seq=2,
            codec=pb.CODEC_H264,
            data=big,
            timestamps=[time.time() + i for i in range(10)],
            width=128,
            height=64,
        ),
    }
    with secure_channel(env, trainer.grpc_port) as channel:
        stub = pb_grpc.AdaptationServiceStub(channel)  # type: ignore[no-untyped-call]
        for what, lie in lies.items():
            t0 = time.monotonic()
            call = stub.Connect(
                iter([register(env, "cam-evil"), pb.AgentMessage(samples=lie)]), metadata=metadata
            )
            with pytest.raises(grpc.RpcError) as exc:
                for _ in call:
                    pass
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
            assert time.monotonic() - t0 < 20, what

        # A flood of resync requests from a device that never reads its stream: at most one
        # snapshot is made, the outbound queue stays bounded, the stream is ended.
        wrong = register(env, "cam-evil")
        wrong.register.model_checksum ^= 1

        def flood() -> Iterator[pb.AgentMessage]:
            yield wrong
            for _ in range(3000):
                yield pb.AgentMessage(resync=pb.ResyncRequest(have_version=0, have_checksum=1))

        call = stub.Connect(flood(), metadata=metadata)
        time.sleep(8)  # never read
        evil = device(trainer, "cam-evil")
        assert evil is not None
        assert evil["snapshots_sent"] <= 2, evil
        call.cancel()
    assert _rss_mb(trainer.popen.pid) - rss0 < 150
    wait_for("cam-1 to keep adapting", at_version(agent, before + 2), 120)
    s = status(agent)
    assert s["connects"] == 1
    assert s["updates_rejected"] == 0
    m = _metrics(trainer.http_port)
    assert m['edgeadapt_trainer_sample_batches_total{result="rejected"}'] == 2
    assert m['edgeadapt_trainer_resync_requests_total{result="deferred"}'] > 100
