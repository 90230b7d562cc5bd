"""``chatcast server`` and ``chatcast client``: the TCP chat hub and an interactive client."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
from typing import Any

from .._core.commands import (
    CLIENT_COMMANDS,
    MODERATION_TYPES,
    Command,
    Help,
    History,
    Join,
    Nick,
    Quit,
    Rooms,
    Say,
    Who,
    help_text,
    parse_text,
)
from ..client import BroadcastClient
from ..discovery import Announce
from ..exceptions import ChatcastError, ConnectionClosed, InvalidFrame, Refused
from ..message import (
    ANNOUNCEMENT,
    ERROR,
    INFO,
    JOIN,
    LEAVE,
    MESSAGE,
    MODERATION_KINDS,
    NICK,
    PRIVATE,
    Message,
    render_text,
    sanitize,
)
from ..server import DEFAULT_WELCOME, BroadcastServer, HistoryLimits
from .console import Console, log_to
from .discover import add_discovery_options, choose_server, describe, multicast_key
from .operator import announcements, client_moderation

__all__ = ["add_parser"]

log = logging.getLogger("chatcast.cli")

TOKEN_ENV = "CHATCAST_TOKEN"
OP_TOKEN_ENV = "CHATCAST_OP_TOKEN"
BACKPLANE_ENV = "CHATCAST_BACKPLANE"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``server`` and ``client`` commands."""
    server = commands.add_parser(
        "server",
        help="run the chat hub",
        description=(
            "Run the chat hub. Lines typed on this terminal are sent to every client as "
            "server announcements. Ctrl-C or SIGTERM shuts it down gracefully. Clients: "
            "'chatcast client', or any line-based tool (nc, telnet, socat)."
        ),
    )
    server.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s; 0.0.0.0 for the LAN)",
    )
    server.add_argument(
        "--port", type=int, default=8080, help="port (default: %(default)s; 0 picks one)"
    )
    server.add_argument(
        "--welcome", default=DEFAULT_WELCOME, help="first line each client receives"
    )
    server.add_argument("--room", default="lobby", help="default room (default: %(default)s)")
    server.add_argument(
        "--max-clients", type=int, default=1000, help="most clients at once (default: %(default)s)"
    )
    server.add_argument(
        "--max-per-address", type=int, default=None, help="most clients from one IP address"
    )
    server.add_argument(
        "--token",
        default=None,
        help=f"require this token (better: set ${TOKEN_ENV}, kept out of ps)",
    )
    server.add_argument(
        "--op-token",
        default=None,
        help=f"clients presenting this token become operators (better: set ${OP_TOKEN_ENV})",
    )
    server.add_argument(
        "--rate", type=float, default=None, help="flood control: messages per second per client"
    )
    server.add_argument(
        "--burst", type=float, default=None, help="flood control: burst size (default: 2 x rate)"
    )
    server.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="drop text clients silent this many seconds",
    )
    server.add_argument(
        "--slow-consumer",
        choices=("disconnect", "drop-oldest"),
        default="disconnect",
        help="what happens to a client that cannot keep up (default: %(default)s)",
    )
    server.add_argument(
        "--tls-cert", default=None, help="serve TLS with this certificate chain (PEM)"
    )
    server.add_argument("--tls-key", default=None, help="private key for --tls-cert (PEM)")
    server.add_argument(
        "--quiet", action="store_true", help="do not print chat messages (joins and leaves still)"
    )
    server.add_argument(
        "--notice-limit",
        type=int,
        default=100,
        help="rooms with more members get no join/leave notices (default: %(default)s)",
    )
    server.add_argument(
        "--backplane",
        metavar="URL",
        default=None,
        help="join other servers through Redis, e.g. redis://127.0.0.1:6379/0 "
        f"(needs: pip install 'chatcast[redis]'; a URL with a password: set ${BACKPLANE_ENV} "
        "instead, kept out of ps)",
    )
    server.add_argument(
        "--backplane-prefix",
        metavar="NAME",
        default="chatcast",
        help="servers with the same Redis, database and prefix are one chat (default: %(default)s)",
    )
    server.add_argument(
        "--backplane-stream-length",
        metavar="N",
        type=int,
        default=10000,
        help="entries (batches of messages) the cluster's log keeps per room in Redis "
        "(MAXLEN ~; default: %(default)s)",
    )
    server.add_argument(
        "--workers",
        type=int,
        default=1,
        help="run N server processes on one port (SO_REUSEPORT), joined by --backplane",
    )
    server.add_argument(
        "--reuse-port", action="store_true", help="set SO_REUSEPORT (share the port with others)"
    )
    server.add_argument(
        "--store",
        metavar="FILE",
        default=None,
        help="keep the history and message ids in this SQLite file, across restarts "
        "(default: in memory only)",
    )
    server.add_argument(
        "--history",
        type=int,
        default=1000,
        metavar="N",
        help="messages kept per room for /history, joins and resumes (default: %(default)s; "
        "0: none)",
    )
    server.add_argument(
        "--history-on-join",
        type=int,
        default=20,
        metavar="N",
        help="last messages a client gets on joining a room (default: %(default)s; 0: none)",
    )
    server.add_argument(
        "--resume-window",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long a dropped client's name waits for it to resume (default: %(default)s)",
    )
    server.add_argument(
        "--announce",
        action="store_true",
        help="announce this server on the LAN so that 'chatcast discover' and 'chatcast "
        "client' without --host find it (every 2 s, TTL 1, on --interface only)",
    )
    server.add_argument(
        "--interface",
        default=None,
        metavar="IP",
        help="the interface to announce on, by address or name (default: --host, if it is "
        "one address)",
    )
    server.add_argument(
        "--announce-name", default=None, metavar="NAME", help="the name listed (default: hostname)"
    )
    server.add_argument(
        "--multicast-key",
        default=None,
        metavar="KEY",
        help="sign the announcements with this multicast key (better: set $CHATCAST_MULTICAST_KEY)",
    )
    server.add_argument(
        "--web-port",
        type=int,
        default=None,
        metavar="PORT",
        help="also serve the chat page and a WebSocket on PORT, e.g. 8081 "
        "(needs: pip install 'chatcast[web]')",
    )
    server.add_argument(
        "--web-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="another origin allowed to open the WebSocket, e.g. https://chat.example.org "
        "(the page's own is always allowed; repeatable)",
    )
    server.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    server.add_argument("--worker-events", action="store_true", help=argparse.SUPPRESS)
    server.set_defaults(run=run_server)

    client = commands.add_parser(
        "client",
        help="chat interactively with a chat hub",
        description=(
            "Chat with a chatcast server. Type to send to your room; /help lists the "
            "commands (/join, /nick, /msg, /who, /rooms, /quit). Ctrl-D quits."
        ),
    )
    client.add_argument(
        "--host",
        default=None,
        help="server address (default: find one on the LAN, or 127.0.0.1 when --port is given; "
        "with --server and neither --host nor --port: the first --server)",
    )
    client.add_argument("--port", type=int, default=None, help="server port (default: 8080)")
    client.add_argument("--name", default=None, help="your name (default: the server picks guestN)")
    client.add_argument("--room", default=None, help="room to join (default: the server's)")
    client.add_argument(
        "--token", default=None, help=f"the server's token (better: set ${TOKEN_ENV})"
    )
    client.add_argument(
        "--op-token", default=None, help=f"become an operator (better: set ${OP_TOKEN_ENV})"
    )
    client.add_argument("--tls", action="store_true", help="connect with TLS")
    client.add_argument("--ca", default=None, help="trust this CA file (PEM) for --tls")
    client.add_argument(
        "--tls-name",
        default=None,
        metavar="NAME",
        help="the name the server's certificate must carry, when it is not --host "
        "(e.g. --host 10.0.0.5 --tls-name chat.lab)",
    )
    client.add_argument(
        "--server",
        action="append",
        dest="servers",
        default=[],
        metavar="HOST:PORT",
        help="another server to fail over to (repeatable; [::1]:8080 for IPv6): on losing "
        "one, move on to the next and resume there; implies --reconnect",
    )
    client.add_argument(
        "--reconnect",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reconnect when the connection drops (default: on with --server)",
    )
    discovery = client.add_argument_group(
        "discovery (without --host and --port: servers announcing themselves on the LAN)"
    )
    add_discovery_options(discovery, key_flag="--multicast-key")  # type: ignore[arg-type]
    discovery.add_argument(
        "--discover-timeout",
        type=float,
        default=3.0,
        metavar="S",
        help="listen this long for servers (default: %(default)s)",
    )
    client.set_defaults(run=run_client)


