"""``chatcast multicast chat|send|receive``: the lab's multicast scripts, done right.

* ``chat``: interactive; typed lines are sent, messages from others are printed above the
  input line as they arrive.
* ``send TEXT...``: send one message (the words joined by spaces), or, without TEXT, every
  non-empty line of stdin, like the lab's ``sender.py``.
* ``receive [--count N]``: print messages as they arrive, like the lab's ``receiver1.py``;
  ``--count`` exits after N. A line on stderr says when it is listening.

Everything received is printed through :func:`chatcast.message.render_text` or
:func:`chatcast.message.sanitize`: control characters from the network never reach the
terminal.

``--key KEY``, or the environment variable ``CHATCAST_MULTICAST_KEY`` (kept out of ``ps``),
signs what is sent and accepts only datagrams signed with the same key. ``--key`` wins over
the variable; an empty variable counts as unset.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import signal
import sys
from collections.abc import Callable

from .._core.commands import MULTICAST_COMMANDS, Help, Quit, Say, help_text, parse_text
from ..exceptions import InvalidFrame, MessageTooLong
from ..message import INFO, Message, render_text, sanitize
from ..multicast import DEFAULT_GROUP, DEFAULT_PORT, DEFAULT_TTL, MulticastChannel
from .console import Console, log_to

__all__ = ["KEY_ENV", "add_parser", "run_chat", "run_receive", "run_send"]

#: The environment variable holding the group key, so it stays out of ``ps`` and history.
KEY_ENV = "CHATCAST_MULTICAST_KEY"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``multicast`` command and its ``chat``, ``send`` and ``receive`` actions."""
    common = argparse.ArgumentParser(add_help=False)
    options = common.add_argument_group("multicast options")
    options.add_argument(
        "--group", default=DEFAULT_GROUP, help="multicast group (default: %(default)s)"
    )
    options.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="UDP port (default: %(default)s)"
    )
    options.add_argument(
        "--ttl",
        type=int,
        default=DEFAULT_TTL,
        help="hops datagrams may travel: 0 this host, 1 the local network (default: %(default)s)",
    )
    options.add_argument(
        "--interface",
        default=None,
        help="address or name of the interface to use, e.g. 192.168.1.10, eth0, or 127.0.0.1 "
        "to stay on this host (default: the OS's choice, from the route to the group)",
    )
    options.add_argument(
        "--name",
        default=None,
        help="your name on messages you send (default: your login name)",
    )
    options.add_argument(
        "--plain",
        action="store_true",
        help="send bare text, as the lab's sender.py (no name); receive: print the text only, "
        "as the lab's receivers",
    )
    options.add_argument(
        "--key",
        default=None,
        help=f"sign what you send and accept only what is signed with this key (better: set "
        f"${KEY_ENV}, kept out of ps; --key wins over it). Authenticity, not secrecy: anyone "
        "on the network can still read the text",
    )

    options.add_argument(
        "--reliable",
        action="store_true",
        help="repair lost messages (NACKs and repairs on the repair port, --port + 1 by "
        "default): messages of reliable senders arrive each once, in order; what cannot be "
        "repaired is shown as a gap",
    )
    options.add_argument(
        "--unordered",
        action="store_true",
        help="with --reliable: show messages as they come instead of holding back those after "
        "a gap",
    )
    options.add_argument(
        "--repair-port",
        type=int,
        default=None,
        help="with --reliable: UDP port of control and repair traffic (default: --port + 1)",
    )

    multicast = commands.add_parser(
        "multicast",
        help="chat over UDP multicast (the lab's sender.py and receiver.py)",
        description=(
            "Group chat over UDP multicast, with no server: everyone who joins the group "
            "gets every message. Interoperates with plain UDP programs such as the lab's "
            "sender.py and receiver1.py."
        ),
    )
    actions = multicast.add_subparsers(dest="action", metavar="ACTION", required=True)

    chat = actions.add_parser(
        "chat",
        parents=[common],
        help="interactive chat",
        description=(
            "Interactive chat: lines you type are sent to the group; messages from others "
            "are printed above your input line as they arrive. Ctrl-D leaves."
        ),
    )
    chat.set_defaults(run=run_chat)

    send = actions.add_parser(
        "send",
        parents=[common],
        help="send a message, or lines from stdin",
        description=(
            "Send TEXT (the words joined by spaces) as one message; without TEXT, send each "
            "non-empty line of stdin as a message, until end of input."
        ),
    )
    send.add_argument("text", nargs="*", metavar="TEXT", help="the message")
    send.set_defaults(run=run_send)

    receive = actions.add_parser(
        "receive",
        parents=[common],
        help="print messages as they arrive",
        description=(
            "Print each message received, one per line, until Ctrl-C (or --count messages). "
            "Datagrams from any UDP program are shown as text from their source address."
        ),
    )
    receive.add_argument(
        "--count", type=_positive, default=None, metavar="N", help="exit after N messages"
    )
    receive.set_defaults(run=run_receive)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _key(args: argparse.Namespace) -> str | None:
    """The key: ``--key`` if given (even empty, which the channel refuses), else the
    environment variable unless it is empty."""
    if args.key is not None:
        return str(args.key)
    return os.environ.get(KEY_ENV) or None


