"""H.264 coding of sample batches, through PyAV (libx264).

The edge buffers the frames it samples over one T_update and encodes them as one short H.264
stream before uploading (AMS §4.3.2): inter-frame coding of a batch costs far less than sending
frames one by one. The bytes returned are exactly what the uplink carries.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np

from edgeadapt.video.source import RGBImage

DEFAULT_CRF = 23


class CodecError(ValueError):
    """A batch that cannot be decoded."""


def encode_h264(
    frames: Sequence[RGBImage], crf: int = DEFAULT_CRF, preset: str = "medium", rate: int = 1
) -> bytes:
    """Encode RGB frames (all the same even size) as a raw H.264 (Annex B) stream."""
    if not frames:
        return b""
    h, w = frames[0].shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"H.264 (yuv420p) needs even dimensions, got {w}x{h}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="h264") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = Fraction(1, rate)
        stream.options = {"crf": str(crf), "preset": preset, "x264-params": "log-level=error"}
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def decode_h264(data: bytes) -> list[RGBImage]:
    """Decode a raw H.264 stream into RGB frames; :class:`CodecError` if it is not one."""
    if not data:
        return []
    out: list[RGBImage] = []
    try:
        with av.open(io.BytesIO(data), mode="r", format="h264") as container:
            for frame in container.decode(video=0):
                out.append(frame.to_ndarray(format="rgb24"))
    except (av.error.FFmpegError, ValueError) as exc:
        raise CodecError(f"not a decodable H.264 stream: {exc}") from exc
    if not out:
        raise CodecError("H.264 stream holds no frames")
    return out
