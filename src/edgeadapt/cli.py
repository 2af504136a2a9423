"""The ``edgeadapt`` command line.

Each subcommand lives in its own module and exposes ``add_arguments(parser, name)`` and
``run(args) -> int``; this module only wires them together. A subcommand module keeps heavy
imports (torch) inside its functions so that building the parser stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence

# (group, name) -> (module, help). A group of None is a top-level command.
COMMANDS: dict[tuple[str | None, str], tuple[str, str]] = {
    ("bench", "ams"): (
        "edgeadapt.bench.ams",
        "AMS against its baselines on one drifting video",
    ),
    ("bench", "recl"): (
        "edgeadapt.bench.recl",
        "RECL (model zoo, gating, safety checker) against AMS on devices whose scenes recur",
    ),
    ("bench", "scheduler"): (
        "edgeadapt.bench.scheduler",
        "GPU time-sharing policies (round-robin, micro-window, urgency) as devices grow",
    ),
    ("bench", "stream"): (
        "edgeadapt.bench.stream",
        "devices one trainer process serves in real time, over gRPC",
    ),
    ("bench", "chaos"): (
        "edgeadapt.bench.chaos",
        "trainer kills, network faults and a hostile client against real agents",
    ),
    ("bench", "state"): (
        "edgeadapt.bench.state",
        "one device's trainer state on disk and in memory, from a high-resolution camera",
    ),
    ("bench", "operator"): (
        "edgeadapt.bench.operator",
        "operator scale: N EdgeDevices to Ready against a local control plane",
    ),
    (None, "demo"): (
        "edgeadapt.demo",
        "a trainer and N edge agents over gRPC on loopback, with a non-adapting baseline",
    ),
    (None, "token"): (
        "edgeadapt.stream.token_cli",
        "make a trainer's token secret or mint a device's token",
    ),
    ("train", "teacher"): ("edgeadapt.models.train", "train the teacher on all scene types"),
    ("train", "student"): ("edgeadapt.models.train", "pretrain the student on generic scenes"),
    ("video", "render"): ("edgeadapt.video.render", "render a synthetic video to a file"),
}

GROUP_HELP = {
    "bench": "benchmarks that print and save their figures as JSON",
    "train": "train the models the benchmarks and trainer use",
    "video": "video sources",
}


def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeadapt", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    subparsers: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for (group, name), (module_name, help_text) in COMMANDS.items():
        if not _module_available(module_name):
            continue
        if group is None:
            sub = groups.add_parser(name, help=help_text)
        else:
            if group not in subparsers:
                gp = groups.add_parser(group, help=GROUP_HELP.get(group, ""))
                subparsers[group] = gp.add_subparsers(dest="command", required=True)
            sub = subparsers[group].add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(sub, name)
        sub.set_defaults(_run=module.run, _name=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    rc: int = args._run(args)
    return rc
