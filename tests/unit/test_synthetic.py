"""The synthetic drifting-video generator."""

from __future__ import annotations

import numpy as np
import pytest

from edgeadapt.video import open_source
from edgeadapt.video.synthetic import NUM_CLASSES, SyntheticVideo


def test_same_seed_same_frames_and_other_seed_differs() -> None:
    a, b, c = (
        SyntheticVideo(seed=5, duration=120),
        SyntheticVideo(seed=5, duration=120),
        SyntheticVideo(seed=6, duration=120),
    )
    for i in (0, 901, 3599):
        fa, fb = a.frame(i), b.frame(i)
        assert np.array_equal(fa.image, fb.image)
        assert fa.truth is not None
        assert fb.truth is not None
        assert np.array_equal(fa.truth, fb.truth)
    assert not np.array_equal(a.frame(901).image, c.frame(901).image)
    # Random access does not depend on what was rendered before.
    assert np.array_equal(
        SyntheticVideo(seed=5, duration=120).frame(3599).image, a.frame(3599).image
    )


def test_ten_minutes_with_cuts_dissolves_recurring_scenes_and_all_classes() -> None:
    v = SyntheticVideo(seed=1, duration=600)
    assert v.num_frames == 18_000
    assert v.fps == 30
    types = [s.style_index for s in v.segments]
    assert len(types) > len(set(types)), "scene types recur"
    assert any(s.dissolve > 0 for s in v.segments[1:])
    assert any(s.dissolve == 0 for s in v.segments[1:])
    assert any(s.stationary for s in v.segments)
    assert not all(s.stationary for s in v.segments)
    seen: set[int] = set()
    for i in range(0, v.num_frames, 300):
        truth = v.frame(i).truth
        assert truth is not None
        assert truth.shape == (64, 128)
        seen |= set(np.unique(truth).tolist())
    assert seen == set(range(NUM_CLASSES))


def test_illumination_drifts_over_minutes() -> None:
    v = SyntheticVideo(seed=2, duration=600)
    brightness = [v.frame(i).image.mean() for i in range(0, 18_000, 900)]
    assert max(brightness) - min(brightness) > 20


def test_spec_parsing_and_errors() -> None:
    v = open_source("synthetic:seed=3,duration=12.5,size=64x32,fps=10")
    assert isinstance(v, SyntheticVideo)
    assert (v.width, v.height, v.fps, v.num_frames) == (64, 32, 10.0, 125)
    assert v.frame(0).image.shape == (32, 64, 3)
    with pytest.raises(ValueError, match="unknown synthetic spec key"):
        open_source("synthetic:colour=red")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        open_source("synthetic:seed")
    with pytest.raises(IndexError):
        v.frame(125)


def test_scene_lengths_come_from_the_spec_and_round_trip() -> None:
    v = open_source("synthetic:seed=5,duration=900,library=6,types=3,scene=90-180")
    assert isinstance(v, SyntheticVideo)
    assert v.spec.endswith(",library=6,types=3,scene=90-180")
    lengths = [s.end - s.start for s in v.segments[:-1]]  # the last one is cut by the duration
    assert len(lengths) >= 4
    assert all(90 <= x <= 180 for x in lengths)
    again = open_source(v.spec)
    assert isinstance(again, SyntheticVideo)
    assert again.segments == v.segments
    # The default draws the same timeline as before the option existed: 25-80 s segments.
    default = SyntheticVideo(seed=5, duration=900)
    assert "scene=" not in default.spec
    assert all(25 <= s.end - s.start <= 80 for s in default.segments[:-1])
    with pytest.raises(ValueError, match="scene takes LO-HI"):
        open_source("synthetic:scene=90")
    with pytest.raises(ValueError, match="1 <= LO <= HI"):
        open_source("synthetic:scene=120-60")
