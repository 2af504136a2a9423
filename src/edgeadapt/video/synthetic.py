"""A synthetic drifting street-scene video with per-pixel ground truth, deterministic by seed.

The generator stands in for the long real-world videos that continuous-learning research uses
(Outdoor Scenes, A2D2, Cityscapes): scenes of seven semantic classes that drift over minutes,
so that a small model specialised to what the camera sees *now* beats a generic one.

A video is a timeline of segments. Each segment shows one *scene type* (a :class:`Style`: palette,
textures and layout ranges) drawn from a fixed library, so scene types recur later in the video.
Between segments come abrupt cuts or dissolves. Within a segment and across the video the picture
drifts: time of day (illumination and tint), weather (fog, rain), palette hue, camera pan speed and
object density. Some segments are stationary (no pan, few objects), the case where continuous
training should slow down.

Frames are rendered lazily and by index, so any frame of a ten-minute video costs about a
millisecond at the default 128x64 and nothing is stored.

Two distributions feed model training (:mod:`edgeadapt.models.data`): *library* frames (the scene
types videos are made of, with every drift the videos show; the teacher trains on these) and
*generic* frames (a fresh random style per frame; the student is pretrained on these, so it knows
street-scene structure but not any one video's look).
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edgeadapt.video.source import Frame, LabelMap, RGBImage, VideoSource

CLASSES: tuple[str, ...] = ("road", "sidewalk", "building", "vegetation", "sky", "person", "car")
NUM_CLASSES = len(CLASSES)
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, PERSON, CAR = range(NUM_CLASSES)

LIBRARY_SEED = 20_211_011
LIBRARY_SIZE = 16
SEGMENT_S = (25.0, 80.0)  # seconds a segment lasts, drawn uniformly
CANVAS_MULT = 4  # background canvas is this many frame widths wide; panning wraps around it

# Texture kinds
FLAT, NOISE, HSTRIPES, VSTRIPES, CHECKER = range(5)

FloatArray = npt.NDArray[np.float32]


# --------------------------------------------------------------------------------------------
# Scene types


@dataclass(frozen=True)
class Style:
    """A scene type: how each class looks and the ranges its layouts are drawn from."""

    palette: tuple[tuple[float, float, float], ...]  # per class RGB in [0, 1]
    texture_kind: tuple[int, ...]
    texture_scale: tuple[float, ...]  # pixels at 128x64
    texture_contrast: tuple[float, ...]
    horizon: tuple[float, float]  # fraction of height, range
    road_width: tuple[float, float]  # half width at the bottom, fraction of width
    sidewalk: tuple[float, float]  # sidewalk width, fraction of road half width
    building_density: tuple[float, float]
    building_height: tuple[float, float]  # fraction of the sky band
    tree_density: tuple[float, float]
    key: str = ""


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _palette(
    rng: np.random.Generator, min_dist: float = 0.3
) -> tuple[tuple[float, float, float], ...]:
    """Seven colours, pairwise at least ``min_dist`` apart in RGB, so classes are separable."""
    colours: list[tuple[float, float, float]] = []
    while len(colours) < NUM_CLASSES:
        c = _hsv_to_rgb(rng.uniform(), rng.uniform(0.15, 0.9), rng.uniform(0.25, 0.95))
        if all(math.dist(c, o) >= min_dist for o in colours):
            colours.append(c)
        elif rng.uniform() < 0.02:  # stay bounded if the constraint is tight
            min_dist *= 0.95
    return tuple(colours)


def random_style(rng: np.random.Generator, key: str = "") -> Style:
    """Draw a scene type: any palette, any textures, layout ranges from the whole space."""

    def rng_range(lo: float, hi: float, width: float) -> tuple[float, float]:
        a = rng.uniform(lo, hi - width)
        return (a, a + width)

    return Style(
        palette=_palette(rng),
        texture_kind=tuple(int(k) for k in rng.integers(0, 5, NUM_CLASSES)),
        texture_scale=tuple(float(s) for s in rng.uniform(2.0, 10.0, NUM_CLASSES)),
        texture_contrast=tuple(float(c) for c in rng.uniform(0.0, 0.35, NUM_CLASSES)),
        horizon=rng_range(0.3, 0.65, 0.08),
        road_width=rng_range(0.2, 0.65, 0.1),
        sidewalk=rng_range(0.15, 0.6, 0.1),
        building_density=rng_range(0.2, 1.0, 0.3),
        building_height=rng_range(0.2, 0.95, 0.3),
        tree_density=rng_range(0.0, 0.9, 0.3),
        key=key,
    )


@functools.lru_cache(maxsize=64)
def library_style(index: int, library_seed: int = LIBRARY_SEED) -> Style:
    """Scene type ``index`` of the fixed library that synthetic videos are made of."""
    rng = np.random.default_rng([library_seed, index])
    return random_style(rng, key=f"lib{library_seed}:{index}")


# --------------------------------------------------------------------------------------------
# Layouts, objects and viewing conditions


@dataclass(frozen=True)
class Layout:
    """Geometry of one scene: ground plane, skyline (on a wide canvas that pans) and lanes."""

    horizon: float
    vanish_x: float
    road_half: float
    sidewalk: float
    buildings: tuple[tuple[float, float, float], ...]  # (x0, x1, top) canvas fractions
    trees: tuple[tuple[float, float], ...]  # (x, radius) canvas x fraction, radius fraction of H


def random_layout(rng: np.random.Generator, style: Style) -> Layout:
    density = rng.uniform(*style.building_density)
    buildings = []
    x = rng.uniform(0, 0.02)
    while x < 1.0:
        w = rng.uniform(0.01, 0.06)
        if rng.uniform() < density:
            buildings.append((x, min(x + w, 1.0), rng.uniform(*style.building_height)))
        x += w + rng.uniform(0.0, 0.02)
    n_trees = int(rng.uniform(*style.tree_density) * 40)
    trees = tuple((float(rng.uniform()), float(rng.uniform(0.05, 0.14))) for _ in range(n_trees))
    return Layout(
        horizon=float(rng.uniform(*style.horizon)),
        vanish_x=float(rng.uniform(0.35, 0.65)),
        road_half=float(rng.uniform(*style.road_width)),
        sidewalk=float(rng.uniform(*style.sidewalk)),
        buildings=tuple(buildings),
        trees=trees,
    )


@dataclass(frozen=True)
class Track:
    """A moving object: class, depth on the ground plane (0 horizon .. 1 bottom), motion."""

    cls: int
    depth: float
    x0: float  # frame-width fraction at t0
    speed: float  # frame widths per second
    t0: float
    t1: float
    size: float
    side: float  # -1 left of the road, +1 right (persons), lane offset (cars)


@dataclass(frozen=True)
class Conditions:
    """Viewing conditions at one instant."""

    gain: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    fog: float = 0.0
    rain: float = 0.0
    hue_mix: float = 0.0
    noise: float = 0.02
    pan: float = 0.0  # canvas offset, fraction of canvas width


def daylight(
    t: float, phase: float, period: float = 480.0
) -> tuple[float, tuple[float, float, float]]:
    """Illumination gain and colour tint over the time of day (dusk -> noon -> dusk)."""
    s = math.sin(2 * math.pi * t / period + phase)
    gain = 0.75 + 0.4 * s
    warm = max(0.0, -s)  # low sun: warm; night-ish: bluish
    tint = (1.0 + 0.12 * warm, 1.0, 1.0 - 0.15 * warm + 0.1 * max(0.0, -s - 0.6))
    return gain, tint


def random_conditions(rng: np.random.Generator) -> Conditions:
    gain, tint = daylight(float(rng.uniform(0, 480)), 0.0)
    return Conditions(
        gain=gain,
        tint=tint,
        fog=float(rng.uniform(0, 0.5)) if rng.uniform() < 0.4 else 0.0,
        rain=float(rng.uniform(0, 1)) if rng.uniform() < 0.3 else 0.0,
        hue_mix=float(rng.uniform(0, 0.25)),
        pan=float(rng.uniform()),
    )


# --------------------------------------------------------------------------------------------
# Rendering


def _value_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> FloatArray:
    gh, gw = int(h / scale) + 2, int(w / scale) + 2
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    ys = np.arange(h, dtype=np.float32) / scale
    xs = np.arange(w, dtype=np.float32) / scale
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    out: FloatArray = (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy
    return out


def _texture(rng: np.random.Generator, kind: int, scale: float, h: int, w: int) -> FloatArray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out: FloatArray
    if kind == NOISE:
        return _value_noise(rng, h, w, scale)
    if kind == HSTRIPES:
        out = np.sin(2 * np.pi * yy / scale).astype(np.float32)
        return out
    if kind == VSTRIPES:
        out = np.sin(2 * np.pi * xx / scale).astype(np.float32)
        return out
    if kind == CHECKER:
        out = np.tanh(3 * np.sin(np.pi * yy / scale) * np.sin(np.pi * xx / scale)).astype(
            np.float32
        )
    return np.zeros((h, w), np.float32)


@dataclass
class PreparedScene:
    """Everything about one (style, layout) that does not change from frame to frame."""

    style: Style
    layout: Layout
    height: int
    width: int
    sky_canvas: LabelMap  # H x (W*CANVAS_MULT): sky, buildings, trees
    ground: LabelMap  # H x W: road, sidewalk, verge (vegetation); 255 above the horizon
    textures: FloatArray  # classes x H x (W*CANVAS_MULT), already scaled by contrast
    palette: FloatArray = field(init=False)

    def __post_init__(self) -> None:
        self.palette = np.asarray(self.style.palette, np.float32)


def prepare_scene(
    style: Style, layout: Layout, height: int, width: int, seed: int
) -> PreparedScene:
    rng = np.random.default_rng(seed)
    cw = width * CANVAS_MULT
    hz = round(layout.horizon * height)
    sky = np.full((height, cw), SKY, np.uint8)
    for x0, x1, top in layout.buildings:
        top_row = round(hz - top * hz)
        sky[max(top_row, 0) : hz, int(x0 * cw) : max(int(x1 * cw), int(x0 * cw) + 1)] = BUILDING
    yy, xx = np.mgrid[0:height, 0:cw]
    for x, r in layout.trees:
        rad = r * height
        cy = hz - rad * 0.9
        for dx in (-cw, 0, cw):  # wrap around the canvas seam
            crown = (xx - (x * cw + dx)) ** 2 + ((yy - cy) * 1.2) ** 2 <= rad**2
            sky[crown & (yy < hz)] = VEGETATION
    sky[hz:, :] = 255

    # Ground: a road trapezoid towards the vanishing point, sidewalks beside it, verge outside.
    ground = np.full((height, width), 255, np.uint8)
    rows = np.arange(hz, height)
    depth = (rows - hz + 0.5) / max(height - hz, 1)  # 0 at the horizon, 1 at the bottom
    vx = layout.vanish_x * width
    half = layout.road_half * width * depth
    walk = half * (1 + layout.sidewalk)
    cols = np.arange(width)[None, :]
    d = np.abs(cols - vx)
    g = np.full((len(rows), width), VEGETATION, np.uint8)
    g[d <= walk[:, None]] = SIDEWALK
    g[d <= half[:, None]] = ROAD
    ground[hz:] = g

    textures = np.stack(
        [
            _texture(rng, style.texture_kind[c], style.texture_scale[c] * height / 64, height, cw)
            * style.texture_contrast[c]
            for c in range(NUM_CLASSES)
        ]
    ).astype(np.float32)
    return PreparedScene(style, layout, height, width, sky, ground, textures)


def random_tracks(
    rng: np.random.Generator, layout: Layout, t0: float, t1: float, density: float
) -> tuple[Track, ...]:
    """Objects entering over [t0, t1): ``density`` is the expected number per 10 s."""
    tracks = []
    n = rng.poisson(max(density, 0.0) * (t1 - t0) / 10.0)
    # A few objects already in view at t0.
    starts = list(rng.uniform(t0 - 8.0, t1, n))
    for ts in starts:
        is_car = rng.uniform() < 0.5
        speed = rng.uniform(0.05, 0.25) if is_car else rng.uniform(0.01, 0.05)
        direction = 1.0 if rng.uniform() < 0.5 else -1.0
        life = 1.4 / speed
        tracks.append(
            Track(
                cls=CAR if is_car else PERSON,
                depth=float(rng.uniform(0.3, 1.0)),
                x0=-0.2 if direction > 0 else 1.2,
                speed=float(speed * direction),
                t0=float(ts),
                t1=float(ts + life),
                size=float(rng.uniform(0.8, 1.25)),
                side=float(rng.uniform(-1, 1)),
            )
        )
    return tuple(tracks)


def _draw_tracks(
    label: LabelMap, scene: PreparedScene, tracks: tuple[Track, ...], t: float
) -> None:
    h, w = label.shape
    hz = scene.layout.horizon * h
    for tr in tracks:
        if not tr.t0 <= t < tr.t1:
            continue
        cx = (tr.x0 + tr.speed * (t - tr.t0)) * w
        yb = hz + tr.depth * (h - hz)
        scale = 1.8 * (0.25 + tr.depth) * tr.size * h / 64
        if tr.cls == CAR:
            cw_, ch = 14 * scale, 6 * scale
            x0, x1 = int(cx - cw_ / 2), int(cx + cw_ / 2) + 1
            y0, y1 = int(yb - ch), int(yb) + 1
            label[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = CAR
            cab0 = int(cx - cw_ / 4)
            label[
                max(int(y0 - ch * 0.6), 0) : max(y0, 0), max(cab0, 0) : max(int(cx + cw_ / 4), 0)
            ] = CAR
        else:
            pw, ph = 2.2 * scale, 8 * scale
            ys, xs = np.ogrid[0:h, 0:w]
            y0 = max(int(yb - ph - 2), 0)
            x0 = max(int(cx - pw - 2), 0)
            sub_y, sub_x = ys[y0 : int(yb) + 1], xs[:, x0 : int(cx + pw) + 2]
            body = ((sub_x - cx) / max(pw, 0.5)) ** 2 + (
                (sub_y - (yb - ph * 0.45)) / (ph * 0.45)
            ) ** 2 <= 1
            head = (sub_x - cx) ** 2 + (sub_y - (yb - ph * 0.95)) ** 2 <= (pw * 0.8) ** 2
            region = label[y0 : int(yb) + 1, x0 : int(cx + pw) + 2]
            region[(body | head)[: region.shape[0], : region.shape[1]]] = PERSON


def render(
    scene: PreparedScene,
    tracks: tuple[Track, ...],
    t: float,
    cond: Conditions,
    noise_rng: np.random.Generator,
) -> tuple[RGBImage, LabelMap]:
    """Render one frame of ``scene`` at time ``t`` under ``cond``: (RGB uint8, labels)."""
    h, w = scene.height, scene.width
    cw = w * CANVAS_MULT
    cols = (np.arange(w) + int(cond.pan * cw)) % cw
    label = scene.sky_canvas[:, cols]
    label = np.where(scene.ground == 255, label, scene.ground).astype(np.uint8)
    _draw_tracks(label, scene, tracks, t)

    tex = scene.textures[:, :, cols]  # classes x H x W
    tex_at = np.take_along_axis(tex, label[None].astype(np.int64), 0)[0]
    pal = scene.palette
    if cond.hue_mix:
        pal = (1 - cond.hue_mix) * pal + cond.hue_mix * pal[:, [1, 2, 0]]
    img = pal[label] * (1.0 + tex_at[..., None])
    img = img * cond.gain * np.asarray(cond.tint, np.float32)
    if cond.fog:
        rows = np.arange(h, dtype=np.float32)
        hz = scene.layout.horizon * h
        near_horizon = np.clip(1.0 - np.abs(rows - hz) / h, 0, 1)[:, None, None]
        f = cond.fog * near_horizon
        img = img * (1 - f) + f * np.float32(0.75 * cond.gain)
    if cond.rain:
        streaks = noise_rng.uniform(size=(h, w)) < 0.02 * cond.rain
        streaks = streaks | np.roll(streaks, 1, 0) | np.roll(streaks, 2, 0)
        img = np.where(streaks[..., None], img * 0.5 + 0.45, img)
    if cond.noise:
        img = img + noise_rng.normal(0, cond.noise, img.shape).astype(np.float32)
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out, label


def render_random(
    rng: np.random.Generator, style: Style, height: int, width: int
) -> tuple[RGBImage, LabelMap]:
    """One frame of a random layout of ``style`` under random conditions (training data)."""
    layout = random_layout(rng, style)
    scene = prepare_scene(style, layout, height, width, int(rng.integers(2**31)))
    tracks = random_tracks(rng, layout, 0.0, 30.0, float(rng.uniform(1, 12)))
    return render(scene, tracks, float(rng.uniform(0, 30)), random_conditions(rng), rng)


# --------------------------------------------------------------------------------------------
# The video timeline


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    style_index: int
    layout_seed: int
    stationary: bool
    pan_speed: float  # canvas fractions per second
    density: float  # objects per 10 s
    fog: tuple[float, float]  # at segment start, end
    rain: tuple[float, float]
    hue: tuple[float, float]
    dissolve: float  # seconds of dissolve from the previous segment; 0 = cut


def parse_scene_seconds(text: str, name: str = "scene") -> tuple[float, float]:
    """Segment lengths given as ``LO-HI`` seconds (``name``: what the error calls them)."""
    lo, dash, hi = text.partition("-")
    try:
        if not dash:
            raise ValueError
        segment_s = (float(lo), float(hi))
    except ValueError:
        raise ValueError(f"{name} takes LO-HI seconds, got {text!r}") from None
    return check_scene_seconds(segment_s, name)


def check_scene_seconds(segment_s: tuple[float, float], name: str = "scene") -> tuple[float, float]:
    lo, hi = segment_s
    if not 1.0 <= lo <= hi:
        raise ValueError(f"{name} needs 1 <= LO <= HI, got {lo:g}-{hi:g}")
    return segment_s


def build_timeline(
    seed: int,
    duration: float,
    library_size: int = LIBRARY_SIZE,
    types_per_video: int = 4,
    segment_s: tuple[float, float] = SEGMENT_S,
) -> tuple[Segment, ...]:
    """Segments of ``segment_s`` seconds (25-80) over ``duration``; a few scene types that
    recur."""
    rng = np.random.default_rng([seed, 1])
    types = [int(i) for i in rng.choice(library_size, size=types_per_video, replace=False)]
    segments: list[Segment] = []
    t = 0.0
    prev: int | None = None
    while t < duration:
        length = float(rng.uniform(*segment_s))
        choices = [i for i in types if i != prev] or types
        style_index = int(rng.choice(choices))
        stationary = bool(rng.uniform() < 0.25)
        segments.append(
            Segment(
                start=t,
                end=min(t + length, duration),
                style_index=style_index,
                layout_seed=int(rng.integers(2**31)),
                stationary=stationary,
                pan_speed=0.0 if stationary else float(rng.uniform(0.002, 0.02)),
                density=float(rng.uniform(0.5, 2.0) if stationary else rng.uniform(3.0, 14.0)),
                fog=(float(rng.uniform(0, 0.4)), float(rng.uniform(0, 0.4)))
                if rng.uniform() < 0.4
                else (0.0, 0.0),
                rain=(float(rng.uniform(0, 1)), float(rng.uniform(0, 1)))
                if rng.uniform() < 0.25
                else (0.0, 0.0),
                hue=(float(rng.uniform(0, 0.2)), float(rng.uniform(0, 0.2))),
                dissolve=0.0 if (not segments or rng.uniform() < 0.5) else float(rng.uniform(2, 8)),
            )
        )
        prev = style_index
        t += length
    return tuple(segments)


class SyntheticVideo(VideoSource):
    """The drifting synthetic video ``synthetic:seed=N,duration=S,size=WxH,fps=F``; ``types=T``
    scene types per video (4) drawn from the first ``library=L`` of the shared library (16),
    segments of ``scene=LO-HI`` seconds (25-80)."""

    def __init__(
        self,
        seed: int = 0,
        duration: float = 600.0,
        width: int = 128,
        height: int = 64,
        fps: float = 30.0,
        library_size: int = LIBRARY_SIZE,
        types_per_video: int = 4,
        segment_s: tuple[float, float] = SEGMENT_S,
    ) -> None:
        if duration <= 0 or fps <= 0 or width < 16 or height < 16:
            raise ValueError("synthetic video needs duration > 0, fps > 0 and size >= 16x16")
        check_scene_seconds(segment_s)
        self.seed, self.fps, self.width, self.height = seed, fps, width, height
        self.library_size = library_size
        self._num_frames = round(duration * fps)
        self.segments = build_timeline(seed, duration, library_size, types_per_video, segment_s)
        self._starts = [s.start for s in self.segments]
        self._phase = float(np.random.default_rng([seed, 2]).uniform(0, 2 * math.pi))
        self.spec = f"synthetic:seed={seed},duration={duration:g},size={width}x{height},fps={fps:g}"
        if (library_size, types_per_video) != (LIBRARY_SIZE, 4):
            self.spec += f",library={library_size},types={types_per_video}"
        if segment_s != SEGMENT_S:
            self.spec += f",scene={segment_s[0]:g}-{segment_s[1]:g}"

    @classmethod
    def from_spec(cls, spec: str) -> SyntheticVideo:
        body = spec.partition(":")[2]
        kwargs: dict[str, float | int | tuple[float, float]] = {}
        for item in filter(None, body.split(",")):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep:
                raise ValueError(f"synthetic spec item {item!r} is not KEY=VALUE")
            try:
                if key == "size":
                    w, _, h = value.lower().partition("x")
                    kwargs["width"], kwargs["height"] = int(w), int(h)
                elif key in ("seed", "types", "library"):
                    name = {"seed": "seed", "types": "types_per_video", "library": "library_size"}
                    kwargs[name[key]] = int(value)
                elif key in ("duration", "fps"):
                    kwargs[key] = float(value)
                elif key == "scene":
                    kwargs["segment_s"] = parse_scene_seconds(value)
                else:
                    raise ValueError(f"unknown synthetic spec key {key!r}")
            except ValueError as exc:
                raise ValueError(f"bad synthetic spec {spec!r}: {exc}") from exc
        return cls(**kwargs)  # type: ignore[arg-type]

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def seekable(self) -> bool:
        return True

    def segment_at(self, t: float) -> int:
        return max(bisect.bisect_right(self._starts, t) - 1, 0)

    @functools.lru_cache(maxsize=6)  # noqa: B019 - bounded, per-instance use
    def _scene(self, seg_index: int) -> tuple[PreparedScene, tuple[Track, ...]]:
        seg = self.segments[seg_index]
        style = library_style(seg.style_index)
        rng = np.random.default_rng([self.seed, 3, seg_index])
        layout = random_layout(np.random.default_rng(seg.layout_seed), style)
        scene = prepare_scene(style, layout, self.height, self.width, seg.layout_seed)
        tracks = random_tracks(rng, layout, seg.start, seg.end, seg.density)
        return scene, tracks

    def conditions(self, seg_index: int, t: float) -> Conditions:
        seg = self.segments[seg_index]
        a = (t - seg.start) / max(seg.end - seg.start, 1e-6)
        gain, tint = daylight(t, self._phase)
        return Conditions(
            gain=gain,
            tint=tint,
            fog=seg.fog[0] + a * (seg.fog[1] - seg.fog[0]),
            rain=seg.rain[0] + a * (seg.rain[1] - seg.rain[0]),
            hue_mix=seg.hue[0] + a * (seg.hue[1] - seg.hue[0]),
            pan=(seg.layout_seed % 1000) / 1000 + seg.pan_speed * (t - seg.start),
        )

    def _render_segment(self, seg_index: int, t: float, index: int) -> tuple[RGBImage, LabelMap]:
        scene, tracks = self._scene(seg_index)
        noise_rng = np.random.default_rng([self.seed, 4, index])
        return render(scene, tracks, t, self.conditions(seg_index, t), noise_rng)

    def frame(self, index: int) -> Frame:
        if not 0 <= index < self._num_frames:
            raise IndexError(f"frame {index} outside 0..{self._num_frames - 1}")
        t = index / self.fps
        k = self.segment_at(t)
        image, label = self._render_segment(k, t, index)
        seg = self.segments[k]
        if k > 0 and seg.dissolve > 0 and t < seg.start + seg.dissolve:
            alpha = (t - seg.start) / seg.dissolve
            prev_image, prev_label = self._render_segment(k - 1, t, index)
            image = (alpha * image + (1 - alpha) * prev_image + 0.5).astype(np.uint8)
            if alpha < 0.5:
                label = prev_label
        return Frame(index=index, timestamp=t, image=image, truth=label)

    def frames(self, start: int = 0, stride: int = 1) -> Iterator[Frame]:
        for i in range(start, self._num_frames, stride):
            yield self.frame(i)

    def describe(self) -> list[dict[str, object]]:
        """The timeline, for logs and plots."""
        return [
            {
                "start": s.start,
                "end": s.end,
                "scene_type": s.style_index,
                "stationary": s.stationary,
                "cut": s.dissolve == 0,
            }
            for s in self.segments
        ]
