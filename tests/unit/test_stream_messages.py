"""The adaptation stream's pure parts: update messages, tokens, the sampler, proto drift."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeadapt._proto.stream.v1 import stream_pb2 as pb
from edgeadapt.adapt.ams import EdgeModel
from edgeadapt.adapt.update import (
    ModelUpdate,
    UpdateError,
    decode_update,
    encode_update,
    model_checksum,
    parameter_vector,
    snapshot_update,
)
from edgeadapt.edge_agent.agent import Sampler, upload_filter
from edgeadapt.models.zoo import build_student
from edgeadapt.stream.auth import (
    call_metadata,
    from_metadata,
    mint_token,
    valid_device_id,
    verify_token,
)
from edgeadapt.stream.messages import update_bytes, update_message, wire_size

REPO = Path(__file__).resolve().parents[2]


def _sparse(n: int = 20_000, version: int = 3) -> bytes:
    idx = np.arange(5, n, 37, dtype=np.int64)
    values = np.linspace(-1, 1, len(idx)).astype(np.float16)
    return encode_update(ModelUpdate(version, version - 1, n, idx, values))


def test_message_round_trip_is_the_encoded_update() -> None:
    data = _sparse()
    msg = update_message(data, model_checksum=0xDEADBEEF)
    assert update_bytes(msg) == data
    wire = pb.ModelUpdate.FromString(msg.SerializeToString())
    assert update_bytes(wire) == data
    assert wire.version == 3
    assert wire.base_version == 2
    assert wire.model_checksum == 0xDEADBEEF
    # The message is no larger than the encoded update it carries, plus a few tag bytes.
    assert wire_size(msg) <= len(data) + 40


@pytest.mark.parametrize("field", ["values", "mask", "version", "base_version", "num_params"])
def test_a_changed_field_fails_the_checksum(field: str) -> None:
    msg = update_message(_sparse(), 0)
    if field in ("values", "mask"):
        blob = getattr(msg, field)
        setattr(msg, field, bytes([blob[0] ^ 1]) + blob[1:])
    else:
        setattr(msg, field, getattr(msg, field) + 1)
    with pytest.raises(UpdateError):
        decode_update(update_bytes(msg))


def test_truncated_values_are_refused() -> None:
    msg = update_message(_sparse(), 0)
    msg.values = msg.values[:-3]
    with pytest.raises(UpdateError):
        decode_update(update_bytes(msg))


def test_float32_snapshot_restores_any_version_exactly() -> None:
    torch.manual_seed(0)
    server = build_student(7, width_mult=0.5)
    edge = EdgeModel(build_student(7, width_mult=0.5), version=5)
    flat = parameter_vector(server)
    data = encode_update(snapshot_update(flat, 9))
    assert decode_update(data).values.dtype == np.float32
    assert edge.apply(data, expected_checksum=model_checksum(flat))
    assert edge.version == 9
    assert edge.checksum() == model_checksum(flat)
    assert torch.equal(parameter_vector(edge.inactive), flat), "both copies patched"


def test_edge_refuses_an_update_that_would_not_match_the_trainer() -> None:
    torch.manual_seed(0)
    edge = EdgeModel(build_student(7, width_mult=0.5))
    before = edge.checksum()
    n = edge.num_params
    update = ModelUpdate(
        1, 0, n, np.arange(0, n, 50, dtype=np.int64), np.full(len(range(0, n, 50)), 0.5, np.float16)
    )
    assert not edge.apply(encode_update(update), expected_checksum=before ^ 1)
    assert edge.rejected == 1
    assert "model checksum" in edge.last_error
    assert edge.version == 0
    assert edge.checksum() == before
    assert torch.equal(parameter_vector(edge.inactive), parameter_vector(edge.active))


def test_tokens_are_per_device_and_per_secret() -> None:
    secret = b"s" * 32
    token = mint_token(secret, "cam-1")
    assert verify_token(secret, "cam-1", token)
    assert not verify_token(secret, "cam-2", token)
    assert not verify_token(b"t" * 32, "cam-1", token)
    assert not verify_token(secret, "cam-1", token[:-1])
    assert from_metadata(call_metadata("cam-1", token)) == ("cam-1", token)
    assert from_metadata(()) == ("", "")


@pytest.mark.parametrize("name", ["cam-1", "a", "site.cam-03"])
def test_valid_device_ids(name: str) -> None:
    assert valid_device_id(name)


@pytest.mark.parametrize("name", ["", "Cam", "../x", "a/b", "-a", "a..b", "x" * 254])
def test_invalid_device_ids(name: str) -> None:
    assert not valid_device_id(name)


def test_sampler_takes_the_rate_and_seals_every_interval() -> None:
    s = Sampler(rate=1.0, interval=10.0)
    batches = []
    for i in range(30 * 35):  # 35 s at 30 fps
        sealed = s.offer(np.zeros((2, 2, 3), np.uint8), i / 30)
        if sealed is not None:
            batches.append(sealed[1])
    assert len(batches) == 3
    assert [len(b) for b in batches] == [10, 10, 10]
    assert batches[1][0] == pytest.approx(10.0, abs=1 / 30)
    s.set(rate=0.2, interval=20.0)
    later = []
    for i in range(30 * 35, 30 * 80):
        sealed = s.offer(np.zeros((2, 2, 3), np.uint8), i / 30)
        if sealed is not None:
            later.append(sealed[1])
    assert later
    assert all(len(b) <= 5 for b in later[1:])
    assert all(np.diff(b).min() >= 4.9 for b in later[1:] if len(b) > 1)


def test_the_upload_filter_keeps_the_most_uncertain_fraction_in_capture_order() -> None:
    # Entropy dominates; the newest sample wins ties (EdgeSync's recency, sign corrected).
    entropy = [0.1, 1.5, 0.2, 1.2, 0.3, 0.9, 0.05, 1.7, 0.4, 0.0]
    assert upload_filter(entropy, 0.7) == [1, 2, 3, 4, 5, 7, 8]
    assert upload_filter([0.5] * 10, 0.3) == [7, 8, 9]
    assert upload_filter([0.5] * 3, 0.7) == [0, 1, 2], "ceil(0.7 * 3) = 3"
    assert upload_filter([], 0.7) == []


def test_a_filtering_sampler_seals_the_fraction_and_counts_the_rest() -> None:
    s = Sampler(rate=1.0, interval=10.0, upload_fraction=0.7)
    rng = np.random.default_rng(0)
    sealed = []
    for i in range(30 * 21):
        out = s.offer(np.zeros((2, 2, 3), np.uint8), i / 30, float(rng.random()))
        if out is not None:
            sealed.append(out[1])
    assert [len(b) for b in sealed] == [7, 7]
    assert all(np.diff(b).min() > 0 for b in sealed), "capture order"
    assert s.filtered == 6
    s.set(1.0, 10.0, 0.0)  # a trainer that asks for no filtering
    assert not s.filtering


def test_generated_code_matches_the_protos() -> None:
    env = dict(os.environ, EDGEADAPT_VENV=str(Path(sys.executable).parents[1]))
    proc = subprocess.run(
        [str(REPO / "scripts" / "gen-proto.sh"), "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("mask_encoding", -1, "mask encoding"),
        ("mask_encoding", 7, "mask encoding"),
        ("value_type", -3, "value type"),
        ("value_type", 9, "value type"),
        ("num_params", 0, "out of range"),
        ("num_params", 2**40, "out of range"),
        ("num_params", 2, "values for a model"),
    ],
)
def test_out_of_range_fields_are_an_update_error(field: str, value: int, match: str) -> None:
    msg = update_message(_sparse(), 0)
    wire = msg.SerializeToString()
    bad = pb.ModelUpdate.FromString(wire)
    setattr(bad, field, value)  # the agent sees whatever the wire carries
    bad = pb.ModelUpdate.FromString(bad.SerializeToString())
    with pytest.raises(UpdateError, match=match):
        update_bytes(bad)


def test_a_device_id_with_a_trailing_newline_is_invalid() -> None:
    assert not valid_device_id("cam-1\n")
    with pytest.raises(ValueError, match="invalid device id"):
        mint_token(b"s" * 32, "cam-1\n")
