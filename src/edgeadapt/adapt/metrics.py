"""Segmentation metrics: per-frame mIoU (as AMS reports it) and an accumulated confusion matrix."""

from __future__ import annotations

import numpy as np
import torch


def frame_miou(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, num_classes: int) -> float:
    """Mean IoU of one frame over the classes present in either map, in [0, 1].

    IoU per class is TP / (TP + FN + FP). A frame where both maps are empty of every class cannot
    happen (every pixel has a class), so the mean is always over at least one class.
    """
    p = torch.as_tensor(pred).reshape(-1).long()
    t = torch.as_tensor(target).reshape(-1).long()
    cm = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    cm = cm.reshape(num_classes, num_classes).double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean())


def batch_miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> list[float]:
    """Per-frame mIoU for a batch of N x H x W maps."""
    return [frame_miou(p, t, num_classes) for p, t in zip(pred, target, strict=True)]


class ConfusionMatrix:
    """Accumulates a confusion matrix over many frames (rows: target, columns: prediction)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        k = self.num_classes
        idx = target.reshape(-1).long() * k + pred.reshape(-1).long()
        self.mat += torch.bincount(idx, minlength=k * k).reshape(k, k)

    def iou(self) -> torch.Tensor:
        m = self.mat.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(iou[~iou.isnan()].mean())
