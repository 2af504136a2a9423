"""The gating network: a small torchvision classifier whose classes are the zoo's experts.

Given one frame it predicts, per expert, the accuracy (mIoU against the teacher) that expert
would reach on it; a window's score per expert is the mean over the window's frames, and the
safety checker tries the top K (recl.md §2.3). It is torchvision's MobileNetV3-Small (2.5 M
parameters at 1,000 classes; RECL's faster option was ShuffleNetV2 at 2.3 M) with one output
per expert. The paper leaves the loss open; here each output is a sigmoid fitted to the
per-frame accuracy matrix with binary cross-entropy against the accuracy as a soft target (a
squared error on the sigmoid stops learning once an output saturates), so scores are predicted
mIoU in [0, 1] and comparable across zoo versions.

When experts are admitted the last layer grows by one row per expert: old rows are kept as
they are, new rows are drawn per input weight from the mean and standard deviation of the
existing rows (the paper's "mean and variance of the most recent model selector"), and only the
last layer is fine-tuned on a fixed-size history (``fit(head_only=True)``), on features computed
once per frame. Pruned experts' rows are dropped. With no expert the net has no output and
scores nothing; with one, it still scores it (the safety checker decides anyway).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ARCH = "mobilenet_v3_small"
INPUT_SIZE = 96  # frames are resized to INPUT_SIZE x INPUT_SIZE for the gating net
HIDDEN = 1024  # torchvision's MobileNetV3-Small classifier width
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class GatingNet(nn.Module):
    def __init__(self, experts: int = 0) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v3_small

        net = mobilenet_v3_small(weights=None, num_classes=1)
        self.features = net.features
        self.pool = net.avgpool
        self.body = nn.Sequential(*list(net.classifier.children())[:-1])  # Linear, act, dropout
        self.head = _linear(HIDDEN, experts)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    @property
    def experts(self) -> int:
        return int(self.head.out_features)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W frames (float in [0, 1] or uint8) -> N x HIDDEN features."""
        x = frames.float()
        if frames.dtype == torch.uint8:
            x = x / 255.0
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(
                x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
            )
        x = (x - self.mean) / self.std
        x = self.pool(self.features(x)).flatten(1)
        # Scale-free features: an untrained backbone's activations are tiny but informative.
        x = F.layer_norm(F.normalize(x, dim=1, eps=1e-30), x.shape[-1:])
        out: torch.Tensor = self.body(x)
        return out

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Per-frame predicted accuracy of each expert: N x experts, in [0, 1]."""
        return torch.sigmoid(self.head(self.embed(frames)))

    @torch.no_grad()
    def window_scores(self, frames: torch.Tensor) -> list[float]:
        """Each expert's score for a window: its predicted accuracy averaged over the frames."""
        if self.experts == 0 or len(frames) == 0:
            return [0.0] * self.experts
        was = self.training
        self.eval()
        try:
            return [float(s) for s in self(frames).mean(0)]
        finally:
            self.train(was)

    @torch.no_grad()
    def grow(self, count: int, generator: torch.Generator | None = None) -> None:
        """Add ``count`` outputs; existing rows are kept exactly."""
        if count <= 0:
            return
        old = self.head
        new = _linear(HIDDEN, old.out_features + count)
        n = old.out_features
        new.weight[:n] = old.weight
        new.bias[:n] = old.bias
        if n >= 2:
            w_mean, w_std = old.weight.mean(0), old.weight.std(0)
            b_mean, b_std = old.bias.mean(), old.bias.std()
        else:  # no statistics yet: the layer's default scale around what exists
            bound = 1.0 / HIDDEN**0.5
            w_mean = old.weight[0] if n == 1 else torch.zeros(HIDDEN)
            w_std = torch.full((HIDDEN,), bound)
            b_mean = old.bias[0] if n == 1 else torch.tensor(0.0)
            b_std = torch.tensor(bound)
        noise = torch.randn(count, HIDDEN, generator=generator)
        new.weight[n:] = w_mean + w_std * noise
        new.bias[n:] = b_mean + b_std * torch.randn(count, generator=generator)
        self.head = new

    @torch.no_grad()
    def keep(self, indices: Sequence[int]) -> None:
        """Keep only the outputs at ``indices`` (pruned experts' rows go), in that order."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        new = _linear(HIDDEN, len(idx))
        new.weight.copy_(self.head.weight[idx])
        new.bias.copy_(self.head.bias[idx])
        self.head = new


def _linear(inputs: int, outputs: int) -> nn.Linear:
    """An ``nn.Linear``, zero-sized when there is no expert yet."""
    layer = nn.Linear(inputs, max(outputs, 1))
    if outputs == 0:
        layer.weight = nn.Parameter(torch.empty(0, inputs))
        layer.bias = nn.Parameter(torch.empty(0))
        layer.out_features = 0
    return layer


def fit(
    net: GatingNet,
    frames: torch.Tensor,
    accuracy: torch.Tensor,
    *,
    head_only: bool,
    steps: int = 200,
    lr: float = 1e-2,
    batch: int = 64,
    seed: int = 0,
) -> float:
    """Train on (frames, accuracy matrix F x experts); returns the last loss.

    The last layer is fitted on features computed once per frame (an admission's update, recl.md
    §2.8); unless ``head_only``, the whole net is trained first (the zoo's first experts)."""
    if net.experts == 0 or len(frames) == 0:
        return 0.0
    if accuracy.shape != (len(frames), net.experts):
        raise ValueError(
            f"accuracy is {tuple(accuracy.shape)}, want ({len(frames)}, {net.experts})"
        )
    gen = torch.Generator().manual_seed(seed)
    target = accuracy.float().clamp(0, 1)
    criterion = nn.BCEWithLogitsLoss()  # soft targets; no vanishing gradient when saturated
    if not head_only:  # the whole net, gently, then the last layer as for an admission
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=lr / 10)
        for _ in range(steps):
            pick = torch.randint(len(frames), (min(batch, len(frames)),), generator=gen)
            loss = criterion(net.head(net.embed(frames[pick])), target[pick])
            opt.zero_grad()
            loss.backward()
            opt.step()
        recalibrate(net, frames)
    net.eval()
    with torch.no_grad():
        feats = torch.cat([net.embed(frames[i : i + 256]) for i in range(0, len(frames), 256)])
    opt = torch.optim.Adam(net.head.parameters(), lr=lr)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        pick = torch.randint(len(feats), (min(batch, len(feats)),), generator=gen)
        loss = criterion(net.head(feats[pick]), target[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


@torch.no_grad()
def recalibrate(net: GatingNet, frames: torch.Tensor, batch: int = 64) -> None:
    """BatchNorm statistics recomputed over ``frames`` (a cumulative average): after training
    in small mixed batches the running estimates lag, and evaluation would use them."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    for i in range(0, len(frames), batch):
        net.embed(frames[i : i + batch])
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    net.eval()
