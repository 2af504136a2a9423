"""Bring a model named by architecture and weights source onto the process's own volume.

The trainer calls :func:`provision` for its teacher and its student at start. Each source ends as
one checkpoint of ours (``ids.arch``, ``ids.config``, ``model``) under ``models_dir``, so a restart
on the same volume starts at once:

- ``synthetic:<profile>`` trains the project's model on its synthetic scenes (minutes on a CPU,
  once), for clusters without internet access;
- ``torchvision:<Enum>.<NAME>`` loads published weights through torchvision (downloaded into
  ``models_dir/torch`` once);
- ``https://...#sha256=<hex>`` downloads a checkpoint and refuses it unless its SHA-256 matches;
- ``file:<path>`` reads a checkpoint from a mounted volume, such as a ModelZoo's claim.

Whatever goes wrong raises :class:`ProvisionError` with a message naming the source, which the
trainer logs and writes to its termination message before it exits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from pathlib import Path

from edgeadapt.api.launch import ModelRef
from edgeadapt.durable import fsync_dir

log = logging.getLogger(__name__)

TORCHVISION_CLASSES = 21  # the COCO-with-VOC-labels segmentation weights torchvision publishes
DOWNLOAD_TIMEOUT = 60.0
CHUNK = 1 << 20


class ProvisionError(RuntimeError):
    """A model could not be provisioned; the message names the source and why."""


def provision(ref: ModelRef, role: str, models_dir: Path) -> Path:
    """The checkpoint for ``ref`` (``role``: teacher or student) under ``models_dir``."""
    models_dir.mkdir(parents=True, exist_ok=True)
    source = ref.weights.render()
    try:
        if ref.weights.kind == "synthetic":
            path = _synthetic(ref, role, models_dir)
        elif ref.weights.kind == "torchvision":
            path = _torchvision(ref, role, models_dir)
        elif ref.weights.kind == "url":
            path = _download(ref.weights.value, ref.weights.sha256, models_dir)
        else:
            path = Path(ref.weights.value)
            if not path.is_file():
                raise ProvisionError(f"no file at {path}")
        _check_architecture(path, ref.architecture)
    except ProvisionError as exc:
        raise ProvisionError(f"{role} weights {source}: {exc}") from None
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ProvisionError(f"{role} weights {source}: {type(exc).__name__}: {exc}") from exc
    log.info("%s ready", role, extra={"source": source, "path": str(path)})
    return path


def _synthetic(ref: ModelRef, role: str, models_dir: Path) -> Path:
    from edgeadapt.models.cache import ensure_checkpoint

    overrides = {}
    if role == "teacher" and ref.architecture != "lraspp_mobilenet_v3_large":
        overrides["arch"] = ref.architecture
    return ensure_checkpoint(role, ref.weights.value, directory=models_dir, **overrides)


def _torchvision(ref: ModelRef, role: str, models_dir: Path) -> Path:
    import torch

    from edgeadapt.models.zoo import build_model, load_weights

    name = ref.weights.value
    target = models_dir / f"{role}-torchvision-{name}.pth"
    if target.exists():
        return target
    config: dict[str, float | int] = {"num_classes": TORCHVISION_CLASSES}
    if role == "student":
        config["width_mult"] = 1.0
    os.environ["TORCH_HOME"] = str(models_dir / "torch")
    model = load_weights(build_model(ref.architecture, config), name)
    payload = {
        "model": model.state_dict(),
        "ids": {"role": role, "arch": ref.architecture, "config": config, "weights": name},
    }
    partial = target.with_name(target.name + ".partial")
    torch.save(payload, partial)
    partial.replace(target)
    fsync_dir(models_dir)
    return target


def _download(url: str, sha256: str, models_dir: Path) -> Path:
    target = models_dir / f"{sha256}.pth"
    if target.exists() and _sha256(target) == sha256:
        return target
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    with (
        urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response,
        open(partial, "wb") as f,
    ):
        while chunk := response.read(CHUNK):
            digest.update(chunk)
            f.write(chunk)
    if digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise ProvisionError(f"checksum mismatch: got sha256 {digest.hexdigest()}")
    partial.replace(target)
    fsync_dir(models_dir)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_architecture(path: Path, architecture: str) -> None:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and tensor errors alike: not a usable checkpoint
        raise ProvisionError(f"{path} is not a readable checkpoint ({exc})") from exc
    ids = ckpt.get("ids") if isinstance(ckpt, dict) else None
    if not isinstance(ids, dict) or "arch" not in ids or "config" not in ids:
        raise ProvisionError(f"{path} is not an edgeadapt checkpoint (no ids.arch / ids.config)")
    if ids["arch"] != architecture:
        raise ProvisionError(f"{path} holds a {ids['arch']}, the policy names {architecture}")
