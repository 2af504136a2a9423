"""``python -m edgeadapt.operator [kopf run options]``: run the operator.

The same as ``kopf run --standalone -m edgeadapt.operator.handlers [options]``, and cluster-wide
(``--all-namespaces``) unless ``--namespace NS`` is given; the options are kopf's (``--liveness``,
``--log-format``, ``--verbose`` ...).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def kopf_arguments(argv: Sequence[str]) -> list[str]:
    """``kopf run`` arguments for our options; records the namespaces for the manager."""
    args = list(argv)
    namespaces = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-n", "--namespace")] + [
        a.split("=", 1)[1] for a in args if a.startswith("--namespace=")
    ]
    if namespaces:
        os.environ["EDGEADAPT_WATCH_NAMESPACES"] = ",".join(namespaces)
    elif "-A" not in args and "--all-namespaces" not in args:
        args.append("--all-namespaces")
    return ["run", "--standalone", "-m", "edgeadapt.operator.handlers", *args]


def main(argv: Sequence[str] | None = None) -> int:
    from kopf.cli import main as kopf_main

    kopf_main(args=kopf_arguments(sys.argv[1:] if argv is None else argv), prog_name="kopf")
    return 0


if __name__ == "__main__":
    sys.exit(main())
