"""``python -m blipkit``: the ``blipkit`` command."""

from blipkit.cli import main

raise SystemExit(main())
