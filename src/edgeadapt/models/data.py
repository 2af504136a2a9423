"""Training data drawn from the synthetic scene generator.

``library`` frames come from the fixed scene-type library that synthetic videos are built from,
under every drift the videos show: the teacher trains on these. ``generic`` frames each come from
a fresh random scene type: the student is pretrained on these, so it knows street-scene structure
but not the look of any one video, and specialising it to a video has room to help.

Rendering a new layout costs several times more than rendering another frame of one, so each
dataset keeps a rotating pool of prepared scenes and renders a few frames from each.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

from edgeadapt.video import synthetic as syn

Distribution = Literal["library", "generic"]


def to_tensor(images: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
    """uint8 N x H x W x 3 (or H x W x 3) -> float N x 3 x H x W in [0, 1] on ``device``.

    The frames travel to the device as uint8, a quarter of the bytes of float32.
    """
    t = torch.from_numpy(np.ascontiguousarray(images))
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if device is not None:
        t = t.to(device)
    return t.permute(0, 3, 1, 2).float().div_(255.0)


class SceneBatches:
    """An endless, seeded stream of (images, labels) batches from one distribution."""

    def __init__(
        self,
        distribution: Distribution,
        batch_size: int,
        height: int = 64,
        width: int = 128,
        seed: int = 0,
        pool_size: int = 32,
        frames_per_scene: int = 4,
        library_size: int = syn.LIBRARY_SIZE,
    ) -> None:
        if distribution not in ("library", "generic"):
            raise ValueError(f"unknown distribution {distribution!r}")
        self.distribution = distribution
        self.batch_size, self.height, self.width = batch_size, height, width
        self.rng = np.random.default_rng([seed, 7 if distribution == "library" else 11])
        self.library_size = library_size
        self.frames_per_scene = frames_per_scene
        self.pool: list[tuple[syn.PreparedScene, tuple[syn.Track, ...], int]] = []
        for _ in range(pool_size):
            self.pool.append(self._new_scene())

    def _new_scene(self) -> tuple[syn.PreparedScene, tuple[syn.Track, ...], int]:
        rng = self.rng
        if self.distribution == "library":
            style = syn.library_style(int(rng.integers(self.library_size)))
        else:
            style = syn.random_style(rng)
        layout = syn.random_layout(rng, style)
        scene = syn.prepare_scene(style, layout, self.height, self.width, int(rng.integers(2**31)))
        density = float(rng.uniform(0.5, 14.0))
        tracks = syn.random_tracks(rng, layout, 0.0, 60.0, density)
        return scene, tracks, self.frames_per_scene

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One frame: (H x W x 3 uint8, H x W uint8)."""
        k = int(self.rng.integers(len(self.pool)))
        scene, tracks, left = self.pool[k]
        image, label = syn.render(
            scene, tracks, float(self.rng.uniform(0, 60)), syn.random_conditions(self.rng), self.rng
        )
        if self.rng.uniform() < 0.5:  # mirror: the world is not left-right specific
            image, label = image[:, ::-1], label[:, ::-1]
        self.pool[k] = (scene, tracks, left - 1) if left > 1 else self._new_scene()
        return image, label

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = zip(*(self.sample() for _ in range(self.batch_size)), strict=True)
        return to_tensor(np.stack(images)), torch.from_numpy(np.stack(labels).astype(np.int64))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.batch()
