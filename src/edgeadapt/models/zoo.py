"""Model builders (torchvision) and weight loading.

Student: LR-ASPP on a MobileNetV3-Large backbone with a width multiplier (torchvision's
``lraspp_mobilenet_v3_large`` is the ``width_mult=1.0`` case), small enough to run at frame rate
on an edge device and to stream 5% of its parameters in ~200 kbps. Teacher: torchvision's
``lraspp_mobilenet_v3_large`` at full width (3.2 M parameters; the default student at width 0.75
has 1.86 M, close to the 2 M of the thesis's DeepLabV3-MobileNetV2 student)
(``deeplabv3_*`` builders are available for larger inputs).

Weights load through one path, ``model.load_state_dict(state_dict)``, whether the state dict comes
from a checkpoint the project trained (``edgeadapt.models.train``) or from a published torchvision
weights enum (``DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1``), which is what
``torchvision``'s own builders do with ``weights=``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeadapt.api import launch

# What the CRDs accept: the builders below implement exactly these.
STUDENT_ARCHS = launch.STUDENT_ARCHS
TEACHER_ARCHS = launch.TEACHER_ARCHS


class SegmentationModel(nn.Module):
    """Wraps a torchvision segmentation model so ``forward`` returns the logits tensor."""

    def __init__(self, net: nn.Module, arch: str, config: dict[str, Any]) -> None:
        super().__init__()
        self.net = net
        self.arch = arch
        self.config = dict(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)["out"]
        return out


def build_student(num_classes: int, width_mult: float = 0.75) -> SegmentationModel:
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf
    from torchvision.models.segmentation.lraspp import LRASPP

    setting, last_channel = _mobilenet_v3_conf(
        "mobilenet_v3_large", width_mult=width_mult, dilated=True
    )
    features = MobileNetV3(setting, last_channel).features
    # Same taps as torchvision's lraspp_mobilenet_v3_large: the last stride-8 block and the output.
    stage_indices = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)]
    stage_indices.append(len(features) - 1)
    low_pos, high_pos = stage_indices[-4], stage_indices[-1]
    low_channels = features[low_pos].out_channels
    high_channels = features[high_pos].out_channels
    backbone = IntermediateLayerGetter(
        features, return_layers={str(low_pos): "low", str(high_pos): "high"}
    )
    inter = max(32, int(128 * width_mult))
    net = LRASPP(backbone, low_channels, high_channels, num_classes, inter_channels=inter)
    return SegmentationModel(
        net,
        "lraspp_mobilenet_v3_large",
        {"num_classes": num_classes, "width_mult": width_mult},
    )


def build_teacher(num_classes: int, arch: str = "lraspp_mobilenet_v3_large") -> SegmentationModel:
    """The teacher: by default torchvision's full-width ``lraspp_mobilenet_v3_large``.

    At the CPU-friendly default of 128x64 the DeepLabV3 heads see an 8x4 feature map (output
    stride 16) and lose every small object; LR-ASPP's stride-8 branch keeps them. The DeepLabV3
    builders remain available for larger inputs on a GPU.
    """
    from torchvision.models import segmentation

    if arch not in TEACHER_ARCHS:
        raise ValueError(f"unknown teacher architecture {arch!r}; choose from {TEACHER_ARCHS}")
    builder = getattr(segmentation, arch)
    kwargs = {} if arch.startswith("lraspp") else {"aux_loss": False}
    net = builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    return SegmentationModel(net, arch, {"num_classes": num_classes})


def build_model(arch: str, config: dict[str, Any]) -> SegmentationModel:
    if arch in STUDENT_ARCHS and "width_mult" in config:
        return build_student(int(config["num_classes"]), float(config.get("width_mult", 0.75)))
    return build_teacher(int(config["num_classes"]), arch)


def state_dict_from(source: str | Path) -> OrderedDict[str, torch.Tensor]:
    """A state dict from a checkpoint file, or from a published torchvision weights enum name."""
    path = Path(source)
    if path.exists():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
        return OrderedDict(state)
    if "." in str(source) and "_Weights." in str(source):
        from torchvision.models import get_weight

        published: OrderedDict[str, torch.Tensor] = get_weight(str(source)).get_state_dict(
            progress=False, check_hash=True
        )
        return published
    raise FileNotFoundError(f"no checkpoint at {source!s} and not a torchvision weights name")


def load_weights(model: SegmentationModel, source: str | Path) -> SegmentationModel:
    """Load weights into ``model``; published torchvision weights address ``model.net``."""
    state = state_dict_from(source)
    if any(k.startswith("net.") for k in state):
        model.load_state_dict(state)
    else:
        model.net.load_state_dict(state)
    return model


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weights_digest(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of a model's state: every entry's name, dtype, shape and bytes, in
    order. Two trainings under one checkpoint key have given different models, and a
    benchmark's figures move with the models, so the benchmarks record this beside their
    figures: runs compare only when it matches."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def load_checkpoint_model(path: str | Path) -> SegmentationModel:
    """Build the model a checkpoint of ours describes (its ``ids``) and load its weights."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    ids = ckpt.get("ids") if isinstance(ckpt, dict) else None
    if not isinstance(ids, dict) or "arch" not in ids or "config" not in ids:
        raise ValueError(f"{path}: not an edgeadapt checkpoint (no ids.arch / ids.config)")
    model = build_model(str(ids["arch"]), dict(ids["config"]))
    model.load_state_dict(ckpt["model"])
    return model


def write_starting_checkpoint(source: str | Path, folder: str | Path) -> Path:
    """The part of a checkpoint of ours a device needs (weights, ids, input size), written once
    into ``folder`` as ``starting-<digest of source>.pth``: a training checkpoint also holds the
    optimizer and scheduler state, about twice the weights again, which edge devices never use."""
    from edgeadapt.durable import write_atomically

    source = Path(source)
    digest = hashlib.sha256()
    with source.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    out = Path(folder) / f"starting-{digest.hexdigest()[:16]}.pth"
    if out.exists():
        return out
    ckpt = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "ids" not in ckpt:
        raise ValueError(f"{source}: not an edgeadapt checkpoint (no model / ids)")
    slim: dict[str, Any] = {"model": ckpt["model"], "ids": ckpt["ids"]}
    args = ckpt.get("args")
    if isinstance(args, dict) and "width" in args and "height" in args:
        slim["args"] = {"width": args["width"], "height": args["height"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, lambda f: torch.save(slim, f))
    return out


def checkpoint_input_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) a checkpoint of ours was trained at, if it says."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    args = ckpt.get("args") if isinstance(ckpt, dict) else None
    if not isinstance(args, dict) or "width" not in args or "height" not in args:
        return None
    return int(args["width"]), int(args["height"])
