"""Trained checkpoints cached outside the checkout, keyed by what produced them.

The key hashes the training arguments and ``DATA_VERSION`` (bumped whenever the scene generator or
the training code changes what a run produces), so a stale checkpoint is never reused and a missing
one is trained again. A file lock keeps two processes from training the same model at once.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from edgeadapt.models import train
from edgeadapt.models.zoo import SegmentationModel, load_weights, weights_digest

log = logging.getLogger(__name__)

DATA_VERSION = 2

# Training profiles: the benchmark's models and the test suite's small ones.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "bench": {
        "teacher": {"epochs": 6, "steps_per_epoch": 250, "batch_size": 16, "lr": 2e-3},
        "student": {
            "epochs": 4,
            "steps_per_epoch": 250,
            "batch_size": 16,
            "lr": 2e-3,
            "width_mult": 0.75,
        },
    },
    "tiny": {
        "teacher": {
            "epochs": 1,
            "steps_per_epoch": 30,
            "batch_size": 8,
            "lr": 3e-3,
            "bn_batches": 5,
        },
        "student": {
            "epochs": 1,
            "steps_per_epoch": 20,
            "batch_size": 8,
            "lr": 3e-3,
            "bn_batches": 5,
            "width_mult": 0.5,
        },
    },
}


def cache_dir() -> Path:
    root = os.environ.get("EDGEADAPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeadapt"
    )
    return Path(root) / "checkpoints"


def training_args(role: str, profile: str, **overrides: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train.add_arguments(parser, role)
    args = parser.parse_args([])
    for k, v in {**PROFILES[profile][role], **overrides}.items():
        setattr(args, k, v)
    args.print_freq = 50
    return args


def checkpoint_key(args: argparse.Namespace) -> str:
    ignored = {"output_dir", "output_name", "resume", "print_freq", "device", "eval_batches"}
    if args.role == "teacher":
        ignored.add("width_mult")  # a student-only argument
    relevant = {k: v for k, v in sorted(vars(args).items()) if k not in ignored}
    blob = json.dumps({"data_version": DATA_VERSION, **relevant}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensure_checkpoint(
    role: str, profile: str = "bench", *, directory: Path | None = None, **overrides: Any
) -> Path:
    """Path of the cached checkpoint for ``role`` under ``profile`` in ``directory`` (default:
    the cache outside the checkout); trains it when missing."""
    args = training_args(role, profile, **overrides)
    directory = directory or cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{role}-{profile}-{checkpoint_key(args)}.pth"
    path = directory / name
    if path.exists():
        return path
    with open(directory / (name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return path
        log.info("training the %s (%s profile); cached afterwards at %s", role, profile, path)
        args.output_dir = directory
        args.output_name = name + ".partial"
        produced = train.main(args)
        produced.replace(path)
    return path


def bench_models(profile: str) -> tuple[dict[str, SegmentationModel], dict[str, dict[str, str]]]:
    """The teacher and student a benchmark runs (trained when missing) and what identifies them
    for its report: the checkpoint's file name (its training arguments) and the digest of the
    weights it holds (``zoo.weights_digest``), since one key has held different trainings and
    the figures move with them."""
    models: dict[str, SegmentationModel] = {}
    record: dict[str, dict[str, str]] = {}
    for role in ("teacher", "student"):
        path = ensure_checkpoint(role, profile)
        models[role] = load_weights(train.make_model(training_args(role, profile)), path)
        record[role] = {"checkpoint": path.name, "weights_sha256": weights_digest(models[role])}
    return models, record
