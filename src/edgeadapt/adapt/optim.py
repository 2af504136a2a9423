"""Gradient-guided coordinate descent for Adam (Khani, Algorithm 3) and its momentum-SGD twin.

The optimiser works on the model's parameters as one flat vector of P coordinates. Each step
updates the first and second moments for *every* coordinate from the full gradient, computes the
Adam update vector u for every coordinate, and applies it only where the phase's mask is set. The
moments therefore always describe the path the deployed weights actually took, which is what lets
the next phase's mask be chosen from |u| of this phase's last iteration.

Adam's update is the standard one, u = lr * sqrt(1 - b2^i) / (1 - b1^i) * m / (sqrt(v) + eps); the
thesis prints sqrt(v + eps), which differs only below eps-sized second moments.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

Selection = Literal["gradient", "random", "full"]


class MaskedOptimizer:
    """Base: full-state optimiser whose steps land only on a mask of coordinates."""

    def __init__(self, params: Iterable[nn.Parameter]) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("no trainable parameters")
        self.numel = sum(p.numel() for p in self.params)
        device = self.params[0].device
        self.u_last: torch.Tensor | None = None  # the update vector of the last iteration
        self.step_count = 0
        self._device = device

    def flat_params(self) -> torch.Tensor:
        return parameters_to_vector(self.params).detach()

    def set_flat_params(self, flat: torch.Tensor) -> None:
        vector_to_parameters(flat, self.params)

    def flat_grad(self) -> torch.Tensor:
        return torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                for p in self.params
            ]
        )

    def update_vector(self, grad: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, mask: torch.Tensor | None) -> torch.Tensor:
        """One iteration from the gradients in ``.grad``; ``mask`` None means every coordinate."""
        self.step_count += 1
        u = self.update_vector(self.flat_grad())
        w = self.flat_params()
        w -= u if mask is None else u * mask
        self.set_flat_params(w)
        self.u_last = u
        return u

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict[str, object]:
        return {"step_count": self.step_count, "u_last": self.u_last}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.step_count = int(state["step_count"])  # type: ignore[call-overload]
        u = state["u_last"]
        self.u_last = u if isinstance(u, torch.Tensor) else None


class MaskedAdam(MaskedOptimizer):
    """Adam whose moments cover all coordinates and whose steps land on a mask (Algorithm 3)."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = torch.zeros(self.numel, device=self._device)
        self.v = torch.zeros(self.numel, device=self._device)

    def update_vector(self, grad: torch.Tensor) -> torch.Tensor:
        b1, b2 = self.betas
        i = self.step_count
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        step_size = self.lr * math.sqrt(1 - b2**i) / (1 - b1**i)
        return step_size * self.m / (self.v.sqrt() + self.eps)

    def state_dict(self) -> dict[str, object]:
        return {**super().state_dict(), "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, object]) -> None:
        super().load_state_dict(state)
        self.m = torch.as_tensor(state["m"]).to(self._device)
        self.v = torch.as_tensor(state["v"]).to(self._device)


class MaskedSGD(MaskedOptimizer):
    """SGD with momentum (the Just-In-Time baseline's optimiser) with masked steps."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 0.01, momentum: float = 0.9) -> None:
        super().__init__(params)
        self.lr, self.momentum = lr, momentum
        self.buf = torch.zeros(self.numel, device=self._device)

    def update_vector(self, grad: torch.Tensor) -> torch.Tensor:
        self.buf.mul_(self.momentum).add_(grad)
        return self.lr * self.buf


def num_selected(numel: int, gamma: float) -> int:
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    return max(1, min(numel, round(gamma * numel)))


def select_mask(
    numel: int,
    gamma: float,
    selection: Selection,
    u_prev: torch.Tensor | None,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The phase's coordinate mask (float 0/1): exactly round(gamma * P) coordinates.

    ``gradient``: the largest |u| of the previous phase's last iteration; uniformly random in the
    first phase (no u yet). ``random``: uniformly random every phase. ``full``: every coordinate.
    """
    mask = torch.zeros(numel, device=device)
    if selection == "full":
        mask.fill_(1.0)
        return mask
    k = num_selected(numel, gamma)
    if selection == "gradient" and u_prev is not None:
        idx = torch.topk(u_prev.abs(), k, sorted=False).indices
    elif selection in ("gradient", "random"):
        idx = torch.randperm(numel, generator=generator)[:k].to(device)
    else:
        raise ValueError(f"unknown selection {selection!r}")
    mask[idx] = 1.0
    return mask
