"""``chatcast discover``: list the chat servers that announce themselves on the LAN, and the
discovery half of ``chatcast client`` without ``--host``.

Everything a server announces comes from the network: names are printed through
:func:`chatcast.message.sanitize`, so they cannot drive the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import threading
from typing import Any

from ..discovery import (
    DEFAULT_DISCOVERY_GROUP,
    DEFAULT_DISCOVERY_PORT,
    DiscoveredServer,
    Discovery,
    discover,
    discover_once,
)
from ..message import sanitize

__all__ = ["KEY_ENV", "add_discovery_options", "add_parser", "choose_server", "run_discover"]

#: The multicast key's environment variable (as ``chatcast multicast``): beacons are signed
#: and checked with it.
KEY_ENV = "CHATCAST_MULTICAST_KEY"
#: Seconds between two redraws of the live table at most.
_REDRAW = 0.2


def add_discovery_options(parser: argparse.ArgumentParser, *, key_flag: str = "--key") -> None:
    """The options every discovering command shares: interface, key, group and port."""
    parser.add_argument(
        "--interface",
        default=None,
        help="address or name of the interface to listen on, e.g. 192.168.1.10 or eth0 "
        "(default: the OS's choice, from the route to the group)",
    )
    parser.add_argument(
        key_flag,
        dest="multicast_key",
        default=None,
        help=f"hear only servers whose beacons are signed with this multicast key (better: "
        f"set ${KEY_ENV}, kept out of ps)",
    )
    parser.add_argument(
        "--discovery-group",
        default=DEFAULT_DISCOVERY_GROUP,
        metavar="GROUP",
        help="the discovery group (default: %(default)s)",
    )
    parser.add_argument(
        "--discovery-port",
        type=int,
        default=DEFAULT_DISCOVERY_PORT,
        metavar="PORT",
        help="the discovery UDP port (default: %(default)s)",
    )


def multicast_key(args: argparse.Namespace) -> str | None:
    """The key option if given, else the environment variable unless it is empty."""
    if args.multicast_key is not None:
        return str(args.multicast_key)
    return os.environ.get(KEY_ENV) or None


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``discover`` command."""
    parser = commands.add_parser(
        "discover",
        help="list the chat servers announcing themselves on the LAN",
        description=(
            "List the chat servers that announce themselves on the local network "
            "('chatcast server --announce'). On a terminal the list is redrawn as servers "
            "come, change and go; otherwise one line is printed per change. Ctrl-C stops."
        ),
    )
    add_discovery_options(parser)
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="stop after S seconds (default with --once: 3; else: run until Ctrl-C)",
    )
    parser.add_argument(
        "--once", action="store_true", help="listen for --timeout seconds, print the list, exit"
    )
    parser.add_argument(
        "--json", action="store_true", help="JSON: a list with --once, else one object per change"
    )
    parser.set_defaults(run=run_discover)


def as_json(server: DiscoveredServer) -> dict[str, Any]:
    """A server as the JSON object ``--json`` prints."""
    return {
        "id": server.server_id,
        "name": server.name,
        "host": server.host,
        "port": server.port,
        "tcp": server.tcp,
        "tls": server.tls,
        "web": server.web,
        "token": server.token,
        "clients": server.clients,
        "source": server.source,
        "gone": server.gone,
    }


def describe(server: DiscoveredServer) -> str:
    """One line: name, where, ports, token, clients (sanitised)."""
    kinds = (("tcp", server.tcp), ("tls", server.tls), ("web", server.web))
    ports = [f"{kind} {port}" for kind, port in kinds if port is not None]
    token = ", token needed" if server.token else ""
    noun = "client" if server.clients == 1 else "clients"
    return sanitize(
        f"{server.name}  {server.host} ({', '.join(ports)}){token}, {server.clients} {noun}"
    )