async def run_server(args: argparse.Namespace) -> int:
    """Run the hub until Ctrl-C, SIGTERM or ``/quit`` typed on the server's terminal."""
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    if token is not None and not token:
        # An empty token would mean "no authentication": say so rather than run open.
        origin = "--token" if args.token is not None else f"${TOKEN_ENV}"
        raise ValueError(f"{origin} is empty; leave it out to run without a token")
    args.token = token
    op_token = args.op_token if args.op_token is not None else os.environ.get(OP_TOKEN_ENV)
    if op_token is not None and not op_token:
        origin = "--op-token" if args.op_token is not None else f"${OP_TOKEN_ENV}"
        raise ValueError(f"{origin} is empty; leave it out to run without operators")
    args.op_token = op_token
    if args.burst is not None and args.rate is None:
        raise ValueError("--burst needs --rate")
    if args.rate is not None and not args.rate > 0:
        raise ValueError(f"--rate must be more than 0 messages per second, got {args.rate:g}")
    args.backplane = args.backplane or os.environ.get(BACKPLANE_ENV) or None
    backplane = None
    where = None  # the backplane's URL without its password
    if args.backplane:
        try:
            from ..backplane import RedisBackplane, redact

            backplane = RedisBackplane(
                args.backplane,
                prefix=args.backplane_prefix,
                stream_length=args.backplane_stream_length,
            )
        except ImportError as exc:
            raise ValueError(str(exc)) from None
        where = redact(args.backplane)
    if args.history < 0:
        raise ValueError(f"--history must be 0 or more, got {args.history}")
    announce = None
    if args.announce:
        if args.workers != 1:
            raise ValueError("--announce cannot be used with --workers")
        announce = Announce(
            interface=args.interface, name=args.announce_name, key=multicast_key(args)
        )
    elif args.interface or args.announce_name:
        raise ValueError("--interface and --announce-name go with --announce")
    web = None
    if args.web_port is not None:
        if args.workers != 1:
            raise ValueError("--web-port works with one worker only")
        try:
            from ..web import WebGateway
        except ImportError as exc:
            raise ValueError(str(exc)) from None
    if args.workers != 1:
        if args.store:
            raise ValueError("--store needs one process: --workers would share one database")
        from .workers import run_workers

        return await run_workers(args, where)
    context = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    server = BroadcastServer(
        args.host,
        args.port,
        welcome=args.welcome,
        default_room=args.room,
        max_clients=args.max_clients,
        max_per_address=args.max_per_address,
        token=token,
        op_token=op_token,
        rate=args.rate,
        burst=args.burst,
        idle_timeout=args.idle_timeout,
        slow_consumer=args.slow_consumer,
        notice_limit=args.notice_limit,
        ssl=context,
        reuse_port=args.reuse_port,
        backplane=backplane,
        history=HistoryLimits(messages=args.history) if args.history else None,
        history_on_join=args.history_on_join,
        resume_window=args.resume_window,
        store=args.store,
        announce=announce,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _on_signals(loop, stop.set)
    if args.worker:
        return await _run_worker(server, stop, args.worker_events and not args.quiet)
    async with Console(prompt="announce> ") as console, log_to(console), server:
        scheme = "TLS " if context else ""
        extras = [
            *(["token required"] if token else []),
            *(["operator token set"] if op_token else []),
            *([f"flood control {args.rate:g}/s"] if args.rate else []),
            *([f"backplane {where}"] if backplane is not None else []),
            *([f"announced on {args.interface or args.host}"] if announce is not None else []),
        ]
        if args.web_port is not None:
            web = WebGateway(server, port=args.web_port, origins=args.web_origin)
            await web.start()
            everywhere = args.host in ("0.0.0.0", "::", "")
            extras.append(
                f"chat page at {web.url}"
                + (
                    f" (and port {web.port} of this machine's other addresses)"
                    if everywhere
                    else ""
                )
            )
        console.write(
            f"chatcast server on {scheme}{args.host} port {server.port}"
            + "".join(f", {extra}" for extra in extras)
            + " (type a line to announce it; Ctrl-C to stop)"
        )
        tasks = [
            asyncio.create_task(_operator(console, server, stop)),
            asyncio.create_task(_show_events(console, server, args.quiet)),
        ]
        await stop.wait()
        console.write("shutting down...")
        await _shut_down(server, tasks)
        if web is not None:
            web.close()
            await web.wait_closed()
    return 0


async def _shut_down(server: BroadcastServer, tasks: list[asyncio.Task[None]]) -> None:
    """Close ``server`` gracefully, then end the tasks that showed and fed it."""
    server.close()
    await server.wait_closed()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _run_worker(server: BroadcastServer, stop: asyncio.Event, events: bool) -> int:
    """One of ``--workers N``: its stdin is a pipe from the parent, carrying the operator's
    announcements; its end means the parent is gone (even killed), and so the worker stops.
    Its output (and its logs) go to the parent, which shows them."""
    async with Console(prompt="") as console, log_to(console), server:
        print(f"worker ready pid {os.getpid()} port {server.port}", flush=True)
        tasks = [asyncio.create_task(_operator(console, server, stop, worker=True))]
        if events:
            tasks.append(asyncio.create_task(_show_events(console, server, False)))
        await stop.wait()
        await _shut_down(server, tasks)
    return 0


async def _operator(
    console: Console, server: BroadcastServer, stop: asyncio.Event, *, worker: bool = False
) -> None:
    """Announce each line the operator types to every client, but for the commands of
    :data:`OPERATOR_COMMANDS`: ``/quit`` (or ``/exit``) stops the server, ``/help`` lists
    them, and a mistyped command is answered here, never announced (``//text`` announces
    ``/text``). At end of input, keep serving."""
    async for _, text in announcements(console, stop, server):
        count = await server.broadcast(text)
        connected = server.statistics().backplane_connected
        where = (
            ""
            if connected is None
            else " here, and to the other servers"
            if connected
            else " here only: the backplane is down"
        )
        noun = "client" if count == 1 else "clients"
        console.write(f"[server] {text}  (to {count} {noun}{where})")
    if worker:
        stop.set()  # the parent is gone (or said /quit); stdin closed otherwise: serve on


async def _show_events(console: Console, server: BroadcastServer, quiet: bool) -> None:
    async for event in server.events():
        if event.kind == ANNOUNCEMENT or (quiet and event.kind not in (JOIN, LEAVE, NICK)):
            continue  # the operator's own announcements are echoed by _operator
        if event.kind in MODERATION_KINDS and event.sender == "server":
            continue  # the console's own moderation is confirmed by _operator (#14)
        if event.kind == PRIVATE:
            console.write(f"[private] {event.sender} -> {event.to}: (not shown)")
        else:
            console.write(render_text(event))


async def run_client(args: argparse.Namespace) -> int:
    """Chat until Ctrl-D, ``/quit`` or the server closes the connection."""
    context: ssl.SSLContext | bool | None = None
    if args.tls:
        context = ssl.create_default_context(cafile=args.ca)
    elif args.ca or args.tls_name:
        raise ValueError("--ca and --tls-name need --tls")
    # With --server and neither --host nor --port, the first --server is the first tried:
    # no discovery, no default address.
    if args.host is None and args.port is None and not args.servers:
        found = await choose_server(args, args.discover_timeout)
        if found is None:
            return 1
        print(f"chatcast: connecting to {describe(found)}", file=sys.stderr, flush=True)
        args.host = found.host
        if found.tcp is None and found.tls is not None and not args.tls:
            context = ssl.create_default_context(cafile=args.ca)
        args.port = found.tcp if found.tcp is not None and not args.tls else found.tls
        if args.port is None:
            raise ValueError(f"{describe(found)} has no TLS port")
    client = BroadcastClient(
        args.host,
        args.port,
        servers=args.servers,
        name=args.name,
        room=args.room,
        token=args.token or os.environ.get(TOKEN_ENV) or None,
        op_token=args.op_token or os.environ.get(OP_TOKEN_ENV) or None,
        ssl=context,
        server_hostname=args.tls_name,
        # --server implies --reconnect (failing over is reconnecting); --no-reconnect not.
        reconnect=args.reconnect if args.reconnect is not None else bool(args.servers),
    )
    try:
        await client.connect()
    except ConnectionClosed as exc:  # the reason is the server's words: shown, not obeyed
        print(f"chatcast: refused: {sanitize(exc.reason)}", file=sys.stderr)
        return 1
    except ChatcastError as exc:
        print(f"chatcast: {sanitize(str(exc))}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _on_signals(loop, stop.set)
    status = 0
    async with Console(prompt=f"{client.name}> ") as console:
        console.write(f"{client.welcome}")
        if len(client.servers) > 1:
            console.write(f"* connected to {_where(client.server_address)}")
        console.write(f"* you are {client.name} in {client.room} (/help for commands)")
        console.commands = [f"/{name}" for name in (*CLIENT_COMMANDS.names, "help")]
        names = _Names(console, client)
        incoming = asyncio.create_task(_incoming(console, client, names))
        typing = asyncio.create_task(_typing(console, client, names))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait(
            {incoming, typing, stopper}, return_when=asyncio.FIRST_COMPLETED
        )
        if incoming in done and incoming.exception() is not None:
            reason = f"! {sanitize(str(incoming.exception()))}"
            if reason != names.last_error:  # the server's last error is the reason: said once
                console.write(reason)
            status = 1
        for task in (incoming, typing, stopper):
            task.cancel()
        await asyncio.gather(incoming, typing, stopper, return_exceptions=True)
        await client.close()
    return status


def _where(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Names:
    """Who the client knows is here, for Tab after ``/msg`` (and ``/kick``): the members
    ``/who`` listed, then joins, leaves, renames and senders as they come."""

    def __init__(self, console: Console, client: BroadcastClient) -> None:
        self._console = console
        self._client = client
        self._names: set[str] = set()
        #: The last error line shown: the reason the connection may end with.
        self.last_error = ""

    def seen(self, message: Message) -> None:
        sender = message.sender
        if sender is None:
            return
        if message.kind == LEAVE:
            self._names.discard(sender)
        elif message.kind == NICK:
            self._names.discard(sender)
            self._names.add(message.text)
        elif message.kind in (JOIN, MESSAGE, PRIVATE):
            self._names.add(sender)
        else:
            return
        self._show()

    def listed(self, names: list[str]) -> None:
        self._names.update(names)
        self._show()

    def _show(self) -> None:
        self._console.names = sorted(self._names - {self._client.name})


async def _incoming(console: Console, client: BroadcastClient, names: _Names) -> None:
    with contextlib.suppress(ChatcastError, ValueError):
        names.listed(await client.who())
    async for message in client:
        names.seen(message)
        line = render_text(message)
        if message.kind == ERROR:
            names.last_error = line
        console.write(line)
        if message.kind == NICK:
            console.prompt = f"{client.name}> "  # the server confirmed a /nick
    console.write("* connection closed")


async def _typing(console: Console, client: BroadcastClient, names: _Names) -> None:
    while True:
        line = await console.read_line()
        if line is None:
            return
        if not line.strip():
            continue
        try:
            command = parse_text(line, CLIENT_COMMANDS)
            if not await _client_command(console, client, command, names):
                return
        except (InvalidFrame, ValueError) as exc:
            console.write(f"! {exc}")
        except ConnectionClosed as exc:
            console.write(f"! not sent: {exc.reason}")
        except Refused as exc:
            console.write(f"! {sanitize(exc.reason)}")
        except TimeoutError:
            console.write("! no answer from the server")


async def _client_command(
    console: Console, client: BroadcastClient, command: Command, names: _Names
) -> bool:
    """Do what a typed command asks of ``client``; return False to quit.

    Raises:
        ValueError: A name, room or text the client refuses.
        ConnectionClosed: Not connected.
    """
    match command:
        case Say(text, to):
            try:
                await client.send(text, to=to)
            except Refused as exc:
                console.write(f"! {sanitize(exc.reason)}")
            except TimeoutError:
                console.write("! the server did not confirm that message")
        case History(limit=limit):
            messages = await client.history(limit=limit)
            if not messages:
                console.write(f"* no history in {client.room}")
            for message in messages:
                console.write(render_text(message))
        case Join(room):
            await client.join(room)
        case Nick(name):
            await client.nick(name)
        case Who(room):
            members = await client.who(room)
            names.listed(members)
            console.write(f"* in {room or client.room}: {', '.join(members) or '(nobody)'}")
        case Rooms():
            rooms = await client.rooms()
            console.write("* rooms: " + ", ".join(f"{r} ({n})" for r, n in rooms.items()))
        case Quit(reason):
            await client.close(reason)
            return False
        case Help():
            console.write(render_text(Message(help_text(CLIENT_COMMANDS), kind=INFO)))
        case _ if isinstance(command, MODERATION_TYPES):  # moderation (#14)
            await client_moderation(client, command)
        case _:  # not in CLIENT_COMMANDS: never parsed
            raise AssertionError(f"no client action for {command!r}")
    return True


def _on_signals(loop: asyncio.AbstractEventLoop, callback: Any) -> None:
    """SIGTERM (and SIGINT) start a graceful stop; asyncio.run alone handles SIGINT only."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: no handlers
            loop.add_signal_handler(signum, callback)
