"""How each workload is started: typed options that render a process's command line.

The operator renders pods from these (``controllers``), and so do the supervisors that start
processes on one machine (``procs``: the demo, the benchmarks, the tests). Each process's
``__main__`` parses the same arguments back with its own parser, and a unit test parses every
container the operator renders with it, so the two ends cannot drift apart.

The files a pod mounts live at the fixed paths below; the options name them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# Where pods mount what the operator gives them.
CONFIG_DIR = "/etc/edgeadapt/config"  # the trainer's policy.json (a ConfigMap)
TLS_DIR = "/etc/edgeadapt/tls"  # tls.crt, tls.key, ca.crt (a Secret)
TOKEN_KEY_DIR = "/etc/edgeadapt/token-key"  # the policy's token key (a Secret)
CA_DIR = "/etc/edgeadapt/ca"  # ca.crt the agent trusts (a ConfigMap)
TOKEN_DIR = "/etc/edgeadapt/token"  # the device's token (a Secret)
CLIENT_CA_DIR = "/etc/edgeadapt/client-ca"  # ca.crt that signs devices' client certificates
CLIENT_TLS_DIR = "/etc/edgeadapt/client-tls"  # the device's client tls.crt, tls.key (a Secret)
GATING_CA_DIR = "/etc/edgeadapt/gating-ca"  # ca.crt of the ModelZoo's gating service (ConfigMap)
GATING_TOKEN_DIR = "/etc/edgeadapt/gating-token"  # the trainers' token for the zoo (a Secret)
STATE_DIR = "/var/lib/edgeadapt"  # the pod's claim: models and per-device state
TMP_DIR = "/tmp"  # an emptyDir: the root file system is read-only

TLS_CERT, TLS_KEY, CA_CERT = "tls.crt", "tls.key", "ca.crt"
TOKEN_KEY_FILE = "key"
TOKEN_FILE = "token"
CONFIG_FILE = "policy.json"

# What the processes implement; the CRDs' enums list exactly these (a unit test checks it).
TEACHER_ARCHS = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50")
STUDENT_ARCHS = ("lraspp_mobilenet_v3_large",)
SYNTHETIC_PROFILES = ("bench", "tiny")
STRATEGIES = ("ams", "recl", "ams+recl", "edgesync", "ams+edgesync")
EDGESYNC_UPLOAD_FRACTION = 0.7  # EdgeSync's k, for its strategies unless sampling says otherwise


def uses_recl(strategy: str) -> bool:
    """The strategy selects models from a ModelZoo (RECL)."""
    return "recl" in strategy.split("+")


def uses_edgesync(strategy: str) -> bool:
    """The strategy filters uploads and trains the most urgent device first (EdgeSync)."""
    return "edgesync" in strategy.split("+")


TASKS = ("segmentation",)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_TORCHVISION = re.compile(r"[A-Za-z0-9_]+_Weights\.[A-Z0-9_]+")

SourceKind = Literal["synthetic", "torchvision", "url", "file"]


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights come from.

    - ``synthetic:<profile>``: trained by the process on the project's synthetic scenes on first
      start, then kept on its volume (a cluster with no internet access needs nothing else);
    - ``torchvision:<Enum>.<NAME>``: published torchvision weights, downloaded once;
    - ``https://...#sha256=<hex>``: a checkpoint file, verified against its SHA-256;
    - ``file:<path>``: a checkpoint on a mounted volume (a ModelZoo's claim, say).
    """

    kind: SourceKind
    value: str
    sha256: str = ""

    def render(self) -> str:
        if self.kind == "url":
            return f"{self.value}#sha256={self.sha256}"
        if self.kind == "file":
            return f"file:{self.value}"
        return f"{self.kind}:{self.value}"

    @classmethod
    def parse(cls, text: str) -> WeightsSource:
        """The source a rendered string names; ``ValueError`` says what is wrong with it."""
        if text.startswith("https://"):
            url, _, frag = text.partition("#")
            digest = frag.removeprefix("sha256=")
            if not frag.startswith("sha256=") or not _SHA256.fullmatch(digest):
                raise ValueError(f"weights {text!r}: an https source needs #sha256=<64 hex digits>")
            return cls("url", url, digest)
        kind, sep, value = text.partition(":")
        if not sep or not value:
            raise ValueError(
                f"weights {text!r}: expected synthetic:<profile>, torchvision:<Enum>.<NAME>, "
                "https://...#sha256=<hex> or file:<path>"
            )
        if kind == "synthetic":
            if value not in SYNTHETIC_PROFILES:
                raise ValueError(
                    f"weights {text!r}: synthetic profile must be one of {SYNTHETIC_PROFILES}"
                )
            return cls("synthetic", value)
        if kind == "torchvision":
            if not _TORCHVISION.fullmatch(value):
                raise ValueError(f"weights {text!r}: expected torchvision:<Enum>_Weights.<NAME>")
            return cls("torchvision", value)
        if kind == "file":
            if not value.startswith("/"):
                raise ValueError(f"weights {text!r}: a file source needs an absolute path")
            return cls("file", value)
        raise ValueError(f"weights {text!r}: unknown source kind {kind!r}")


