"""Train the teacher (all scene types) or pretrain the student (generic scenes).

In the shape of torchvision's ``references/segmentation/train.py``: an argument parser,
``main(args)``, ``train_one_epoch`` and ``evaluate``, one checkpoint schema (model, optimizer,
lr_scheduler, epoch, step, args, ids) and ``--resume``. Data is rendered on the fly by
:mod:`edgeadapt.models.data`, so an "epoch" is a fixed number of steps.

    python -m edgeadapt train teacher --epochs 6 --output-dir ckpt/
    python -m edgeadapt train student --epochs 6 --output-dir ckpt/ --resume ckpt/student.pth
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeadapt.adapt.metrics import ConfusionMatrix
from edgeadapt.models.data import Distribution, SceneBatches
from edgeadapt.models.zoo import SegmentationModel, build_student, build_teacher, num_parameters
from edgeadapt.video.synthetic import NUM_CLASSES

log = logging.getLogger(__name__)

CHECKPOINT_SCHEMA = 1


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="edgeadapt model training", add_help=add_help)
    add_arguments(parser, "teacher")
    return parser


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.set_defaults(role=name)
    parser.add_argument("--arch", default=None, help="model architecture (default per role)")
    parser.add_argument("--width-mult", default=0.75, type=float, help="student width multiplier")
    parser.add_argument("--epochs", default=6, type=int)
    parser.add_argument("--steps-per-epoch", default=250, type=int)
    parser.add_argument("-b", "--batch-size", default=16, type=int)
    parser.add_argument("--lr", default=2e-3, type=float, help="peak AdamW learning rate")
    parser.add_argument("--wd", "--weight-decay", dest="weight_decay", default=1e-4, type=float)
    parser.add_argument("--warmup-steps", default=50, type=int)
    parser.add_argument("--height", default=64, type=int)
    parser.add_argument("--width", default=128, type=int)
    parser.add_argument("--eval-batches", default=8, type=int)
    parser.add_argument(
        "--bn-batches", default=40, type=int, help="BatchNorm recalibration batches"
    )
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--print-freq", default=50, type=int)
    parser.add_argument("--output-dir", default=".", type=Path)
    parser.add_argument("--output-name", default=None, help="checkpoint file name")
    parser.add_argument("--resume", default=None, type=Path, help="checkpoint to resume from")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_model(args: argparse.Namespace) -> SegmentationModel:
    if args.role == "teacher":
        return build_teacher(NUM_CLASSES, args.arch or "lraspp_mobilenet_v3_large")
    return build_student(NUM_CLASSES, args.width_mult)


def make_data(args: argparse.Namespace, seed_offset: int = 0) -> SceneBatches:
    distribution: Distribution = "library" if args.role == "teacher" else "generic"
    return SceneBatches(
        distribution,
        args.batch_size,
        height=args.height,
        width=args.width,
        seed=args.seed + seed_offset,
    )


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    data: SceneBatches,
    device: torch.device,
    epoch: int,
    steps: int,
    print_freq: int,
) -> float:
    model.train()
    total, t0 = 0.0, time.monotonic()
    for step in range(steps):
        images, labels = data.batch()
        images, labels = images.to(device), labels.to(device)
        loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        total += float(loss.item())
        if print_freq and (step + 1) % print_freq == 0:
            log.info(
                "epoch %d step %d/%d loss %.4f lr %.2e (%.2fs/step)",
                epoch,
                step + 1,
                steps,
                total / (step + 1),
                optimizer.param_groups[0]["lr"],
                (time.monotonic() - t0) / (step + 1),
            )
    return total / max(steps, 1)


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, data: SceneBatches, device: torch.device, batches: int
) -> None:
    """Recompute BatchNorm running statistics as exact averages over ``batches`` batches.

    torchvision's MobileNetV3 uses BatchNorm momentum 0.01, so after a short schedule the running
    statistics still lag far behind the weights and the model scores badly in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for _ in range(batches):
        model(data.batch()[0].to(device))
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def evaluate(
    model: nn.Module, data: SceneBatches, device: torch.device, num_batches: int
) -> ConfusionMatrix:
    model.eval()
    cm = ConfusionMatrix(NUM_CLASSES)
    for _ in range(num_batches):
        images, labels = data.batch()
        pred = model(images.to(device)).argmax(1).cpu()
        cm.update(pred, labels)
    return cm


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def main(args: argparse.Namespace) -> Path:
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    model = make_model(args).to(device)
    log.info("%s %s: %d parameters on %s", args.role, model.arch, num_parameters(model), device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    total_steps = args.epochs * args.steps_per_epoch
    warmup = min(args.warmup_steps, max(total_steps // 10, 1))

    def schedule(step: int) -> float:
        if step < warmup:
            return float((step + 1) / warmup)
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    start_epoch = 0
    if args.resume:
        ckpt = torch.load(args.resume, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        start_epoch = int(ckpt["epoch"]) + 1

    data = make_data(args)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    out = args.output_dir / (args.output_name or f"{args.role}.pth")
    for epoch in range(start_epoch, args.epochs):
        # Re-seed per epoch so a resumed run sees the same data as an uninterrupted one.
        data = make_data(args, seed_offset=1000 * (epoch + 1))
        loss = train_one_epoch(
            model,
            criterion,
            optimizer,
            lr_scheduler,
            data,
            device,
            epoch,
            args.steps_per_epoch,
            args.print_freq,
        )
        if epoch == args.epochs - 1:
            recalibrate_batchnorm(model, data, device, args.bn_batches)
        payload = {
            "schema": CHECKPOINT_SCHEMA,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "epoch": epoch,
            "step": (epoch + 1) * args.steps_per_epoch,
            "args": {
                k: str(v) if isinstance(v, Path) else v
                for k, v in vars(args).items()
                if not callable(v)
            },
            "ids": {"role": args.role, "arch": model.arch, "config": model.config},
            "train_loss": loss,
        }
        save_checkpoint(out, payload)
        log.info("epoch %d done, loss %.4f, saved %s", epoch, loss, out)

    # Evaluate on held-out scenes of the role's own distribution and on the library.
    dists: tuple[Distribution, ...] = ("library", "generic")
    for dist in dists:
        held_out = SceneBatches(dist, args.batch_size, args.height, args.width, seed=args.seed + 99)
        cm = evaluate(model, held_out, device, args.eval_batches)
        log.info("%s on held-out %s scenes: mIoU %.1f%%", args.role, dist, 100 * cm.miou())
    return Path(out)


def run(args: argparse.Namespace) -> int:
    path = main(args)
    print(path)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(get_args_parser().parse_args())
