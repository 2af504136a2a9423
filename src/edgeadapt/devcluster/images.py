"""The project's container images, built locally with buildah and imported into a real node.

``images/<name>/Dockerfile`` build from the repository root with ``docker build`` or ``buildah
bud``; their base is ``ARG BASE`` (default: the public ``python:3.11-slim``). No registry image
can be pulled here, so :func:`base_image` makes an equivalent Debian bookworm root with
mmdebstrap (Python 3.11 from Debian) and every build gets it as ``BASE``.

Every image is tagged twice: with the name users pull (``ghcr.io/edgeadapt/<name>:<version>``)
and with ``localhost/edgeadapt/<name>:<key>``, where the key hashes everything that goes into it
(the Dockerfile, ``.dockerignore``, each file its ``COPY`` lines bring in, the base's key). An
image whose key tag exists is not built again. Build time and size land in
``<cache>/images/<name>-<key>.json``; ``python -m edgeadapt.devcluster images`` prints them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeadapt import __version__

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
CACHE = Path(
    os.environ.get("EDGEADAPT_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeadapt"
)
REGISTRY = "ghcr.io/edgeadapt"
LOCAL = "localhost/edgeadapt"
# The Debian suite and packages of the local base: what python:3.11-slim offers the Dockerfiles
# (python3 with venv, CA certificates), plus passwd for useradd.
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates", "passwd")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Paths no image may contain: developer-only code.
DEVELOPER_ONLY = ("src/edgeadapt/devcluster", "tests", "tools", "scripts")


class BuildError(RuntimeError):
    """A step of an image build failed; the message names the step and its log file."""


@dataclass(frozen=True)
class Image:
    name: str  # folder under images/
    key: str  # content hash

    @property
    def dockerfile(self) -> Path:
        return REPO / "images" / self.name / "Dockerfile"

    @property
    def ref(self) -> str:
        """The name users pull and pods name."""
        return f"{REGISTRY}/{self.name}:{__version__}"

    @property
    def key_ref(self) -> str:
        return f"{LOCAL}/{self.name}:{self.key}"


def image_names(root: Path = REPO) -> list[str]:
    return sorted(p.parent.name for p in (root / "images").glob("*/Dockerfile"))


# ---------------------------------------------------------------------- what goes into an image


def ignore_patterns(root: Path = REPO) -> list[str]:
    path = root / ".dockerignore"
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def ignored(rel: str, patterns: Sequence[str]) -> bool:
    """Whether ``rel`` (a path relative to the context) is excluded: a pattern matches the path or
    one of its parent folders (the subset of .dockerignore syntax the project uses)."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("**/"):  # a name anywhere in the path
            if any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            return True
    return False


