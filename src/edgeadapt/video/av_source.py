"""Video files and network streams through PyAV (FFmpeg): mp4/mkv/avi files, RTSP, HTTP, UDP.

Frames are decoded in order, converted to RGB and, if asked, resized; timestamps come from the
stream's presentation times. Live streams have no known length; a file reports its frame count
when the container says so.
"""

from __future__ import annotations

from collections.abc import Iterator

import av
import numpy as np

from edgeadapt.video.source import Frame, VideoSource

NETWORK_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


class AVSource(VideoSource):
    def __init__(
        self,
        spec: str,
        *,
        width: int | None = None,
        height: int | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.spec = spec
        options = {}
        if spec.startswith(NETWORK_SCHEMES):
            options["rw_timeout"] = str(int(timeout * 1_000_000))
            if spec.startswith("rtsp://"):
                options["rtsp_transport"] = "tcp"
        try:
            self._container = av.open(spec, mode="r", options=options, timeout=timeout)
        except av.error.FFmpegError as exc:
            raise OSError(f"cannot open video source {spec!r}: {exc}") from exc
        if not self._container.streams.video:
            self._container.close()
            raise OSError(f"{spec!r} has no video stream")
        self._stream = self._container.streams.video[0]
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else 30.0
        self.width = width or self._stream.codec_context.width
        self.height = height or self._stream.codec_context.height
        self._resize = width is not None or height is not None
        self._frames = int(self._stream.frames) or None
        self._consumed = False

    @property
    def num_frames(self) -> int | None:
        return self._frames

    def frames(self, start: int = 0, stride: int = 1) -> Iterator[Frame]:
        if self._consumed:
            raise RuntimeError("an AVSource is read once; open the spec again to re-read it")
        self._consumed = True
        for index, frame in enumerate(self._container.decode(self._stream)):
            if index < start or (index - start) % stride:
                continue
            if self._resize:
                frame = frame.reformat(width=self.width, height=self.height)
            image = frame.to_ndarray(format="rgb24")
            ts = float(frame.time) if frame.time is not None else index / self.fps
            yield Frame(index=index, timestamp=ts, image=np.ascontiguousarray(image))

    def close(self) -> None:
        self._container.close()
