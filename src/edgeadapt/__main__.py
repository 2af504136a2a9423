"""``python -m edgeadapt`` is the ``edgeadapt`` command."""

from edgeadapt.cli import main

raise SystemExit(main())