def copy_sources(dockerfile: Path) -> list[str]:
    """The context paths that the Dockerfile's ``COPY``/``ADD`` lines name (not ``--from``)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    sources: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() not in {"COPY", "ADD"}:
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in words[1:]):
            continue
        sources += [a.rstrip("/") or "." for a in args[:-1]]
    return sources


def context_files(dockerfile: Path, root: Path = REPO) -> list[str]:
    """Every file the Dockerfile copies into the image, after .dockerignore."""
    patterns = ignore_patterns(root)
    files: set[str] = set()
    for source in copy_sources(dockerfile):
        path = root / source
        if path.is_dir():
            for f in path.rglob("*"):
                rel = f.relative_to(root).as_posix()
                if f.is_file() and not ignored(rel, patterns):
                    files.add(rel)
        elif path.is_file() and not ignored(source, patterns):
            files.add(source)
        elif not path.exists():
            raise BuildError(f"{dockerfile.relative_to(root)}: COPY source {source} does not exist")
    return sorted(files)


def content_key(name: str, base_key: str, root: Path = REPO) -> str:
    dockerfile = root / "images" / name / "Dockerfile"
    digest = hashlib.sha256()
    digest.update(base_key.encode())
    for rel in [f"images/{name}/Dockerfile", ".dockerignore", *context_files(dockerfile, root)]:
        path = root / rel
        digest.update(rel.encode() + b"\0")
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------- building


def _run(argv: Sequence[str | Path], step: str, log_path: Path, **kw: Any) -> None:
    """Run one step with its output appended to ``log_path``; a failure names both."""
    with open(log_path, "ab") as out:
        out.write(f"\n$ {' '.join(map(str, argv))}\n".encode())
        out.flush()
        try:
            proc = subprocess.run(
                [str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT, **kw, check=False
            )
        except FileNotFoundError as exc:
            missing = f"{step}: {exc.filename} not found (scripts/node-host.sh installs it)"
            raise BuildError(missing) from exc
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise BuildError(f"{step} failed (exit {proc.returncode}); log: {log_path}\n{tail}")


def _buildah_has(ref: str) -> bool:
    out = subprocess.run(
        ["buildah", "images", "-q", ref], capture_output=True, text=True, check=False
    )
    return out.returncode == 0 and bool(out.stdout.strip())


def base_key() -> str:
    spec = json.dumps([BASE_SUITE, BASE_PACKAGES, "minbase"])
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def base_ref() -> str:
    return f"{LOCAL}/base:{BASE_SUITE}-{base_key()}"


def planned(name: str, root: Path = REPO) -> Image:
    """The image ``name`` as the checkout at ``root`` would build it."""
    return Image(name, content_key(name, base_ref().rsplit(":", 1)[1], root))


def base_image(log_dir: Path) -> str:
    """The local stand-in for ``python:3.11-slim``: Debian bookworm's minbase with Python 3.11,
    made with mmdebstrap and committed with buildah (a minute, once per package set)."""
    ref = base_ref()
    if _buildah_has(ref):
        return ref
    log_path = log_dir / "base.log"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        _run(
            ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
             BASE_SUITE, tarball, DEBIAN_MIRROR],
            "mmdebstrap of the base image", log_path,
        )  # fmt: skip
        ctr = subprocess.run(
            ["buildah", "from", "scratch"], capture_output=True, text=True, check=True
        ).stdout.strip()
        try:
            mnt = subprocess.run(
                ["buildah", "mount", ctr], capture_output=True, text=True, check=True
            ).stdout.strip()
            _run(["tar", "-C", mnt, "-xf", tarball], "unpacking the base image", log_path)
            _run(["buildah", "umount", ctr], "unmounting the base image", log_path)
            _run(
                ["buildah", "config", "--env", "LANG=C.UTF-8", "--cmd", "python3", ctr],
                "configuring the base image", log_path,
            )  # fmt: skip
            _run(["buildah", "commit", "--quiet", ctr, ref], "committing the base image", log_path)
        finally:
            subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False)
    _record("base", base_key(), time.monotonic() - started, ref)
    return ref


def build(
    names: Iterable[str] | None = None, *, log_dir: Path | None = None, root: Path = REPO
) -> list[Image]:
    """Build (or find built) the images of the checkout at ``root``; returns them with their
    content keys. A failed build raises :class:`BuildError` naming the image and its log."""
    log_dir = log_dir or CACHE / "images" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    (CACHE / "images").mkdir(parents=True, exist_ok=True)
    base = base_image(log_dir)
    built = []
    for name in names or image_names(root):
        image = planned(name, root)
        if not _buildah_has(image.key_ref):
            log.info("building image %s (%s)", image.ref, image.key)
            started = time.monotonic()
            _run(
                ["buildah", "bud", "--layers", "--force-rm", "--network=host",
                 "--build-arg", f"BASE={base}", *_pip_ca(),
                 "-f", root / "images" / name / "Dockerfile", "-t", image.key_ref,
                 "-t", image.ref, root],
                f"building image {name}", log_dir / f"{name}.log",
            )  # fmt: skip
            _record(name, image.key, time.monotonic() - started, image.key_ref)
            _prune_buildah(image)
        else:
            # The user-facing name follows the newest build of this content.
            subprocess.run(
                ["buildah", "tag", image.key_ref, image.ref], capture_output=True, check=False
            )
        built.append(image)
    return built


def _prune_buildah(current: Image) -> None:
    """Untag this image's older builds (their layers stay while a newer build shares them)."""
    out = subprocess.run(
        ["buildah", "images", "--format", "{{.Name}}:{{.Tag}}", f"{LOCAL}/{current.name}"],
        capture_output=True,
        text=True,
        check=False,
    )
    for ref in out.stdout.split():
        if ref != current.key_ref and ref.startswith(f"{LOCAL}/{current.name}:"):
            subprocess.run(["buildah", "rmi", ref], capture_output=True, check=False)


def _pip_ca() -> list[str]:
    """This machine's CA bundle as the ``pip-ca`` build secret: the package registry may be
    reached through a proxy whose certificate only the machine's bundle trusts."""
    bundle = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    return ["--secret", f"id=pip-ca,src={bundle}"] if Path(bundle).is_file() else []


