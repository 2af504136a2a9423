"""Real codecs and streams: H.264 batches, video files and an HTTP stream through PyAV."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgeadapt.video import open_source
from edgeadapt.video.codec import CodecError, decode_h264, encode_h264
from edgeadapt.video.render import write_video
from edgeadapt.video.synthetic import SyntheticVideo


def test_h264_batch_round_trip_is_close_and_compact() -> None:
    video = SyntheticVideo(seed=4, duration=20)
    frames = [video.frame(i * 30).image for i in range(10)]
    data = encode_h264(frames)
    decoded = decode_h264(data)
    assert len(decoded) == 10
    assert decoded[0].shape == frames[0].shape
    assert np.abs(decoded[5].astype(int) - frames[5].astype(int)).mean() < 12
    assert len(data) < sum(f.nbytes for f in frames) / 5  # real compression
    with pytest.raises(CodecError):
        decode_h264(b"\x00\x00\x01" + bytes(200))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    n = write_video("synthetic:seed=9,duration=3,fps=10", path, labels=path.with_suffix(".npz"))
    assert n == 30
    return path


def test_file_source_frames_and_timestamps(clip: Path) -> None:
    source = open_source(str(clip))
    assert source.fps == pytest.approx(10)
    frames = list(source.frames())
    source.close()
    assert len(frames) == 30
    assert [f.index for f in frames] == list(range(30))
    assert frames[12].timestamp == pytest.approx(1.2, abs=1e-6)
    reference = SyntheticVideo(seed=9, duration=3, fps=10).frame(12).image
    assert np.abs(frames[12].image.astype(int) - reference.astype(int)).mean() < 10
    labels = np.load(clip.with_suffix(".npz"))["labels"]
    assert labels.shape == (30, 64, 128)


def test_file_source_resizes(clip: Path) -> None:
    source = open_source(str(clip), width=64, height=32)
    first = next(iter(source.frames(stride=5)))
    assert first.image.shape == (32, 64, 3)
    source.close()


@pytest.fixture
def http_clip(clip: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(clip.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{clip.name}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_stream_source(http_clip: str) -> None:
    source = open_source(http_clip)
    frames = list(source.frames(stride=3))
    source.close()
    assert [f.index for f in frames] == list(range(0, 30, 3))


def test_unreachable_stream_is_a_clear_error() -> None:
    with pytest.raises(OSError, match="cannot open video source"):
        open_source("http://127.0.0.1:9/none.mp4")
