"""``python -m chatcast``: the command-line interface (see :mod:`chatcast.cli`)."""

from .cli import main

raise SystemExit(main())
