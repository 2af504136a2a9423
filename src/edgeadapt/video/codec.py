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
                out.append(np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8))
    except (av.error.FFmpegError, ValueError) as exc:
        raise CodecError(f"not a decodable H.264 stream: {exc}") from exc
    if not out:
        raise CodecError("H.264 stream holds no frames")
    return out


def decode_h264_bounded(
    data: bytes,
    *,
    max_frames: int,
    width: int,
    height: int,
    max_decoded_bytes: int,
    resize_to: tuple[int, int] | None = None,
) -> list[RGBImage]:
    """Decode an uploaded batch frame by frame, refusing it as soon as it breaks its word.

    The frames must be ``width`` x ``height`` and at most ``max_frames``; the RGB bytes decoded
    (at the stream's own size) may not exceed ``max_decoded_bytes``. A few kilobytes of H.264
    can code thousands of large frames, so every limit is checked before the next frame is
    converted, never after the whole stream is in memory. Each frame is converted straight to
    ``resize_to`` (width, height) when given, so what is kept is at the model's input size.
    """
    if not data:
        raise CodecError("empty batch")
    out: list[RGBImage] = []
    decoded = 0
    out_w, out_h = resize_to or (width, height)
    try:
        with av.open(io.BytesIO(data), mode="r", format="h264") as container:
            for frame in container.decode(video=0):
                if len(out) >= max_frames:
                    raise CodecError(f"stream holds more than the {max_frames} frames declared")
                if (frame.width, frame.height) != (width, height):
                    raise CodecError(
                        f"frame {len(out)} is {frame.width}x{frame.height}, "
                        f"batch says {width}x{height}"
                    )
                decoded += frame.width * frame.height * 3
                if decoded > max_decoded_bytes:
                    raise CodecError(f"batch decodes to more than {max_decoded_bytes} bytes")
                sized = frame
                if (out_w, out_h) != (frame.width, frame.height):
                    sized = frame.reformat(width=out_w, height=out_h, format="rgb24")
                out.append(np.asarray(sized.to_ndarray(format="rgb24"), dtype=np.uint8))
    except (av.error.FFmpegError, ValueError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"not a decodable H.264 stream: {exc}") from exc
    if not out:
        raise CodecError("H.264 stream holds no frames")
    return out
