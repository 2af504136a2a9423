"""Video sources behind one interface: frames with timestamps and, where known, ground truth."""

from edgeadapt.video.source import Frame, VideoSource, open_source

__all__ = ["Frame", "VideoSource", "open_source"]