def _channel(args: argparse.Namespace, *, receive_only: bool = False) -> MulticastChannel:
    name = args.name if args.name is not None else _login_name()
    key = _key(args)
    # receive --plain only changes how messages are printed; it sends nothing.
    plain = args.plain and not receive_only
    if key is not None and plain:
        raise ValueError(
            f"--plain sends unsigned text, so it cannot be used with a key (--key or ${KEY_ENV})"
        )
    if args.reliable and plain:
        raise ValueError("--plain sends bare text, which cannot be repaired: drop --reliable")
    return MulticastChannel(
        args.group,
        args.port,
        interface=args.interface,
        ttl=args.ttl,
        name=name,
        plain=plain,
        key=key,
        reliable=args.reliable,
        ordered=not args.unordered,
        repair_port=args.repair_port,
    )


def _login_name() -> str | None:
    try:
        return getpass.getuser() or None
    except (OSError, KeyError, ImportError):  # no login name (containers, odd environments)
        return None


def _where(channel: MulticastChannel, args: argparse.Namespace, *, ttl: bool = True) -> str:
    interface = args.interface or "the default interface"
    where = f"{channel.group} port {channel.port} on {interface}"
    where = f"{where}, ttl {channel.ttl}" if ttl else where
    where = f"{where}, signed" if _key(args) is not None else where
    return f"{where}, reliable" if args.reliable else where


def _render(message: Message, plain: bool) -> str:
    return sanitize(message.text, keep_newlines=True) if plain else render_text(message)


def _on_sigterm(callback: Callable[[], object]) -> Callable[[], None]:
    """Run ``callback`` on SIGTERM (where the loop supports it); return the undo."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGTERM, callback)
    except (NotImplementedError, RuntimeError, AttributeError):  # Windows
        return lambda: None

    def undo() -> None:
        loop.remove_signal_handler(signal.SIGTERM)

    return undo


async def run_receive(args: argparse.Namespace) -> int:
    """Print messages until Ctrl-C, SIGTERM or ``--count`` messages; return 0."""
    async with _channel(args, receive_only=True) as channel:
        undo = _on_sigterm(channel.close)
        try:
            print(
                f"chatcast: receiving on {_where(channel, args, ttl=False)} (Ctrl-C to stop)",
                file=sys.stderr,
                flush=True,
            )
            count = 0
            async for message in channel:
                print(_render(message, args.plain), flush=True)
                count += 1
                if args.count is not None and count >= args.count:
                    break
        except BrokenPipeError:
            # The reader went away (| head): stop quietly, and keep Python's final flush of
            # stdout from complaining again.
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
        finally:
            undo()
    return 0


async def run_send(args: argparse.Namespace) -> int:
    """Send TEXT, or each non-empty line of stdin; return 1 if a line was too long."""
    async with _channel(args) as channel:
        if args.text:
            # Bytes in argv that are not UTF-8 arrive as lone surrogates: make them U+FFFD,
            # as for lines read from stdin.
            text = " ".join(args.text).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            if not text.strip():
                print("chatcast: nothing to send: the text is empty", file=sys.stderr)
                return 1
            await channel.send(text)
            return 0
        status = 0
        async with Console(prompt="send> ") as console:
            while (line := await console.read_line()) is not None:
                if not line:
                    continue  # an empty datagram carries nothing: receivers skip it
                try:
                    await channel.send(line)
                except MessageTooLong as exc:
                    print(f"chatcast: not sent: {exc}", file=sys.stderr, flush=True)
                    status = 1
        return status


async def run_chat(args: argparse.Namespace) -> int:
    """Chat until Ctrl-D, end of input or SIGTERM; return 0, or 1 after a network error."""
    async with _channel(args) as channel, Console(prompt="> ") as console:
        with log_to(console, "chatcast.multicast"):
            return await _chat(args, channel, console)


async def _chat(args: argparse.Namespace, channel: MulticastChannel, console: Console) -> int:
    stop = asyncio.Event()
    status = 0
    undo = _on_sigterm(stop.set)
    as_whom = "plain text" if channel.plain else (channel.name or "no name")
    console.write(
        f"* chatting on {_where(channel, args)} as {as_whom} (/quit or Ctrl-D to leave; "
        "//text sends a line that starts with '/')"
    )
    tasks = [
        asyncio.create_task(_show_incoming(console, channel, args.plain)),
        asyncio.create_task(_send_typed(console, channel)),
        asyncio.create_task(stop.wait()),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.exception() is not None:
                console.write(f"! {task.exception()}")
                status = 1
    finally:
        undo()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return status


async def _show_incoming(console: Console, channel: MulticastChannel, plain: bool) -> None:
    async for message in channel:
        console.write(_render(message, plain))


async def _send_typed(console: Console, channel: MulticastChannel) -> None:
    """Send each typed line until ``/quit`` or end of input; show ``/help`` and mistakes."""
    while (line := await console.read_line()) is not None:
        if not line:
            continue  # an empty datagram carries nothing: receivers skip it
        try:
            command = parse_text(line, MULTICAST_COMMANDS)
        except InvalidFrame as exc:
            console.write(f"! {exc}")
            continue
        if isinstance(command, Quit):
            return
        if isinstance(command, Help):
            console.write(render_text(Message(help_text(MULTICAST_COMMANDS), kind=INFO)))
            continue
        assert isinstance(command, Say)  # MULTICAST_COMMANDS parses to nothing else
        try:
            await channel.send(command.text)
        except (MessageTooLong, OSError) as exc:
            console.write(f"! not sent: {exc}")
