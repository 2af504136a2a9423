"""The weights digest the benchmarks record beside their figures."""

from __future__ import annotations

import copy

import torch

from edgeadapt.models.zoo import build_student, weights_digest


def test_the_digest_follows_the_weights_and_the_buffers() -> None:
    torch.manual_seed(0)
    model = build_student(5, width_mult=0.5)
    same = copy.deepcopy(model)
    digest = weights_digest(model)
    assert len(digest) == 16
    assert weights_digest(same) == digest, "equal states give equal digests"

    with torch.no_grad():
        next(same.parameters()).view(-1)[0] += 1e-6
    assert weights_digest(same) != digest, "one parameter moved by a rounding error"

    other = copy.deepcopy(model)
    running = next(b for n, b in other.named_buffers() if n.endswith("running_mean"))
    running.add_(1.0)
    assert weights_digest(other) != digest, "a batch-norm statistic is part of the model"

    torch.manual_seed(1)
    assert weights_digest(build_student(5, width_mult=0.5)) != digest
