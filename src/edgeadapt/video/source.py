"""The one interface every video source implements, and the spec parser that picks a source.

A spec is either ``synthetic:KEY=VALUE,...`` (the built-in drifting-video generator, see
:mod:`edgeadapt.video.synthetic`) or anything PyAV/FFmpeg opens: a file path, ``rtsp://``,
``http://``, ``udp://`` and so on (:mod:`edgeadapt.video.av_source`).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

RGBImage = npt.NDArray[np.uint8]  # H x W x 3, RGB
LabelMap = npt.NDArray[np.uint8]  # H x W, class index per pixel


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its position in the stream and, for synthetic video, its ground truth."""

    index: int
    timestamp: float  # seconds from the start of the stream
    image: RGBImage
    truth: LabelMap | None = None


class VideoSource(abc.ABC):
    """Frames in presentation order with timestamps; random access where the source allows it."""

    spec: str
    fps: float
    width: int
    height: int

    @property
    @abc.abstractmethod
    def num_frames(self) -> int | None:
        """Number of frames, or None for a live stream of unknown length."""

    @property
    def duration(self) -> float | None:
        n = self.num_frames
        return None if n is None else n / self.fps

    @property
    def seekable(self) -> bool:
        return False

    def frame(self, index: int) -> Frame:
        """The frame at ``index``. Only seekable sources support this."""
        raise NotImplementedError(f"{type(self).__name__} does not support random access")

    @abc.abstractmethod
    def frames(self, start: int = 0, stride: int = 1) -> Iterator[Frame]:
        """Frames from ``start``, every ``stride``-th one."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the underlying stream."""

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_source(spec: str, *, width: int | None = None, height: int | None = None) -> VideoSource:
    """Open a video source by spec. ``width``/``height`` resize decoded frames (PyAV sources)."""
    if spec.startswith("synthetic:") or spec == "synthetic":
        from edgeadapt.video.synthetic import SyntheticVideo

        return SyntheticVideo.from_spec(spec)
    from edgeadapt.video.av_source import AVSource

    return AVSource(spec, width=width, height=height)
