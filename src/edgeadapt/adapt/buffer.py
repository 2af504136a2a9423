"""The trainer's time-stamped horizon buffer of (frame, teacher label) pairs (Algorithm 2)."""

from __future__ import annotations

import bisect

import torch


class HorizonBuffer:
    """Samples stamped with a time; mini-batches drawn uniformly from the last ``horizon`` s.

    Samples older than the horizon are never drawn, so they are evicted on the next insert.
    Frames are kept as uint8 (3 x H x W) to keep 240 frames per device cheap.
    """

    def __init__(self, horizon: float) -> None:
        if horizon <= 0:
            raise ValueError("horizon must be positive")
        self.horizon = horizon
        self.times: list[float] = []
        self.frames: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.times)

    def add(self, frame: torch.Tensor, label: torch.Tensor, t: float) -> None:
        """Insert one sample, keeping time order (arrivals are normally in order).

        A frame of another size than those held (the camera's resolution changed) starts the
        horizon afresh: mini-batches are stacked, and the old view is stale anyway.
        """
        if self.frames and self.frames[-1].shape != frame.shape:
            self.times, self.frames, self.labels = [], [], []
        k = bisect.bisect_right(self.times, t)
        self.times.insert(k, t)
        self.frames.insert(k, frame)
        self.labels.insert(k, label)
        self.evict(self.times[-1])

    def evict(self, now: float) -> None:
        k = bisect.bisect_left(self.times, now - self.horizon)
        if k:
            del self.times[:k], self.frames[:k], self.labels[:k]

    def window(self, now: float) -> range:
        lo = bisect.bisect_left(self.times, now - self.horizon)
        hi = bisect.bisect_right(self.times, now)
        return range(lo, hi)

    def recent(self, now: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The samples inside the horizon at ``now``, oldest first: (frames, labels).

        The lists are new; the tensors are the buffer's own (shared, not copied), so a job may
        keep them while the buffer moves on.
        """
        win = self.window(now)
        return self.frames[win.start : win.stop], self.labels[win.start : win.stop]

    def sample(
        self, batch_size: int, now: float, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A mini-batch drawn uniformly (with replacement) from [now - horizon, now]."""
        win = self.window(now)
        if len(win) == 0:
            raise LookupError("no samples inside the horizon")
        picks = torch.randint(win.start, win.stop, (batch_size,), generator=generator).tolist()
        return gather(self.frames, self.labels, picks)


def gather(
    frames: list[torch.Tensor],
    labels: list[torch.Tensor],
    picks: list[int],
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A mini-batch of stored samples: float frames in [0, 1] and long labels on ``device``
    (the uint8 frames travel there before they are widened)."""
    x = torch.stack([frames[i] for i in picks])
    if device is not None:
        x = x.to(device)
    y = torch.stack([labels[i] for i in picks]).long()
    return x.float().div_(255.0), (y if device is None else y.to(device))
