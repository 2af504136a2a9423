"""Masked Adam (Algorithm 3) and mask selection."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgeadapt.adapt.optim import MaskedAdam, MaskedSGD, num_selected, select_mask


def _params(values: list[float]) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values, dtype=torch.float32))


def test_masked_adam_matches_hand_computed_reference() -> None:
    p = _params([1.0, -2.0, 0.5, 3.0])
    opt = MaskedAdam([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    grads = [torch.tensor([0.5, -1.0, 2.0, 0.1]), torch.tensor([-0.3, 0.4, 1.0, -0.2])]

    # Reference, written out coordinate by coordinate.
    w = [1.0, -2.0, 0.5, 3.0]
    m = [0.0] * 4
    v = [0.0] * 4
    for i, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step(mask)
        alpha = 0.1 * math.sqrt(1 - 0.999**i) / (1 - 0.9**i)
        for j in range(4):
            m[j] = 0.9 * m[j] + 0.1 * float(g[j])
            v[j] = 0.999 * v[j] + 0.001 * float(g[j]) ** 2
            u = alpha * m[j] / (math.sqrt(v[j]) + 1e-8)
            if mask[j]:
                w[j] -= u
        assert p.detach().tolist() == pytest.approx(w, abs=1e-6)
        # Moments move for every coordinate, masked or not.
        assert opt.m.tolist() == pytest.approx(m, abs=1e-7)
        assert opt.v.tolist() == pytest.approx(v, abs=1e-9)
    # Unmasked coordinates never moved; u_last covers all coordinates.
    assert p[1].item() == -2.0 and p[3].item() == 3.0
    assert opt.u_last is not None and bool((opt.u_last[[1, 3]] != 0).all())


def test_masked_sgd_momentum_reference() -> None:
    p = _params([1.0, 1.0])
    opt = MaskedSGD([p], lr=0.5, momentum=0.9)
    p.grad = torch.tensor([1.0, 2.0])
    opt.step(torch.tensor([1.0, 1.0]))
    p.grad = torch.tensor([1.0, 2.0])
    opt.step(torch.tensor([1.0, 0.0]))
    # buf1 = g, buf2 = 0.9 g + g = 1.9 g
    assert p.detach().tolist() == pytest.approx([1 - 0.5 - 0.95, 1 - 1.0])


def test_gradient_mask_is_exactly_the_top_gamma_coordinates() -> None:
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(1000, generator=gen)
    mask = select_mask(1000, 0.05, "gradient", u, gen)
    chosen = set(torch.nonzero(mask).squeeze(1).tolist())
    expected = set(torch.argsort(u.abs(), descending=True)[:50].tolist())
    assert len(chosen) == 50
    assert chosen == expected


def test_first_phase_and_random_masks_have_exact_size_and_vary() -> None:
    gen = torch.Generator().manual_seed(1)
    a = select_mask(1000, 0.05, "gradient", None, gen)
    b = select_mask(1000, 0.05, "random", torch.ones(1000), gen)
    assert int(a.sum()) == 50 and int(b.sum()) == 50
    assert not torch.equal(a, b)
    assert int(select_mask(10, 0.05, "full", None, gen).sum()) == 10


@pytest.mark.parametrize("gamma", [0.0, -0.1, 1.5])
def test_gamma_out_of_range_is_refused(gamma: float) -> None:
    with pytest.raises(ValueError, match="gamma"):
        num_selected(100, gamma)
