"""What the trainer accepts as a sample batch: limits checked while decoding, not after."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgeadapt._proto.stream.v1 import stream_pb2 as pb
from edgeadapt.trainer.device import BatchLimits
from edgeadapt.trainer.server import BatchRejectedError, decode_batch
from edgeadapt.video.codec import encode_h264


def frames(n: int, w: int = 128, h: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def message(data: bytes, n: int, w: int = 128, h: int = 64, t0: float = 1000.0) -> pb.SampleBatch:
    return pb.SampleBatch(
        seq=1,
        codec=pb.CODEC_H264,
        data=data,
        timestamps=[t0 + i for i in range(n)],
        width=w,
        height=h,
    )


LIMITS = BatchLimits(max_frames=20, max_decoded_bytes=64 << 20)


def test_a_batch_that_decodes_to_more_frames_than_it_declares_is_refused() -> None:
    data = encode_h264(frames(40))
    with pytest.raises(BatchRejectedError, match="more than the 1 frames"):
        decode_batch(message(data, 1), LIMITS)


def test_frames_larger_than_declared_are_refused_at_the_first_frame() -> None:
    data = encode_h264([np.zeros((720, 1280, 3), np.uint8)] * 15)  # a few KB of H.264
    assert len(data) < 20_000
    t0 = time.perf_counter()
    with pytest.raises(BatchRejectedError, match="frame 0 is 1280x720, batch says 128x64"):
        decode_batch(message(data, 15), LIMITS)
    assert time.perf_counter() - t0 < 2.0


def test_the_decoded_bytes_cap_holds_for_honest_large_frames() -> None:
    data = encode_h264([np.zeros((720, 1280, 3), np.uint8)] * 10)
    limits = BatchLimits(max_frames=20, max_decoded_bytes=5 * 1280 * 720 * 3)
    with pytest.raises(BatchRejectedError, match="decodes to more than"):
        decode_batch(message(data, 10, 1280, 720), limits)


def test_more_timestamps_than_the_trainer_takes_are_refused_before_decoding() -> None:
    with pytest.raises(BatchRejectedError, match="1 to 20 frames"):
        decode_batch(message(b"not even h264", 21), LIMITS)


def test_frames_come_out_at_the_models_input_size() -> None:
    data = encode_h264(frames(3, 320, 240))
    limits = BatchLimits(max_frames=20, input_size=(128, 64))
    batch, clamped = decode_batch(message(data, 3, 320, 240), limits)
    assert batch.images.shape == (3, 64, 128, 3)
    assert not clamped


def test_capture_times_from_the_future_are_shifted_to_the_trainers_clock() -> None:
    data = encode_h264(frames(3))
    now = 5000.0
    batch, clamped = decode_batch(message(data, 3, t0=1e12), LIMITS, now=now)
    assert clamped
    assert batch.times == [now - 2, now - 1, now]
    honest, clamped = decode_batch(message(data, 3, t0=now - 10), LIMITS, now=now)
    assert not clamped
    assert honest.times == [now - 10, now - 9, now - 8]