def table(servers: list[DiscoveredServer]) -> str:
    """The list of servers as aligned columns, or a line saying there are none."""
    if not servers:
        return "(no servers heard yet)"
    rows = [("NAME", "HOST", "PORT", "TLS", "WEB", "TOKEN", "CLIENTS", "ID")]
    for s in servers:
        rows.append(
            (sanitize(s.name), sanitize(s.host), _port(s.tcp), _port(s.tls), _port(s.web),
             "yes" if s.token else "no", str(s.clients), s.server_id)
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _port(port: int | None) -> str:
    return "-" if port is None else str(port)


async def run_discover(args: argparse.Namespace) -> int:
    """List servers: once (exit 1 if none was heard) or live until Ctrl-C or ``--timeout``."""
    if args.timeout is not None and not args.timeout > 0:
        raise ValueError(f"--timeout must be more than 0 seconds, got {args.timeout:g}")
    options: dict[str, Any] = {
        "interface": args.interface,
        "group": args.discovery_group,
        "port": args.discovery_port,
        "key": multicast_key(args),
    }
    if args.once:
        servers = await discover_once(seconds=args.timeout or 3.0, **options)
        if args.json:
            print(json.dumps([as_json(server) for server in servers], indent=2))
        elif servers:
            print(table(servers))
        else:
            print(f"chatcast: no server heard{_where(args)}", file=sys.stderr)
        return 0 if servers else 1
    live = sys.stdout.isatty() and not args.json and os.environ.get("TERM") != "dumb"
    async with discover(**options) as found:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.timeout):
                if live:
                    await _live_table(found, args)
                else:
                    await _changes(found, args.json)
    return 0


async def _changes(found: Discovery, as_lines_of_json: bool) -> None:
    print("chatcast: listening for servers (Ctrl-C to stop)", file=sys.stderr, flush=True)
    async for server in found:
        if as_lines_of_json:
            print(json.dumps(as_json(server)), flush=True)
        else:
            print(f"{'-' if server.gone else '+'} {describe(server)}", flush=True)


async def _live_table(found: Discovery, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    while True:
        # Clear the screen and draw the table from the top.
        sys.stdout.write(
            "\x1b[H\x1b[2J"
            f"chatcast servers{_where(args)} (Ctrl-C to stop)\n\n{table(found.servers())}\n"
        )
        sys.stdout.flush()
        await found.next_change()
        # Redraw at most every _REDRAW seconds, whatever a flood of beacons does.
        deadline = loop.time() + _REDRAW
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while True:
                    await found.next_change()


def _where(args: argparse.Namespace) -> str:
    return f" on {args.interface}" if args.interface else ""


async def choose_server(args: argparse.Namespace, seconds: float) -> DiscoveredServer | None:
    """Discover for ``seconds``; return the one server heard, or the one the user picks
    among several; ``None`` (after saying so on stderr) if none was heard or none picked."""
    print(f"chatcast: looking for servers{_where(args)}...", file=sys.stderr, flush=True)
    servers = await discover_once(
        seconds=seconds,
        interface=args.interface,
        group=args.discovery_group,
        port=args.discovery_port,
        key=multicast_key(args),
    )
    if not servers:
        print(
            f"chatcast: no server announced itself{_where(args)} within {seconds:g} s. "
            "Start one with 'chatcast server --announce', or pass --host HOST (and --port "
            "PORT) to connect to a server directly.",
            file=sys.stderr,
        )
        return None
    if len(servers) == 1:
        return servers[0]
    print("chatcast: several servers found:", file=sys.stderr)
    for number, server in enumerate(servers, 1):
        print(f"  {number}. {describe(server)}", file=sys.stderr)
    while True:
        answer = await _read_answer(f"which one (1-{len(servers)})? ")
        if answer is None:
            return None
        with contextlib.suppress(ValueError):
            if 1 <= (number := int(answer)) <= len(servers):
                return servers[number - 1]
        print(f"type a number from 1 to {len(servers)}, or Ctrl-D to give up", file=sys.stderr)


async def _read_answer(prompt: str) -> str | None:
    """One line from stdin (``None`` at its end), read byte by byte so that nothing after it
    is taken from the chat that follows. In a daemon thread: a Ctrl-C meanwhile must not
    wait for Enter to exit."""
    print(prompt, end="", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str | None] = loop.create_future()

    def read() -> None:
        line = bytearray()
        try:
            while (byte := os.read(sys.stdin.fileno(), 1)) and byte != b"\n":
                line += byte
        except (OSError, ValueError, AttributeError):  # closed or missing stdin
            byte = b""
        result = line.decode(errors="replace").strip() if byte or line else None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(_resolve, answer, result)

    threading.Thread(target=read, name="chatcast-choose-server", daemon=True).start()
    return await answer


def _resolve(future: asyncio.Future[str | None], result: str | None) -> None:
    if not future.done():
        future.set_result(result)