def pause_image(pause_binary: Path, log_dir: Path) -> Image:
    """The pod sandbox image: the pause program built from the pinned Kubernetes module, alone in
    a FROM-scratch image (what registry.k8s.io/pause is)."""
    key = hashlib.sha256(pause_binary.read_bytes()).hexdigest()[:16]
    image = Image("pause", key)
    if _buildah_has(image.key_ref):
        return image
    log_path = log_dir / "pause.log"
    ctr = subprocess.run(
        ["buildah", "from", "scratch"], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        _run(["buildah", "copy", "--chmod", "0755", ctr, pause_binary, "/pause"],
             "copying pause into its image", log_path)  # fmt: skip
        _run(["buildah", "config", "--entrypoint", '["/pause"]', "--user", "65535:65535", ctr],
             "configuring the pause image", log_path)  # fmt: skip
        _run(["buildah", "commit", "--quiet", ctr, image.key_ref], "committing the pause image",
             log_path)  # fmt: skip
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False)
    return image


def _record(name: str, key: str, seconds: float, ref: str) -> None:
    out = subprocess.run(
        ["buildah", "images", "--json", ref], capture_output=True, text=True, check=False
    )
    size_mb = None
    if out.returncode == 0 and out.stdout.strip():
        entries = json.loads(out.stdout)
        if entries:
            size_mb = _megabytes(str(entries[0].get("size", "")))
    report = {"image": name, "key": key, "ref": ref, "build_s": round(seconds, 1)}
    report["size_mb"] = size_mb
    (CACHE / "images" / f"{name}-{key}.json").write_text(json.dumps(report, indent=2))


def _megabytes(human: str) -> float | None:
    """buildah's "1.23 GB" (decimal units) in MB."""
    units = {"B": 1e-6, "kB": 1e-3, "KB": 1e-3, "MB": 1.0, "GB": 1e3, "TB": 1e6}
    number, _, unit = human.strip().partition(" ")
    try:
        return round(float(number) * units[unit], 1)
    except (ValueError, KeyError):
        return None


def reports(images: Iterable[Image]) -> Iterator[dict[str, Any]]:
    """The recorded first-build time and size of each image (None where not recorded here)."""
    for image in images:
        path = CACHE / "images" / f"{image.name}-{image.key}.json"
        yield json.loads(path.read_text()) if path.exists() else {"image": image.name}


# ---------------------------------------------------------------------- into containerd


def _prune_containerd(ctr: str, socket: Path, current: list[Image]) -> None:
    """Drop older builds of the project's images from containerd: their key tags, and the
    ``sha256:`` references the CRI keeps per image that no remaining name points to. containerd
    then frees their layers, except those the current builds share."""
    base = [ctr, "-a", str(socket), "-n", "k8s.io", "images"]
    keep = {image.key_ref for image in current}
    names = {image.name for image in current}
    rows = subprocess.run([*base, "ls"], capture_output=True, text=True, check=False).stdout
    refs = [line.split() for line in rows.splitlines()[1:] if len(line.split()) >= 3]
    stale = [
        ref
        for ref, *_ in refs
        if ref.startswith(f"{LOCAL}/")
        and ref.split("/")[-1].split(":")[0] in names
        and ref not in keep
    ]
    named = {
        digest for ref, _, digest, *_ in refs if not ref.startswith("sha256:") and ref not in stale
    }
    stale += [
        ref for ref, _, digest, *_ in refs if ref.startswith("sha256:") and digest not in named
    ]
    if stale:
        subprocess.run([*base, "rm", *stale], capture_output=True, check=False)


def containerd_has(ctr: Path | str, socket: Path, ref: str) -> bool:
    out = subprocess.run(
        [str(ctr), "-a", str(socket), "-n", "k8s.io", "images", "ls", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.returncode == 0 and ref in out.stdout.split()


def import_into_containerd(images: Iterable[Image], socket: Path, log_path: Path) -> float:
    """Make every image available to the node's containerd (namespace k8s.io) under both of its
    names; an image already there under its key is not copied again. Returns seconds spent."""
    ctr = shutil.which("ctr") or "ctr"
    started = time.monotonic()
    for image in images:
        if not containerd_has(ctr, socket, image.key_ref):
            with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
                archive = Path(tmp) / "image.tar"
                _run(["buildah", "push", "--quiet", image.key_ref,
                      f"docker-archive:{archive}:{image.key_ref}"],
                     f"exporting image {image.name}", log_path)  # fmt: skip
                _run([ctr, "-a", socket, "-n", "k8s.io", "images", "import", archive],
                     f"importing image {image.name} into containerd", log_path)  # fmt: skip
        if image.name != "pause":
            _run([ctr, "-a", socket, "-n", "k8s.io", "images", "tag", "--force", image.key_ref,
                  image.ref], f"tagging image {image.name}", log_path)  # fmt: skip
    _prune_containerd(ctr, socket, list(images))
    return time.monotonic() - started
