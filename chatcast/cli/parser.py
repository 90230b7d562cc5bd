"""The ``chatcast`` command line: ``python -m chatcast COMMAND ...``.

Each command group lives in its own module and registers its parser here:
``multicast`` (:mod:`chatcast.cli.multicast`), ``server`` and ``client``
(:mod:`chatcast.cli.chat`), ``demo`` (:mod:`chatcast.cli.demo`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..exceptions import ChatcastError
from ..message import sanitize

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every subcommand registered."""
    from . import chat, demo, discover, multicast

    parser = argparse.ArgumentParser(
        prog="chatcast",
        description="Group messaging on asyncio: multicast channels and a broadcast chat hub.",
    )
    parser.add_argument("--version", action="version", version=f"chatcast {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)"
    )
    parser.add_argument(
        "--uvloop",
        action="store_true",
        help="run on uvloop (needs: pip install 'chatcast[speed]')",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo.add_parser(commands)
    multicast.add_parser(commands)
    chat.add_parser(commands)
    discover.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    loop_factory = None
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            print("chatcast: --uvloop needs uvloop: pip install 'chatcast[speed]'", file=sys.stderr)
            return 2
        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            status: int = runner.run(args.run(args))
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, ChatcastError) as exc:
        # The text may hold what a peer said (a server's refusal): shown, not obeyed.
        print(f"chatcast: {sanitize(str(exc))}", file=sys.stderr)
        return 1
    return status
