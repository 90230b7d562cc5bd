"""The ``chatcast`` command line (``chatcast.cli:main`` is the entry point).

A shell over the public API: ``parser`` builds the command tree, ``chat`` runs ``server`` and
``client``, ``multicast`` the multicast commands, ``demo`` the lab on loopback, ``workers`` the
``--workers N`` processes, ``console`` the terminal (output above the input line), ``lineedit``
the input line itself (pure logic: keys in, lines and drawing out) and ``reader`` the reading
of stdin that never blocks the loop. It imports no private module of the library, only the
core's command parser (:mod:`chatcast._core.commands`), which parses what the user types as it
parses what a client sends the server.
"""

from __future__ import annotations

from .parser import build_parser, main

__all__ = ["build_parser", "main"]
