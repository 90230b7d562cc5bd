"""What the operator types on a server's console: announcements and the console's commands."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from .._core.commands import OPERATOR_COMMANDS, Help, Quit, Say, help_text, parse_text
from ..exceptions import InvalidFrame
from ..message import INFO, Message, render_text
from .console import Console

__all__ = ["announcements"]


async def announcements(console: Console, stop: asyncio.Event) -> AsyncIterator[tuple[str, str]]:
    """Yield ``(line, text)`` for each line the operator types to announce.

    ``line`` is as typed, ``text`` what to announce (``//text`` announces ``/text``). The
    commands of :data:`~chatcast._core.commands.OPERATOR_COMMANDS` are the console's own:
    ``/help`` lists them and a mistyped command is answered here, never announced;
    ``/quit`` (or ``/exit``) sets ``stop`` and ends the iteration. So does the end of input,
    without setting ``stop``.
    """
    while True:
        line = await console.read_line()
        if line is None:
            return
        line = line.strip()
        if not line:
            continue
        try:
            command = parse_text(line, OPERATOR_COMMANDS)
        except InvalidFrame as exc:
            console.write(f"! {exc}")
            continue
        if isinstance(command, Quit):
            stop.set()
            return
        if isinstance(command, Help):
            console.write(render_text(Message(help_text(OPERATOR_COMMANDS), kind=INFO)))
        elif isinstance(command, Say):
            yield line, command.text
