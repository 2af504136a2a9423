"""``edgeadapt video render``: write a synthetic video (and its labels) to a file.

    edgeadapt video render synthetic:seed=3,duration=60 --out clip.mp4 [--labels labels.npz]
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from edgeadapt.video.source import open_source


def write_video(spec: str, out: Path, crf: int = 18, labels: Path | None = None) -> int:
    """Render ``spec`` into an H.264 file; returns the number of frames written."""
    source = open_source(spec)
    rate = Fraction(source.fps).limit_denominator(1001)
    truth = []
    n = 0
    with av.open(str(out), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = source.width, source.height, "yuv420p"
        stream.options = {"crf": str(crf), "x264-params": "log-level=error"}
        for frame in source.frames():
            vf = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
            for packet in stream.encode(vf):
                container.mux(packet)
            if labels is not None and frame.truth is not None:
                truth.append(frame.truth)
            n += 1
        for packet in stream.encode(None):
            container.mux(packet)
    if labels is not None:
        np.savez_compressed(labels, labels=np.stack(truth))
    return n


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("spec", help="synthetic:seed=N,duration=S,size=WxH,fps=F")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--crf", type=int, default=18)
    parser.add_argument("--labels", type=Path, default=None, help="also save ground truth (.npz)")


def run(args: argparse.Namespace) -> int:
    n = write_video(args.spec, args.out, args.crf, args.labels)
    print(f"wrote {n} frames to {args.out}")
    return 0
