"""The sparse update wire format and the edge's double-buffered apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeadapt.adapt.ams import EdgeModel
from edgeadapt.adapt.update import (
    HEADER,
    MASK_ALL,
    MASK_BITS,
    MASK_GAPS,
    ModelUpdate,
    UpdateError,
    apply_update,
    decode_update,
    encode_update,
)
from edgeadapt.models.zoo import build_student


def _update(n: int, idx: np.ndarray, seed: int = 0, version: int = 1) -> ModelUpdate:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=len(idx)).astype(np.float32)
    return ModelUpdate(
        version, version - 1, n, np.sort(idx).astype(np.int64), values.astype(np.float16)
    )


@pytest.mark.parametrize("kind", ["random", "clustered", "full"])
def test_round_trip_at_fp16_and_exact_byte_count(kind: str) -> None:
    n = 50_000
    rng = np.random.default_rng(3)
    if kind == "random":
        idx = rng.choice(n, 2500, replace=False)
    elif kind == "clustered":
        idx = np.arange(10_000, 12_500)
    else:
        idx = np.arange(n)
    upd = _update(n, idx)
    data = encode_update(upd)
    back = decode_update(data, n)
    assert np.array_equal(back.indices, upd.indices)
    assert np.array_equal(back.values, upd.values)
    assert (back.version, back.base_version) == (1, 0)
    mask_len = HEADER.unpack_from(data)[8]
    assert len(data) == HEADER.size + mask_len + 2 * len(idx)
    encoding = HEADER.unpack_from(data)[2]
    expected = {"full": {MASK_ALL}, "random": {MASK_BITS, MASK_GAPS}, "clustered": {MASK_GAPS}}
    assert encoding in expected[kind]


def test_mask_costs_close_to_its_entropy_for_a_random_five_percent() -> None:
    n = 200_000
    idx = np.random.default_rng(0).choice(n, n // 20, replace=False)
    mask_len = HEADER.unpack_from(encode_update(_update(n, idx)))[8]
    entropy_bytes = n * (-(0.05 * np.log2(0.05) + 0.95 * np.log2(0.95))) / 8
    assert mask_len < 1.35 * entropy_bytes  # zlib on packed bits: within 35% of the bound


def test_corrupt_truncated_and_foreign_updates_are_refused() -> None:
    n = 10_000
    data = encode_update(_update(n, np.arange(0, n, 17)))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    with pytest.raises(UpdateError, match="checksum"):
        decode_update(bytes(flipped), n)
    with pytest.raises(UpdateError, match="bytes"):
        decode_update(data[:-3], n)
    with pytest.raises(UpdateError, match="header"):
        decode_update(data[:10], n)
    with pytest.raises(UpdateError, match="parameters"):
        decode_update(data, n + 1)
    with pytest.raises(UpdateError, match="magic"):
        decode_update(b"XXXX" + data[4:], n)


def test_non_finite_values_are_refused() -> None:
    upd = _update(100, np.arange(10))
    bad = ModelUpdate(1, 0, 100, upd.indices, np.full(10, np.inf, np.float16))
    with pytest.raises(UpdateError, match="non-finite"):
        decode_update(encode_update(bad), 100)


def test_apply_writes_only_the_selected_positions() -> None:
    flat = torch.zeros(20)
    apply_update(flat, ModelUpdate(1, 0, 20, np.array([2, 5]), np.array([1.5, -2.0], np.float16)))
    assert flat[2] == 1.5
    assert flat[5] == -2.0
    assert float(flat.abs().sum()) == 3.5


def test_edge_model_rejects_corrupt_and_stale_updates_and_keeps_its_model() -> None:
    torch.manual_seed(0)
    student = build_student(7, width_mult=0.5)
    edge = EdgeModel(student)
    n = edge.num_params
    before = torch.nn.utils.parameters_to_vector(edge.active.parameters()).clone()

    good = encode_update(_update(n, np.arange(0, n, 50)))
    corrupt = bytearray(good)
    corrupt[-1] ^= 0xFF
    assert edge.apply(bytes(corrupt)) is False
    assert edge.rejected == 1
    assert edge.version == 0
    assert torch.equal(torch.nn.utils.parameters_to_vector(edge.active.parameters()), before)

    stale = encode_update(_update(n, np.arange(0, n, 50), version=5))  # base version 4
    assert edge.apply(stale) is False
    assert edge.rejected == 2

    assert edge.apply(good) is True
    after = torch.nn.utils.parameters_to_vector(edge.active.parameters())
    spare = torch.nn.utils.parameters_to_vector(edge.inactive.parameters())
    assert edge.version == 1
    assert edge.applied == 1
    assert not torch.equal(after, before)
    assert torch.equal(after, spare)  # both copies patched


def _forge(encoding: int, n: int, mask: bytes, values: bytes = b"", value_type: int = 0) -> bytes:
    """An update with a valid checksum around whatever mask and values are given."""
    import struct
    import zlib

    count = len(values) // (4 if value_type else 2)
    header = HEADER.pack(b"EAUP", 1, encoding, value_type, 2, 1, n, count, len(mask), 0)
    body = mask + values
    crc = zlib.crc32(body, zlib.crc32(header))
    return header[:-4] + struct.pack("<I", crc) + body


def test_a_zlib_bomb_in_the_mask_is_refused_without_inflating_it() -> None:
    import tracemalloc
    import zlib

    n = 10_000
    bomb = zlib.compress(b"\0" * 64_000_000, 9)  # 62 KB that inflate to 64 MB
    tracemalloc.start()
    try:
        with pytest.raises(UpdateError, match="more than"):
            decode_update(_forge(MASK_BITS, n, bomb), n)
        with pytest.raises(UpdateError, match="more than"):
            decode_update(_forge(MASK_GAPS, n, bomb, b"\0\0" * 4), n)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000


def test_masks_that_do_not_fit_the_model_are_refused() -> None:
    import zlib

    n = 10_001  # 1251 mask bytes, 7 spare bits in the last one
    bits = np.zeros(1251 * 8, np.bool_)
    bits[[3, n]] = True  # a bit past the model's end
    with pytest.raises(UpdateError, match="past the model"):
        decode_update(
            _forge(MASK_BITS, n, zlib.compress(np.packbits(bits).tobytes()), b"\0" * 4), n
        )
    short = zlib.compress(np.packbits(np.zeros(800, np.bool_)).tobytes())
    with pytest.raises(UpdateError, match="bit mask is 100 bytes"):
        decode_update(_forge(MASK_BITS, n, short), n)
    good = zlib.compress(np.packbits(np.zeros(1251 * 8, np.bool_)).tobytes())
    with pytest.raises(UpdateError, match="trailing"):
        decode_update(_forge(MASK_BITS, n, good + b"junk"), n)
    with pytest.raises(UpdateError, match="truncated"):
        decode_update(_forge(MASK_BITS, n, good[:-3]), n)
    with pytest.raises(UpdateError, match="no mask"):
        decode_update(_forge(MASK_ALL, 2, b"x", b"\0" * 4), 2)