@dataclass(frozen=True)
class ModelRef:
    """A model by torchvision builder and weights source."""

    architecture: str
    weights: WeightsSource

    def render(self) -> str:
        return f"{self.architecture}={self.weights.render()}"

    @classmethod
    def parse(cls, text: str, architectures: tuple[str, ...]) -> ModelRef:
        arch, sep, weights = text.partition("=")
        if not sep:
            raise ValueError(f"model {text!r}: expected <architecture>=<weights source>")
        if arch not in architectures:
            raise ValueError(f"model {text!r}: architecture must be one of {architectures}")
        return cls(arch, WeightsSource.parse(weights))


def _flag(out: list[str], name: str, value: object) -> None:
    """Append ``name`` (a switch, for True) or ``name value``; nothing for None, False or ''."""
    if value is True:
        out.append(name)
    elif value is not None and value is not False and value != "":
        out.extend((name, str(value)))


@dataclass(frozen=True)
class TrainerLaunch:
    """``python -m edgeadapt.trainer``: the options a trainer is started with."""

    MODULE = "edgeadapt.trainer"

    state_dir: str
    teacher: ModelRef | None = None  # a checkpoint path through teacher_file instead
    student: ModelRef | None = None
    teacher_file: str | None = None
    student_file: str | None = None
    models_dir: str | None = None
    config: str | None = None
    listen: str = "0.0.0.0:50051"
    http_listen: str = "0.0.0.0:9090"
    tls_cert: str | None = None
    tls_key: str | None = None
    client_ca: str | None = None
    token_key_file: str | None = None
    insecure: bool = False
    # RECL (strategy recl or ams+recl, from the config): the ModelZoo's gating service
    gating: str | None = None
    gating_ca: str | None = None
    gating_token_file: str | None = None
    gating_caller: str | None = None
    ready_file: str | None = None
    log_format: str = "text"

    def args(self) -> list[str]:
        out: list[str] = []
        _flag(out, "--state-dir", self.state_dir)
        _flag(out, "--config", self.config)
        _flag(out, "--teacher-model", self.teacher.render() if self.teacher else None)
        _flag(out, "--student-model", self.student.render() if self.student else None)
        _flag(out, "--teacher", self.teacher_file)
        _flag(out, "--student", self.student_file)
        _flag(out, "--models-dir", self.models_dir)
        _flag(out, "--listen", self.listen)
        _flag(out, "--http-listen", self.http_listen)
        _flag(out, "--tls-cert", self.tls_cert)
        _flag(out, "--tls-key", self.tls_key)
        _flag(out, "--client-ca", self.client_ca)
        _flag(out, "--token-secret-file", self.token_key_file)
        _flag(out, "--insecure", self.insecure)
        _flag(out, "--gating", self.gating)
        _flag(out, "--gating-ca", self.gating_ca)
        _flag(out, "--gating-token-file", self.gating_token_file)
        _flag(out, "--gating-caller", self.gating_caller)
        _flag(out, "--ready-file", self.ready_file)
        _flag(out, "--log-format", self.log_format if self.log_format != "text" else None)
        return out

    def command(self, python: str = "python") -> list[str]:
        return [python, "-m", self.MODULE]


