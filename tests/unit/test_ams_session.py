"""The per-device AMS session: phases, masks, and server/edge copies that stay identical."""

from __future__ import annotations

import math

import numpy as np
import torch

from edgeadapt.adapt.ams import AMSConfig, AMSSession, EdgeModel
from edgeadapt.adapt.update import decode_update, encode_update
from edgeadapt.models.zoo import build_student


def _frames(n: int, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (n, 32, 64, 3), dtype=np.uint8)
    labels = torch.from_numpy((images[..., 0] > 127).astype(np.int64) * 2)
    return images, labels


def test_phases_send_exactly_gamma_and_keep_edge_identical_to_server() -> None:
    torch.manual_seed(0)
    student = build_student(7, width_mult=0.5).eval()
    cfg = AMSConfig(iterations=3, batch_size=2, gamma=0.05, seed=1)
    session = AMSSession(student, cfg, num_classes=7)
    edge = EdgeModel(student)
    k = round(0.05 * session.num_params)
    masks = []
    for phase in range(3):
        images, labels = _frames(4, phase)
        session.ingest(images, labels, [phase * 10.0 + i for i in range(4)])
        update = session.train_phase(now=phase * 10.0 + 4)
        assert update is not None
        assert len(update.indices) == k
        assert (update.version, update.base_version) == (phase + 1, phase)
        masks.append(set(update.indices.tolist()))
        data = encode_update(update)
        assert decode_update(data).num_params == session.num_params
        assert edge.apply(data)
        server = torch.nn.utils.parameters_to_vector(session.model.parameters())
        device = torch.nn.utils.parameters_to_vector(edge.active.parameters())
        assert torch.equal(server, device), "edge and server copies diverged"
    # Phase 2 and 3 masks follow |u| of the previous phase, not the random first one.
    assert masks[1] != masks[0]


def test_no_data_in_horizon_means_no_update() -> None:
    student = build_student(7, width_mult=0.5).eval()
    session = AMSSession(student, AMSConfig(t_horizon=5.0), num_classes=7)
    assert session.train_phase(now=0.0) is None
    images, labels = _frames(2, 0)
    session.ingest(images, labels, [0.0, 1.0])
    assert session.train_phase(now=100.0) is None  # everything is older than the horizon


def test_the_edge_models_entropy_is_its_own_uncertainty() -> None:
    torch.manual_seed(0)
    edge = EdgeModel(build_student(num_classes=6, width_mult=0.25))
    images = np.random.default_rng(0).integers(0, 255, (2, 32, 64, 3), dtype=np.uint8)
    pred, entropy = edge.predict_with_entropy(images)
    assert pred.shape == (2, 32, 64)
    assert entropy is not None
    assert entropy.shape == (2,)
    assert ((entropy >= 0) & (entropy <= math.log(6) + 1e-5)).all()
    assert edge.predict_with_entropy(images, entropy=False)[1] is None
    assert torch.equal(edge.predict(images), pred)
