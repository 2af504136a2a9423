"""One device's AMS session on the trainer, the teacher that labels its frames, and the edge copy.

The session is pure logic over tensors: the benchmark harness drives it on simulated time and the
trainer server (over gRPC) drives it on wall-clock time, with the same code.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeadapt.adapt.buffer import HorizonBuffer
from edgeadapt.adapt.control import SamplingRateController, UpdateIntervalController, phi_score
from edgeadapt.adapt.optim import MaskedAdam, MaskedOptimizer, Selection, select_mask
from edgeadapt.adapt.update import (
    ModelUpdate,
    UpdateError,
    apply_update,
    decode_update,
    model_checksum,
    parameter_vector,
)
from edgeadapt.models.data import to_tensor
from edgeadapt.models.zoo import SegmentationModel


@dataclass(frozen=True)
class AMSConfig:
    """AMS parameters; defaults are the thesis's (§4.4 and Appendix B)."""

    t_horizon: float = 240.0
    t_update: float = 10.0
    iterations: int = 20  # K
    gamma: float = 0.05
    lr: float = 1e-3
    batch_size: int = 8
    selection: Selection = "gradient"
    r_min: float = 0.1
    r_max: float = 1.0
    r_init: float = 1.0
    eta_r: float = 2.0
    phi_target: float = 0.3
    control_period: float = 10.0  # delta_t
    atr: bool = True
    atr_enter: float = 0.25
    atr_exit: float = 0.35
    atr_step: float = 2.0
    atr_cap_mult: float = 6.0
    seed: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def freeze_batchnorm(model: nn.Module) -> None:
    """Train mode for everything but BatchNorm, whose running statistics stay as deployed."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class Teacher:
    """Labels frames with the large model, in batches."""

    def __init__(
        self, model: SegmentationModel, device: torch.device, batch_size: int = 32
    ) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def label(self, images: np.ndarray) -> torch.Tensor:
        """uint8 N x H x W x 3 -> int64 N x H x W labels (on CPU)."""
        out = []
        for i in range(0, len(images), self.batch_size):
            x = to_tensor(images[i : i + self.batch_size], self.device)
            out.append(self.model(x).argmax(1).cpu())
        return torch.cat(out) if out else torch.zeros((0,), dtype=torch.int64)


class AMSSession:
    """Per-device trainer state: student copy, masked Adam, horizon buffer, ASR/ATR, version."""

    def __init__(
        self,
        student: SegmentationModel,
        config: AMSConfig,
        num_classes: int,
        device: torch.device | None = None,
    ) -> None:
        self.config = config
        self.num_classes = num_classes
        self.device = device or torch.device("cpu")
        self.model = copy.deepcopy(student).to(self.device)
        freeze_batchnorm(self.model)
        self.optimizer = MaskedAdam(self.model.parameters(), lr=config.lr)
        self.buffer = HorizonBuffer(config.t_horizon)
        self.sampling = SamplingRateController(
            config.r_min, config.r_max, config.eta_r, config.phi_target, config.r_init
        )
        self.interval = UpdateIntervalController(
            config.t_update, config.atr_enter, config.atr_exit, config.atr_step, config.atr_cap_mult
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.version = 0
        self.phase = 0
        self._prev_label: torch.Tensor | None = None
        self._last_control: float | None = None

    @property
    def num_params(self) -> int:
        return self.optimizer.numel

    # -- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a restarted trainer needs to continue this device where it stopped."""
        return {
            "config": self.config.as_dict(),
            "version": self.version,
            "phase": self.phase,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": {
                k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v
                for k, v in self.optimizer.state_dict().items()
            },
            "buffer": {
                "times": list(self.buffer.times),
                "frames": torch.stack(self.buffer.frames) if len(self.buffer) else None,
                "labels": torch.stack(self.buffer.labels) if len(self.buffer) else None,
            },
            "sampling": {"rate": self.sampling.rate, "phis": list(self.sampling._phis)},
            "interval": {"interval": self.interval.interval, "slow": self.interval.slow},
            "generator": self.generator.get_state(),
            "prev_label": self._prev_label,
            "last_control": self._last_control,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        freeze_batchnorm(self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = int(state["version"])
        self.phase = int(state["phase"])
        buf = state["buffer"]
        self.buffer = HorizonBuffer(self.config.t_horizon)
        if buf["frames"] is not None:
            self.buffer.times = [float(t) for t in buf["times"]]
            self.buffer.frames = list(buf["frames"].unbind(0))
            self.buffer.labels = list(buf["labels"].unbind(0))
        self.sampling.rate = float(state["sampling"]["rate"])
        self.sampling._phis = [float(x) for x in state["sampling"]["phis"]]
        self.interval.interval = float(state["interval"]["interval"])
        self.interval.slow = bool(state["interval"]["slow"])
        self.generator.set_state(state["generator"])
        self._prev_label = state["prev_label"]
        self._last_control = state["last_control"]

    def settings(self) -> tuple[float, float]:
        """The current (sampling rate, T_update) without advancing the controllers."""
        return (
            self.sampling.rate,
            self.interval.interval if self.config.atr else self.config.t_update,
        )

    # -- inference phase ------------------------------------------------------------------
    def ingest(
        self, images: np.ndarray, labels: torch.Tensor, times: list[float], observe: bool = True
    ) -> list[float]:
        """Add teacher-labelled frames to the horizon buffer; return their phi scores.

        ``observe=False`` adds frames out of their capture order (frames held out for a while):
        they train, but ASR's scene-change score, which compares consecutive frames, skips them.
        """
        phis = []
        for img, lab, t in zip(images, labels, times, strict=True):
            frame = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()
            self.buffer.add(frame, lab.to(torch.uint8), t)
            if not observe:
                continue
            if self._prev_label is not None and self._prev_label.shape == lab.shape:
                phi = phi_score(lab, self._prev_label, self.num_classes)
                self.sampling.observe(phi)
                phis.append(phi)
            self._prev_label = lab
        return phis

    def control(self, now: float) -> tuple[float, float]:
        """ASR/ATR tick, at most once per control period: (sampling rate, T_update)."""
        if (
            self._last_control is None
            or now - self._last_control >= self.config.control_period - 1e-9
        ):
            self._last_control = now
            rate = self.sampling.tick()
            interval = self.interval.tick(rate) if self.config.atr else self.config.t_update
            return rate, interval
        return (
            self.sampling.rate,
            self.interval.interval if self.config.atr else self.config.t_update,
        )

    # -- training phase -------------------------------------------------------------------
    def train_phase(self, now: float, gamma: float | None = None) -> ModelUpdate | None:
        """K masked-Adam iterations on the horizon; the update to send, or None if no data.

        ``gamma`` overrides the configured update fraction for this phase (a link budget).
        """
        phase = self.begin_phase(now, gamma)
        if phase is None:
            return None
        self.step(phase, self.config.iterations)
        return self.commit(phase)

    def begin_phase(self, now: float, gamma: float | None = None) -> Phase | None:
        """Open a training phase: choose the coordinates it may change (None if no data).

        A phase may be trained in several slices (:meth:`step`) before :meth:`commit` ends it;
        until then the committed parameters are ``phase.before``.
        """
        if len(self.buffer.window(now)) == 0:
            return None
        cfg = self.config
        self.phase += 1
        mask = select_mask(
            self.num_params,
            cfg.gamma if gamma is None else gamma,
            cfg.selection,
            self.optimizer.u_last,
            self.generator,
            self.device,
        )
        return Phase(now, mask, self.optimizer.flat_params().clone())

    def step(self, phase: Phase, iterations: int) -> None:
        """``iterations`` masked-Adam steps of an open phase on the horizon."""
        criterion = nn.CrossEntropyLoss()
        for _ in range(iterations):
            frames, labels = self.buffer.sample(self.config.batch_size, phase.now, self.generator)
            loss = criterion(self.model(frames.to(self.device)), labels.to(self.device))
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step(phase.mask)
        phase.iterations += iterations

    def commit(self, phase: Phase) -> ModelUpdate:
        """End an open phase: the update that carries it to the edge."""
        update = commit_phase(self.optimizer, phase.mask, phase.before, self.version)
        self.version = update.version
        return update


@dataclass
class Phase:
    """An open training phase: when it started, the coordinates it trains, the parameters before."""

    now: float
    mask: torch.Tensor
    before: torch.Tensor
    iterations: int = 0


def commit_phase(
    optimizer: MaskedOptimizer, mask: torch.Tensor, before: torch.Tensor, version: int
) -> ModelUpdate:
    """End a training phase: the update that carries the masked coordinates to the edge.

    The selected coordinates are rounded to the float16 the wire carries and the rest are held at
    their values before the phase, so the trainer's copy is exactly what the edge will hold.
    """
    w = optimizer.flat_params()
    sel = mask.bool()
    w[sel] = w[sel].half().float()
    w[~sel] = before[~sel]
    optimizer.set_flat_params(w)
    return ModelUpdate(
        version=version + 1,
        base_version=version,
        num_params=optimizer.numel,
        indices=torch.nonzero(sel).squeeze(1).cpu().numpy().astype(np.int64),
        values=w[sel].half().cpu().numpy(),
    )


class EdgeModel:
    """The device side: an active model for inference and an inactive copy that updates patch.

    An update is decoded and verified, written into the inactive copy, and the copies swap, so
    inference always runs on a complete model. The new inactive copy is then patched too, so both
    stay identical. A corrupt update, one for another base version, or one after which the model
    would not match the trainer's checksum is rejected and counted, and the model is unchanged.

    ``predict`` and ``apply`` may run on different threads (the edge agent's inference loop and
    its network link): the swap waits for the frame in progress, so a frame never sees a
    half-written model and none is dropped.
    """

    def __init__(
        self, model: SegmentationModel, device: torch.device | None = None, version: int = 0
    ) -> None:
        self.device = device or torch.device("cpu")
        self.active = copy.deepcopy(model).to(self.device).eval()
        self.inactive = copy.deepcopy(model).to(self.device).eval()
        self.version = version
        self.applied = 0
        self.rejected = 0
        self.last_error = ""
        self.num_params = sum(p.numel() for p in self.active.parameters() if p.requires_grad)
        self._swap_lock = threading.Lock()  # held by predict for one frame, by apply to swap
        self._apply_lock = threading.Lock()  # one update at a time; the active model is stable
        self._checksum: int | None = None  # of the active model, once computed

    @staticmethod
    def _params(model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def _patch(self, model: nn.Module, update: ModelUpdate) -> None:
        params = self._params(model)
        flat = torch.nn.utils.parameters_to_vector(params).detach()
        apply_update(flat, update)
        torch.nn.utils.vector_to_parameters(flat, params)

    def checksum(self) -> int:
        """CRC32 of the active model's parameters (see :func:`model_checksum`).

        Cached per model version, and computed without holding up inference: only ``apply``
        changes the active model, and it is excluded meanwhile.
        """
        with self._apply_lock:
            if self._checksum is None:
                self._checksum = model_checksum(parameter_vector(self.active))
            return self._checksum

    def summary(self) -> tuple[int, int, int, int, str]:
        """(version, checksum, applied, rejected, last error), all of one moment."""
        with self._apply_lock:
            if self._checksum is None:
                self._checksum = model_checksum(parameter_vector(self.active))
            return self.version, self._checksum, self.applied, self.rejected, self.last_error

    @torch.no_grad()
    def load_parameters(self, params: torch.Tensor, version: int) -> None:
        """Put a parameter vector (a saved model) into both copies, at ``version``."""
        with self._apply_lock:
            for model in (self.active, self.inactive):
                torch.nn.utils.vector_to_parameters(params.to(self.device), self._params(model))
            self.version = version
            self._checksum = None

    @torch.no_grad()
    def switch(self, params: torch.Tensor, version: int, base_version: int, checksum: int) -> bool:
        """Run another whole model (a cached zoo expert) as ``version``; False (counted) if the
        agent is not at ``base_version`` or ``params`` do not have ``checksum``.

        Like :meth:`apply`: written into the inactive copy, swapped in between frames, then
        copied into the new inactive one.
        """
        with self._apply_lock:
            if base_version != self.version:
                return self._reject(
                    f"switch from version {base_version}, edge is at {self.version}"
                )
            if params.numel() != self.num_params:
                return self._reject(
                    f"switch to {params.numel()} parameters, model has {self.num_params}"
                )
            got = model_checksum(params)
            if got != checksum:
                return self._reject(f"expert checksum {got:08x}, trainer has {checksum:08x}")
            torch.nn.utils.vector_to_parameters(params.to(self.device), self._params(self.inactive))
            with self._swap_lock:
                self.active, self.inactive = self.inactive, self.active
                self.version = version
            self._checksum = got
            torch.nn.utils.vector_to_parameters(params.to(self.device), self._params(self.inactive))
            self.applied += 1
            self.last_error = ""
            return True

    def _reject(self, reason: str) -> bool:
        self.rejected += 1
        self.last_error = reason
        return False

    @torch.no_grad()
    def apply(self, data: bytes, expected_checksum: int | None = None) -> bool:
        """Apply one encoded update; False (and counted) if it was rejected."""
        with self._apply_lock:
            try:
                update = decode_update(data, self.num_params)
                if update.base_version != self.version and not update.full:
                    raise UpdateError(
                        f"update for version {update.base_version}, edge is at {self.version}"
                    )
            except UpdateError as exc:
                return self._reject(str(exc))
            self._patch(self.inactive, update)
            got = None
            if expected_checksum is not None:
                got = model_checksum(parameter_vector(self.inactive))
                if got != expected_checksum:
                    torch.nn.utils.vector_to_parameters(
                        parameter_vector(self.active), self._params(self.inactive)
                    )
                    return self._reject(
                        f"model checksum {got:08x} after the update, trainer has "
                        f"{expected_checksum:08x}"
                    )
            with self._swap_lock:
                self.active, self.inactive = self.inactive, self.active
                self.version = update.version
            self._checksum = got  # verified above, or computed when first asked for
            self._patch(self.inactive, update)
            self.applied += 1
            self.last_error = ""
            return True

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> torch.Tensor:
        return self.predict_with_entropy(images, entropy=False)[0]

    def predict_with_entropy(
        self, images: np.ndarray, entropy: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class per pixel, and (``entropy``) each image's mean per-pixel Shannon entropy of the
        model's own softmax: how unsure the model is of the frame (EdgeSync's Eq. 1, full
        entropy, 0 to ln C)."""
        x = to_tensor(images, self.device)
        with self._swap_lock:
            out = self.active(x)
        pred: torch.Tensor = out.argmax(1).cpu()
        if not entropy:
            return pred, None
        logp = torch.log_softmax(out.float(), dim=1)
        h = -(logp.exp() * logp).sum(1).mean(dim=(1, 2)).cpu()
        return pred, h