@dataclass(frozen=True)
class GatingLaunch:
    """``python -m edgeadapt.gating``: the options a ModelZoo's gating service is started with."""

    MODULE = "edgeadapt.gating"

    zoo_dir: str
    arch: str
    top_k: int = 10
    alpha: float = 0.02
    gamma: int = 5
    eta: int = 4
    q: int = 3000
    listen: str = "0.0.0.0:50052"
    http_listen: str = "0.0.0.0:9090"
    tls_cert: str | None = None
    tls_key: str | None = None
    token_key_file: str | None = None
    insecure: bool = False
    ready_file: str | None = None
    log_format: str = "text"

    def args(self) -> list[str]:
        out: list[str] = []
        _flag(out, "--zoo-dir", self.zoo_dir)
        _flag(out, "--arch", self.arch)
        _flag(out, "--top-k", self.top_k)
        _flag(out, "--alpha", self.alpha)
        _flag(out, "--gamma", self.gamma)
        _flag(out, "--eta", self.eta)
        _flag(out, "--q", self.q)
        _flag(out, "--listen", self.listen)
        _flag(out, "--http-listen", self.http_listen)
        _flag(out, "--tls-cert", self.tls_cert)
        _flag(out, "--tls-key", self.tls_key)
        _flag(out, "--token-secret-file", self.token_key_file)
        _flag(out, "--insecure", self.insecure)
        _flag(out, "--ready-file", self.ready_file)
        _flag(out, "--log-format", self.log_format if self.log_format != "text" else None)
        return out

    def command(self, python: str = "python") -> list[str]:
        return [python, "-m", self.MODULE]


@dataclass(frozen=True)
class AgentLaunch:
    """``python -m edgeadapt.edge_agent``: the options an edge agent is started with."""

    MODULE = "edgeadapt.edge_agent"

    device_id: str
    source: str
    trainer: str = ""
    server_name: str | None = None
    ca_file: str | None = None
    token_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    student_file: str | None = None  # without it, the starting model comes from the trainer
    state_dir: str | None = None
    adapt: bool = True
    loop: bool = False  # a video that ends starts again (a device runs until it is deleted)
    http_listen: str = "0.0.0.0:9090"
    max_pending: int | None = None
    expert_cache: int | None = None  # the EdgeDevice's spec.expertCache.experts
    uplink_kbps: float | None = None  # the EdgeDevice's spec.link budgets
    downlink_kbps: float | None = None
    backoff_max: float | None = None
    drain_timeout: float | None = None
    duration: float | None = None
    pace: bool = True
    summary_out: str | None = None
    ready_file: str | None = None
    log_format: str = "text"

    def args(self) -> list[str]:
        out: list[str] = []
        _flag(out, "--device-id", self.device_id)
        _flag(out, "--source", self.source)
        out.extend(("--trainer", self.trainer))
        _flag(out, "--server-name", self.server_name)
        _flag(out, "--ca-file", self.ca_file)
        _flag(out, "--token-file", self.token_file)
        _flag(out, "--cert-file", self.cert_file)
        _flag(out, "--key-file", self.key_file)
        _flag(out, "--insecure", self.insecure)
        _flag(out, "--student", self.student_file)
        _flag(out, "--state-dir", self.state_dir)
        _flag(out, "--no-adapt", not self.adapt)
        _flag(out, "--loop", self.loop)
        _flag(out, "--http-listen", self.http_listen)
        _flag(out, "--max-pending", self.max_pending)
        _flag(out, "--expert-cache", self.expert_cache)
        _flag(out, "--uplink-kbps", self.uplink_kbps)
        _flag(out, "--downlink-kbps", self.downlink_kbps)
        _flag(out, "--backoff-max", self.backoff_max)
        _flag(out, "--drain-timeout", self.drain_timeout)
        _flag(out, "--duration", self.duration)
        _flag(out, "--no-pace", not self.pace)
        _flag(out, "--summary-out", self.summary_out)
        _flag(out, "--ready-file", self.ready_file)
        _flag(out, "--log-format", self.log_format if self.log_format != "text" else None)
        return out

    def command(self, python: str = "python") -> list[str]:
        return [python, "-m", self.MODULE]
