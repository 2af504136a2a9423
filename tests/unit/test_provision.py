"""Model provisioning from weights sources: verified, kept, and refused with the source named."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeadapt.api.launch import ModelRef, WeightsSource
from edgeadapt.models.cache import ensure_checkpoint
from edgeadapt.models.provision import ProvisionError, provision

ARCH = "lraspp_mobilenet_v3_large"


@pytest.fixture(scope="module")
def student() -> Path:
    return ensure_checkpoint("student", "tiny")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server over tmp_path/www (the https-only rule is the CRD's and the parser's)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()


def test_a_file_source_is_checked_for_its_architecture(student: Path, tmp_path: Path) -> None:
    ref = ModelRef(ARCH, WeightsSource("file", str(student)))
    assert provision(ref, "student", tmp_path / "models") == student
    wrong = ModelRef("deeplabv3_resnet50", WeightsSource("file", str(student)))
    with pytest.raises(ProvisionError, match=f"teacher weights file:{student}: .* holds a {ARCH}"):
        provision(wrong, "teacher", tmp_path / "models")


def test_a_missing_or_unreadable_file_names_the_source(tmp_path: Path) -> None:
    missing = ModelRef(ARCH, WeightsSource("file", str(tmp_path / "nope.pth")))
    with pytest.raises(ProvisionError, match=r"student weights file:.*nope\.pth: no file"):
        provision(missing, "student", tmp_path / "models")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ProvisionError, match="not a readable checkpoint"):
        provision(ModelRef(ARCH, WeightsSource("file", str(junk))), "student", tmp_path / "m")


def test_a_download_is_kept_only_when_its_digest_matches(
    student: Path, served: tuple[str, Path], tmp_path: Path
) -> None:
    base, root = served
    (root / "s.pth").write_bytes(student.read_bytes())
    digest = hashlib.sha256(student.read_bytes()).hexdigest()
    models = tmp_path / "models"
    bad = ModelRef(ARCH, WeightsSource("url", f"{base}/s.pth", "0" * 64))
    with pytest.raises(ProvisionError, match="checksum mismatch"):
        provision(bad, "student", models)
    assert not list(models.iterdir())  # nothing half-fetched is left
    good = ModelRef(ARCH, WeightsSource("url", f"{base}/s.pth", digest))
    path = provision(good, "student", models)
    assert path.read_bytes() == student.read_bytes()
    (root / "s.pth").unlink()  # kept: a restart needs no download
    assert provision(good, "student", models) == path


def test_a_synthetic_source_trains_once_into_the_models_folder(tmp_path: Path) -> None:
    ref = ModelRef(ARCH, WeightsSource("synthetic", "tiny"))
    path = provision(ref, "student", tmp_path)
    assert path.parent == tmp_path
    mtime = path.stat().st_mtime_ns
    assert provision(ref, "student", tmp_path) == path
    assert path.stat().st_mtime_ns == mtime


def test_the_starting_checkpoint_keeps_weights_ids_and_size_only(tmp_path: Path) -> None:
    import torch

    from edgeadapt.models.zoo import (
        build_student,
        checkpoint_input_size,
        load_checkpoint_model,
        write_starting_checkpoint,
    )

    model = build_student(7, width_mult=0.5)
    source = tmp_path / "student.pth"
    torch.save(
        {
            "model": model.state_dict(),
            "ids": {"role": "student", "arch": model.arch, "config": model.config},
            "args": {"width": 128, "height": 64, "lr": 0.1},
            "optimizer": {"state": {i: torch.randn(1000) for i in range(20)}},
        },
        source,
    )
    out = write_starting_checkpoint(source, tmp_path / "models")
    assert out.stat().st_size < source.stat().st_size
    loaded = load_checkpoint_model(out)
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert checkpoint_input_size(out) == (128, 64)
    mtime = out.stat().st_mtime_ns
    assert write_starting_checkpoint(source, tmp_path / "models") == out  # written once
    assert out.stat().st_mtime_ns == mtime
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not an edgeadapt checkpoint"):
        write_starting_checkpoint(tmp_path / "other.pth", tmp_path / "models")
