"""The Dockerfiles under images/: built from the base ARG, fully pinned, non-root, and carrying no
developer-only code. Building them is the real-node tier's (tests/node)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from edgeadapt.api.specs import AdaptationPolicySpec, EdgeDeviceSpec, ModelZooSpec
from edgeadapt.api.v1alpha1 import ADAPTATION_POLICY, EDGE_DEVICE, MODEL_ZOO
from edgeadapt.controllers import adaptationpolicy, edgedevice, modelzoo
from edgeadapt.controllers.common import Images, Owner
from edgeadapt.devcluster import images
from edgeadapt.devcluster.images import REPO

NAMES = images.image_names()


def dockerfile(name: str) -> str:
    return (REPO / "images" / name / "Dockerfile").read_text()


def test_the_image_set_is_one_runtime_and_one_operator_image() -> None:
    assert NAMES == ["operator", "runtime"]


@pytest.mark.parametrize("name", NAMES)
def test_every_dockerfile_builds_from_the_base_arg(name: str) -> None:
    lines = [line.strip() for line in dockerfile(name).splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0] == "ARG BASE=python:3.11-slim"
    froms = [line for line in instructions if line.upper().startswith("FROM ")]
    assert froms == ["FROM ${BASE}"]


@pytest.mark.parametrize("name", NAMES)
def test_no_image_copies_developer_only_code(name: str) -> None:
    files = images.context_files(REPO / "images" / name / "Dockerfile")
    assert files, "the image copies nothing"
    for path in files:
        assert not any(path == d or path.startswith(d + "/") for d in images.DEVELOPER_ONLY), path
        assert "__pycache__" not in path


@pytest.mark.parametrize("name", NAMES)
def test_images_run_as_a_non_root_user_with_pinned_packages(name: str) -> None:
    text = dockerfile(name)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users
    assert users[-1].split(":")[0] not in {"0", "root"}
    installs = re.findall(r"pip install ([^\n&]+)", text)
    assert installs
    assert all("-c /opt/requirements/images.lock" in i for i in installs)


def test_the_lock_pins_every_runtime_requirement_at_its_version() -> None:
    lock = dict(
        line.split("==")
        for line in (REPO / "requirements" / "images.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for raw in (REPO / "requirements" / "runtime.txt").read_text().splitlines():
        line = raw.split("#")[0].strip()
        if not line:
            continue
        match = re.match(r"([A-Za-z0-9_.-]+)\s*(==|>=)?\s*(\S*)", line)
        assert match, line
        name, op, version = match.groups()
        name = re.sub(r"[-_.]+", "-", name).lower()
        assert name in lock, f"{name} is not in images.lock"
        if op == "==":
            assert lock[name] == version, name


def test_the_operator_image_installs_what_its_code_imports() -> None:
    """Every third-party package the operator image's code imports is one its pip line names,
    and every project module it imports is copied in."""
    files = images.context_files(REPO / "images" / "operator" / "Dockerfile")
    installed = set(
        re.search(r"pip install (.+?) -c", dockerfile("operator")).group(1).split()  # type: ignore[union-attr]
    )
    dists = packages_distributions()
    imported: set[str] = set()
    for rel in (f for f in files if f.endswith(".py")):
        tree = ast.parse((REPO / rel).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module)
    for module in sorted(imported):
        top = module.split(".")[0]
        if top == "edgeadapt":
            parts = module.split(".")
            candidates = {
                "src/" + "/".join(parts) + ".py",
                "src/" + "/".join(parts) + "/__init__.py",
            }
            assert candidates & set(files), f"the operator image lacks {module}"
        elif top not in sys.stdlib_module_names and top != "__future__":
            names = {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(top, [top])}
            assert names & installed, f"{module} is imported but not installed ({names})"


def _command(workload: str) -> list[str]:
    meta = {"metadata": {"name": "x", "namespace": "ns", "uid": "u", "generation": 1}}
    images_ = Images()
    if workload == "trainer":
        body = adaptationpolicy.stateful_set(
            Owner.of(ADAPTATION_POLICY, meta), AdaptationPolicySpec.of({}), 1, "h", "k", images_
        )
        return list(body["spec"]["template"]["spec"]["containers"][0]["command"])
    if workload == "gating":
        body = modelzoo.deployment(Owner.of(MODEL_ZOO, meta), ModelZooSpec.of({}), images_)
        return list(body["spec"]["template"]["spec"]["containers"][0]["command"])
    body = edgedevice.agent_pod(
        Owner.of(EDGE_DEVICE, meta), EdgeDeviceSpec.of({}), "", "p", images_
    )
    return list(body["spec"]["containers"][0]["command"])


@pytest.mark.parametrize(
    "workload",
    [
        "trainer",
        "edge-agent",
        "gating",
    ],
)
def test_the_runtime_image_carries_each_workloads_command(workload: str) -> None:
    """The operator's pods name ``python -m <module>`` with the runtime image: the module is in it
    and the image is the one the workload defaults to."""
    command = _command(workload)
    assert command[:2] == ["python", "-m"]
    module = command[2].replace(".", "/")
    files = set(images.context_files(REPO / "images" / "runtime" / "Dockerfile"))
    assert {f"src/{module}/__main__.py", f"src/{module}.py"} & files, command
    default = {"trainer": Images().trainer, "gating": Images().gating}.get(
        workload, Images().edge_agent
    )
    assert default == images.Image("runtime", "").ref


def test_the_operator_image_runs_the_charts_command() -> None:
    assert 'ENTRYPOINT ["python", "-m", "edgeadapt.operator"]' in dockerfile("operator")


def test_dockerignore_matching() -> None:
    patterns = ["src/edgeadapt/devcluster", "**/__pycache__", "tests"]
    assert images.ignored("src/edgeadapt/devcluster/node.py", patterns)
    assert images.ignored("src/edgeadapt/trainer/__pycache__/hub.cpython-311.pyc", patterns)
    assert images.ignored("tests/unit/test_images.py", patterns)
    assert not images.ignored("src/edgeadapt/trainer/hub.py", patterns)


def test_the_content_key_follows_what_goes_into_the_image(tmp_path: Path) -> None:
    (tmp_path / "images" / "x").mkdir(parents=True)
    (tmp_path / "images" / "x" / "Dockerfile").write_text(
        "ARG BASE=python:3.11-slim\nFROM ${BASE}\nCOPY src/ /opt/src/\n"
    )
    (tmp_path / ".dockerignore").write_text("src/dev\n")
    (tmp_path / "src" / "dev").mkdir(parents=True)
    (tmp_path / "src" / "app.py").write_text("a = 1\n")
    key = images.content_key("x", "base1", tmp_path)
    (tmp_path / "src" / "dev" / "tool.py").write_text("ignored\n")
    assert images.content_key("x", "base1", tmp_path) == key
    assert images.content_key("x", "base2", tmp_path) != key
    (tmp_path / "src" / "app.py").write_text("a = 2\n")
    assert images.content_key("x", "base1", tmp_path) != key
