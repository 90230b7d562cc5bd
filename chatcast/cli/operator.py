"""What the operator types on a server's console: announcements, and moderation.

The console is always an operator: ``/kick``, ``/ban``, ``/unban``, ``/bans``, ``/mute``,
``/unmute`` and ``/topic`` act on the server at once through its Python API (as ``"server"``);
any other line is an announcement. :func:`client_moderation` does the same commands for
``chatcast client``, by asking the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from .._core.commands import (
    MODERATION_TYPES,
    OPERATOR_COMMANDS,
    Ban,
    Bans,
    Help,
    Kick,
    ModerationCommand,
    Mute,
    Op,
    Quit,
    Say,
    Topic,
    Unban,
    Unmute,
    help_text,
    parse_text,
)
from ..client import BroadcastClient
from ..exceptions import InvalidFrame
from ..message import INFO, Message, render_text
from ..server import BroadcastServer
from .console import Console

__all__ = ["announcements", "client_moderation", "moderate"]


async def announcements(
    console: Console, stop: asyncio.Event, server: BroadcastServer | None = None
) -> AsyncIterator[tuple[str, str]]:
    """Yield ``(line, text)`` for each line the operator types to announce.

    ``line`` is as typed, ``text`` what to announce (``//text`` announces ``/text``). The
    commands of :data:`~chatcast._core.commands.OPERATOR_COMMANDS` are the console's own:
    ``/help`` lists them and a mistyped command is answered here, never announced;
    ``/quit`` (or ``/exit``) sets ``stop`` and ends the iteration. So does the end of input,
    without setting ``stop``. A moderation command is done on ``server`` and its outcome
    written to the console; without a ``server`` (the parent of ``--workers``, which
    forwards lines as typed) it is yielded like an announcement, as ``(line, line)``.
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
        elif isinstance(command, MODERATION_TYPES):
            if server is None:
                yield line, line
            else:
                console.write(moderate(server, command))


def moderate(server: BroadcastServer, command: ModerationCommand) -> str:
    """Do a moderation command on ``server`` as its console; return what to show."""
    try:
        return _moderate(server, command)
    except (KeyError, ValueError) as exc:
        return f"! {exc.args[0] if exc.args else exc}"


def _moderate(server: BroadcastServer, command: ModerationCommand) -> str:
    match command:
        case Kick(name, reason):
            server.kick(name, reason)
            return f"* kicked {name}"
        case Ban(name, address, duration, reason):
            ban = server.ban(name, address, duration, reason)
            return f"* banned {ban.describe(time.time())}"
        case Unban(name, address):
            return f"* unbanned {server.unban(name, address).target()}"
        case Bans():
            now = time.time()
            lines = [f"  {ban.describe(now)}" for ban in server.bans()]
            return "\n".join(["* bans:", *lines]) if lines else "* no bans"
        case Mute(name, room, reason):
            mute = server.mute(name, room, reason)
            return f"* muted {mute.name} in {mute.room}"
        case Unmute(name, room):
            mute = server.unmute(name, room)
            return f"* unmuted {mute.name} in {mute.room}"
        case Topic(None, _):
            return "! name a room: /topic ROOM [TEXT|-]"
        case Topic(room, None):
            assert room is not None
            topic = server.topic(room)
            return f"* topic of {room}: {topic}" if topic else f"* no topic in {room}"
        case Topic(room, text):
            assert room is not None
            assert text is not None
            server.set_topic(room, text)
            return f"* topic of {room} set" if text else f"* topic of {room} cleared"
        case Op():
            return "* the console is always an operator"
    raise AssertionError(f"no console action for {command!r}")  # pragma: no cover


async def client_moderation(client: BroadcastClient, command: ModerationCommand) -> None:
    """Ask the server to do a moderation command typed in ``chatcast client``; its answer
    (or refusal) arrives as a message.

    Raises:
        ConnectionClosed: Not connected.
    """
    match command:
        case Op(token):
            await client.op(token)
        case Kick(name, reason):
            await client.kick(name, reason)
        case Ban(name, address, duration, reason):
            await client.ban(name, address=address, duration=duration, reason=reason)
        case Unban(name, address):
            await client.unban(name, address=address)
        case Bans():
            await client.list_bans()
        case Mute(name, room, reason):
            await client.mute(name, room, reason)
        case Unmute(name, room):
            await client.unmute(name, room)
        case Topic(room, None):
            await client.ask_topic(room)
        case Topic(room, text):
            assert text is not None
            if room is None:
                raise ValueError("name a room: /topic ROOM TEXT")
            await client.set_topic(room, text)
