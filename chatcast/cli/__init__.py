"""The ``chatcast`` command line (``chatcast.cli:main`` is the entry point).

A shell over the public API: ``parser`` builds the command tree, ``chat`` runs ``server`` and
``client``, ``multicast`` the multicast commands, ``demo`` the lab on loopback, ``workers`` the
``--workers N`` processes, ``console`` the terminal (output above, a line editor below). It
imports no private module of the library, only the core's command parser.
"""

from __future__ import annotations

from .parser import build_parser, main

__all__ = ["build_parser", "main"]
