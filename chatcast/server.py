"""The chat hub: :class:`BroadcastServer`.

Relays each client's messages to the other members of its room, over one TCP port that
speaks two dialects (``docs/protocol.md``): *text mode* for ``nc``, ``telnet`` and the lab's
scripts, and *JSON mode* for :class:`~chatcast.client.BroadcastClient`.

Fan-out never waits for a client: every batch of messages decoded from one read is encoded
once per wire form and handed to each recipient's transport without awaiting a drain. A
client whose unsent output passes ``max_buffer_bytes`` is a *slow consumer*: by default it
gets a reason and is disconnected; with ``slow_consumer="drop-oldest"`` it loses its oldest
undelivered messages instead and is told how many. Nobody else notices either way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import logging
import re
import ssl as ssl_module
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

from . import _protocol as proto
from ._cluster import Cluster
from ._connection import Connection, _discard
from ._framing import DEFAULT_MAX_LINE_BYTES
from .backplane import Backplane
from .exceptions import ChannelClosed, InvalidFrame, ProtocolError
from .message import (
    ANNOUNCEMENT,
    CLOSING,
    ERROR,
    INFO,
    JOIN,
    LEAVE,
    MESSAGE,
    NICK,
    PRIVATE,
    Message,
    dump_frame,
)

__all__ = ["DEFAULT_WELCOME", "BroadcastServer", "EventStream", "ServerStatistics"]

log = logging.getLogger("chatcast.server")

#: The lab's greeting, sent as the first line of every connection.
DEFAULT_WELCOME: Final = "Selamat datang di Server..."

_encode_str: Callable[[str], str] = json.encoder.encode_basestring
# What check_text refuses, for one line; and the same for a whole read, byte-wise.
_BAD_TEXT: Final = proto._BAD_TEXT
_PLAIN_ASCII: Final = bytes(range(0x20, 0x7F)) + b"\t\n"
_HIGH_BYTES: Final = bytes(range(0x80, 0x100))
_C1_UTF8: Final = re.compile(rb"\xc2[\x80-\x9f]")


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """A snapshot of a server's counters (:meth:`BroadcastServer.statistics`).

    Attributes:
        clients: Connections open now (not counting those being closed).
        rooms: Rooms with at least one member now.
        connections: Connections accepted since start.
        messages_in: Chat messages received from clients (room and private).
        messages_out: Chat messages handed to recipients' transports.
        bytes_in: Bytes received.
        bytes_out: Bytes handed to transports.
        slow_consumers: Clients found over ``max_buffer_bytes`` of unsent output.
        dropped: Messages dropped from slow consumers' backlogs (drop-oldest mode).
        errors: Error frames sent to clients for bad input.
        rejected: Connections refused (``max_clients``, ``max_per_address``).
        auth_failures: Wrong tokens and authentication timeouts.
        rate_limited: Messages dropped by the flood limit.
        timeouts: Connections dropped for heartbeat or idle timeout.
        events_dropped: Events not delivered to a slow :meth:`BroadcastServer.events` reader.
        backplane_connected: Whether the backplane is connected (``None``: no backplane).
        backplane_published: Envelopes sent to the other servers.
        backplane_received: Envelopes received from the other servers.
        backplane_failures: Envelopes that could not cross (lost for the other servers).
        backplane_reconnects: Times the backplane reconnected after a loss.
    """

    clients: int
    rooms: int
    connections: int
    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    slow_consumers: int
    dropped: int
    errors: int
    rejected: int
    auth_failures: int
    rate_limited: int
    timeouts: int
    events_dropped: int
    backplane_connected: bool | None = None
    backplane_published: int = 0
    backplane_received: int = 0
    backplane_failures: int = 0
    backplane_reconnects: int = 0


class EventStream:
    """An async iterator over a server's events; see :meth:`BroadcastServer.events`."""

    def __init__(self, server: BroadcastServer, maxsize: int) -> None:
        self._server = server
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue(maxsize)
        self._entry = (self._queue, [0])
        self._done = False
        server._subscribers.append(self._entry)
        if server._closing:
            self._done = True

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Message:
        if self._done and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            await self.aclose()
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        """Unsubscribe; iteration ends."""
        if self._entry in self._server._subscribers:
            self._server._subscribers.remove(self._entry)
        self._done = True
        if self._queue.empty():
            self._queue.put_nowait(None)

    @property
    def dropped(self) -> int:
        """Events this reader lost by falling behind."""
        return self._entry[1][0]


class BroadcastServer:
    """A chat hub that relays messages between TCP clients in rooms.

    Args:
        host: Address to listen on. ``"127.0.0.1"`` (the default) serves this machine only;
            ``"0.0.0.0"`` or ``"::"`` serves the network.
        port: Port to listen on; 0 picks a free one (read it back from :attr:`port`).
        welcome: The first line every connection receives.
        default_room: The room clients are in until they join another.
        max_clients: Most connections at once; the next one gets an error line and is
            closed. ``None`` for no limit.
        max_per_address: Most connections at once from one IP address, or ``None``.
        max_line_bytes: The largest frame a client may send; a longer one gets an error.
        max_buffer_bytes: Unsent output allowed per client before it is a slow consumer.
        slow_consumer: ``"disconnect"`` (the default: a reason, then close) or
            ``"drop-oldest"`` (its oldest undelivered messages are dropped, with a notice).
        line_timeout: Seconds of silence after which a text-mode client's unterminated line
            counts as a message.
        join_grace: Seconds a new text-mode connection waits, silently receiving, before its
            join is announced (a JSON client's hello arriving first cancels it).
        heartbeat_interval: Idle seconds after which a JSON-mode client is pinged.
        heartbeat_timeout: Seconds a pinged JSON-mode client has to answer before it is
            dropped.
        idle_timeout: Seconds of silence after which a text-mode client is dropped, or
            ``None`` (the default) to keep it while TCP keepalive says it is there.
        keepalive: Turn on TCP keepalive on every connection.
        token: If set, clients must present this token (JSON hello ``"token"`` or text
            ``/auth TOKEN``) before they can send or receive anything.
        auth_timeout: Seconds a connection has to authenticate.
        rate: Messages per second each client may send (token bucket), or ``None`` (the
            default) for no flood control.
        burst: Bucket size for ``rate``; defaults to ``max(1, 2 * rate)``.
        ssl: An :class:`ssl.SSLContext` to serve TLS.
        ssl_handshake_timeout: Seconds a TLS handshake may take.
        close_timeout: Seconds :meth:`close` lets pending output flush before aborting.
        reuse_port: Set ``SO_REUSEPORT`` so several processes can share the port.
        backplane: Join other servers through this backplane (e.g.
            :class:`~chatcast.backplane.RedisBackplane`) so that all act as one chat.

    Raises:
        ValueError: An argument is out of range (the message says the allowed range).
    """

    def __init__(
        self,
        host: str | None = "127.0.0.1",
        port: int = 8080,
        *,
        welcome: str = DEFAULT_WELCOME,
        default_room: str = "lobby",
        max_clients: int | None = 1000,
        max_per_address: int | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_buffer_bytes: int = 1024 * 1024,
        slow_consumer: Literal["disconnect", "drop-oldest"] = "disconnect",
        line_timeout: float = 0.2,
        join_grace: float = 0.5,
        heartbeat_interval: float = 30.0,
        heartbeat_timeout: float = 10.0,
        idle_timeout: float | None = None,
        keepalive: bool = True,
        token: str | None = None,
        auth_timeout: float = 5.0,
        rate: float | None = None,
        burst: float | None = None,
        ssl: ssl_module.SSLContext | None = None,
        ssl_handshake_timeout: float = 10.0,
        close_timeout: float = 5.0,
        reuse_port: bool = False,
        backplane: Backplane | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        if "\n" in welcome or "\r" in welcome:
            raise ValueError("welcome must be one line")
        try:
            proto.check_name(default_room, "default_room")
        except InvalidFrame as exc:
            raise ValueError(str(exc)) from None
        for label, value in (
            ("max_clients", max_clients),
            ("max_per_address", max_per_address),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{label} must be >= 1 or None, got {value}")
        if max_line_bytes < 64:
            raise ValueError(f"max_line_bytes must be >= 64, got {max_line_bytes}")
        if max_buffer_bytes < max_line_bytes:
            raise ValueError(
                f"max_buffer_bytes ({max_buffer_bytes}) must be >= max_line_bytes "
                f"({max_line_bytes})"
            )
        if slow_consumer not in ("disconnect", "drop-oldest"):
            raise ValueError(
                f"slow_consumer must be 'disconnect' or 'drop-oldest', got {slow_consumer!r}"
            )
        for label, seconds in (
            ("line_timeout", line_timeout),
            ("join_grace", join_grace),
            ("heartbeat_interval", heartbeat_interval),
            ("heartbeat_timeout", heartbeat_timeout),
            ("auth_timeout", auth_timeout),
            ("ssl_handshake_timeout", ssl_handshake_timeout),
            ("close_timeout", close_timeout),
            ("idle_timeout", idle_timeout if idle_timeout is not None else 1.0),
        ):
            if not seconds > 0:
                raise ValueError(f"{label} must be > 0 seconds, got {seconds}")
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be > 0 messages/s or None, got {rate}")
        if burst is not None and not burst >= 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        if token is not None and not token:
            raise ValueError("token must not be empty (use None for no authentication)")
        self.host = host
        self.welcome = welcome
        self.default_room = default_room
        self.max_clients = max_clients
        self.max_per_address = max_per_address
        self.max_line_bytes = max_line_bytes
        self.max_buffer_bytes = max_buffer_bytes
        self.slow_consumer = slow_consumer
        self.line_timeout = line_timeout
        self.join_grace = join_grace
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.idle_timeout = idle_timeout
        self.keepalive = keepalive
        self.auth_timeout = auth_timeout
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, 2.0 * rate) if rate else 1.0
        self.ssl = ssl
        self.ssl_handshake_timeout = ssl_handshake_timeout
        self.close_timeout = close_timeout
        self.reuse_port = reuse_port
        self._token = token.encode() if token is not None else None
        self._port = port
        self._cluster = Cluster(self, backplane) if backplane is not None else None
        self._welcome_line = (welcome + "\n").encode()
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self._per_address: collections.Counter[str] = collections.Counter()
        self._active = 0  # connections counted against the limits (not closing)
        self._rooms: dict[str, set[Connection]] = {}
        self._names: dict[str, Connection] = {}
        self._guest_counter = 0
        self._subscribers: list[tuple[asyncio.Queue[Message | None], list[int]]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False
        self._closed: asyncio.Event | None = None
        self._all_gone: asyncio.Event | None = None
        # Counters (ServerStatistics).
        self._connections_total = 0
        self._messages_in = 0
        self._messages_out = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._slow_consumers = 0
        self._dropped = 0
        self._errors = 0
        self._rejected = 0
        self._auth_failures = 0
        self._rate_limited = 0
        self._timeouts = 0
        self._events_dropped = 0

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the server listens on (the real one once started with port 0)."""
        return self._port

    @property
    def is_serving(self) -> bool:
        """True between :meth:`start` and :meth:`close`."""
        return self._server is not None and not self._closing

    async def start(self) -> None:
        """Start listening.

        Raises:
            OSError: The address could not be bound (in use, not local, no permission).
            RuntimeError: Already started.
        """
        if self._server is not None:
            raise RuntimeError("server already started")
        self._loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self._all_gone = asyncio.Event()
        self._all_gone.set()
        if self._cluster is not None:
            await self._cluster.start()  # before listening: the first client sees the others
        self._server = await self._loop.create_server(
            lambda: Connection(self),
            self.host,
            self._port,
            ssl=self.ssl,
            ssl_handshake_timeout=self.ssl_handshake_timeout if self.ssl else None,
            reuse_port=self.reuse_port or None,
            backlog=1024,
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(self._sweep(), name="chatcast-server-sweep")
        log.info("listening on %s port %d", self.host or "*", self._port)

    async def __aenter__(self) -> BroadcastServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` is called; cancelling it closes the server too."""
        if self._server is None:
            await self.start()
        assert self._closed is not None
        try:
            await self._closed.wait()
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise

    def close(self, reason: str = "server shutting down") -> None:
        """Stop accepting, tell every client ``reason``, and close their connections.

        Pending output gets ``close_timeout`` seconds to flush; connections still open then
        are aborted. Returns at once; await :meth:`wait_closed` for the end. Idempotent.
        """
        if self._closing or self._server is None:
            return
        self._closing = True
        log.info("closing: %s", reason)
        self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        notice = Message(reason, kind=CLOSING)
        for conn in list(self._connections):
            self._disconnect(conn, notice, leave_reason=reason)
        for queue, _ in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
        assert self._closed is not None
        self._closed.set()
        self._loop.call_later(self.close_timeout, self._abort_all)

    async def wait_closed(self) -> None:
        """Wait until the server is closed and every connection is gone."""
        if self._server is None or self._closed is None:
            return
        await self._closed.wait()
        assert self._all_gone is not None
        await self._all_gone.wait()
        if self._sweeper is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self._server.wait_closed()
        if self._cluster is not None:
            cluster, self._cluster = self._cluster, None
            await cluster.close()

    async def aclose(self, reason: str = "server shutting down") -> None:
        """:meth:`close`, then :meth:`wait_closed`."""
        self.close(reason)
        await self.wait_closed()

    def _abort_all(self) -> None:
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.abort()

    # -- what an embedding program can do ---------------------------------------------------

    async def broadcast(self, text: str, *, room: str | None = None) -> int:
        """Send an announcement from the server to everyone (or everyone in ``room``).

        Never waits for a slow client; see the module docstring for what happens to one.

        Returns:
            How many clients it was handed to.

        Raises:
            ChannelClosed: The server is closed.
        """
        if self._closing:
            raise ChannelClosed("server is closed")
        message = Message(text, sender="server", kind=ANNOUNCEMENT, room=room, timestamp=_now())
        if self._cluster is not None:
            self._cluster.announcement(message)
        return self._announce_locally(message)

    def _announce_locally(self, message: Message) -> int:
        targets: Iterable[Connection]
        if message.room is None:
            targets = [c for c in self._connections if c.room]
        else:
            targets = self._rooms.get(message.room, ())
        count = self._send_many(targets, message)
        self._publish(message)
        return count

    async def send(self, name: str, text: str) -> None:
        """Send ``text`` from the server privately to the client called ``name``.

        Raises:
            KeyError: Nobody of that name is connected.
            ChannelClosed: The server is closed.
        """
        if self._closing:
            raise ChannelClosed("server is closed")
        conn = self._names[name]
        conn.send(Message(text, sender="server", kind=PRIVATE, to=name, timestamp=_now()))

    def who(self, room: str | None = None) -> list[str]:
        """Names in ``room`` (or everyone connected, when ``None``), sorted.

        With a backplane, the names on the other servers are included, as this server last
        heard of them (joins and leaves cross at once; a full refresh every few seconds).
        """
        if room is None:
            names = {c.name for c in self._names.values() if c.announced}
        else:
            names = {c.name for c in self._rooms.get(room, ()) if c.announced}
        if self._cluster is not None:
            names.update(n for n, r in self._cluster.remote.items() if room is None or r == room)
        return sorted(names)

    def rooms(self) -> dict[str, int]:
        """Each room with members, and how many (on every server, with a backplane)."""
        counts = {room: len(members) for room, members in self._rooms.items()}
        if self._cluster is not None:
            for room in self._cluster.remote.values():
                counts[room] = counts.get(room, 0) + 1
        return dict(sorted(counts.items()))

    def events(self, *, maxsize: int = 1000) -> EventStream:
        """Subscribe to what happens in the server: messages, privates, joins, leaves...

        Use as ``async for event in server.events():``. Each event is a
        :class:`~chatcast.message.Message` (``kind`` says what). The subscription starts at
        this call, so nothing that happens after it is missed. A reader that falls more than
        ``maxsize`` events behind loses the newest ones (counted in ``events_dropped``); the
        server never waits for it. Iteration ends when the server closes, or at
        :meth:`EventStream.aclose`.
        """
        return EventStream(self, maxsize)

    def statistics(self) -> ServerStatistics:
        """Return a snapshot of the counters."""
        cluster: dict[str, object] = {}
        if self._cluster is not None:
            figures = self._cluster.backplane.statistics()
            cluster = {
                "backplane_connected": figures.connected,
                "backplane_published": figures.published,
                "backplane_received": figures.received,
                "backplane_failures": figures.failures,
                "backplane_reconnects": figures.reconnects,
            }
        return ServerStatistics(
            clients=self._active,
            rooms=len(self._rooms),
            connections=self._connections_total,
            messages_in=self._messages_in,
            messages_out=self._messages_out,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            slow_consumers=self._slow_consumers,
            dropped=self._dropped,
            errors=self._errors,
            rejected=self._rejected,
            auth_failures=self._auth_failures,
            rate_limited=self._rate_limited,
            timeouts=self._timeouts,
            events_dropped=self._events_dropped,
            **cluster,  # type: ignore[arg-type]
        )

    # -- connection events (called by Connection) -------------------------------------------

    def _connection_made(self, conn: Connection) -> None:
        assert conn.transport is not None
        self._connections.add(conn)
        self._connections_total += 1
        self._all_gone.clear()  # type: ignore[union-attr]
        now = self._loop.time()
        conn.last_rx = now
        conn.tokens = self.burst
        conn.tokens_at = now
        ip = conn.address.rpartition(":")[0]
        self._per_address[ip] += 1
        self._active += 1
        if self._closing:
            self._refuse(conn, "server shutting down")
            return
        if self.max_clients is not None and self._active > self.max_clients:
            self._refuse(conn, f"server full ({self.max_clients} clients)")
            return
        if self.max_per_address is not None and self._per_address[ip] > self.max_per_address:
            self._refuse(conn, f"too many connections from {ip}")
            return
        if self.slow_consumer == "disconnect":
            conn.transport.set_write_buffer_limits(high=self.max_buffer_bytes)
        conn.write(self._welcome_line)
        self._bytes_out += len(self._welcome_line)
        if self._token is None:
            self._enter_text_mode(conn)
        log.debug("connection from %s", conn.address)

    def _refuse(self, conn: Connection, reason: str) -> None:
        self._rejected += 1
        log.info("refused %s: %s", conn.address, reason)
        assert conn.transport is not None
        conn.transport.write(f"! {reason}\n".encode())
        self._close_gently(conn)

    def _enter_text_mode(self, conn: Connection) -> None:
        """Authenticated text-mode connection: in the default room under a guest name,
        receiving at once; its join is announced after ``join_grace`` or its first line."""
        conn.authenticated = True
        self._set_name(conn, self._guest_name())
        self._add_to_room(conn, self.default_room, announce=False)
        self._loop.call_later(self.join_grace, self._announce, conn)

    def _announce(self, conn: Connection) -> None:
        if conn.announced or conn.closing or not conn.room:
            return
        conn.announced = True
        message = Message("", sender=conn.name, kind=JOIN, room=conn.room, timestamp=_now())
        if conn.json:
            conn.send(message)  # confirms the join (and the room) to a JSON client
        self._notify_room(conn.room, message, conn)

    def _release(self, conn: Connection) -> None:
        """Stop counting ``conn`` against the limits: it is closing (or gone). Once only."""
        if conn.closing:
            return
        conn.closing = True
        self._active -= 1
        ip = conn.address.rpartition(":")[0]
        self._per_address[ip] -= 1
        if self._per_address[ip] <= 0:
            del self._per_address[ip]

    def _connection_lost(self, conn: Connection, exc: Exception | None) -> None:
        self._connections.discard(conn)
        self._release(conn)
        if conn.room:
            reason = "connection lost" if exc is not None else "quit"
            self._leave_room(conn, reason)
        if conn.name and self._names.get(conn.name) is conn:
            del self._names[conn.name]
            if self._cluster is not None:
                self._cluster.release(conn.name)
        log.debug("connection from %s closed (%s)", conn.address, exc or "clean")
        if not self._connections and self._all_gone is not None:
            self._all_gone.set()

    def _paused(self, conn: Connection) -> None:
        if conn.closing:
            return
        if self.slow_consumer == "drop-oldest":
            if conn.backlog is None:
                conn.backlog = collections.deque()
                conn.backlog_bytes = 0
                conn.write = conn.enqueue
            return
        # Disconnect mode: the transport holds max_buffer_bytes unsent. Stop writing to it
        # now (we may be inside a fan-out loop) and drop it on the next loop iteration.
        conn.write = _discard
        self._slow_consumers += 1
        self._loop.call_soon(
            self._disconnect,
            conn,
            Message(f"slow consumer: more than {self.max_buffer_bytes} bytes unread", kind=ERROR),
        )

    def _disconnect(self, conn: Connection, notice: Message | None, leave_reason: str = "") -> None:
        """Tell ``conn`` why (if ``notice``), leave its room, and close it. Idempotent."""
        if conn.closing or conn.transport is None:
            return
        transport = conn.transport
        if notice is not None:
            # Written even when the writer is swapped out: it is the last thing it gets.
            transport.write(conn.encode(notice))
            if notice.kind == ERROR:
                log.info(
                    "dropping %s (%s): %s", conn.name or conn.address, conn.address, notice.text
                )
        if conn.room:
            if not leave_reason and notice is not None:
                leave_reason = notice.text
            self._leave_room(conn, leave_reason)
        self._close_gently(conn)

    def _close_gently(self, conn: Connection) -> None:
        """Close so that the peer reads everything we wrote, the reason included.

        Closing a socket with unread input makes the kernel send RST, and an RST can make
        the peer's kernel throw away data it has not read yet: our reason. So: send FIN after
        the pending output (``write_eof``), discard what the peer still sends, and close when
        it closes or after a short linger (Apache's "lingering close"). A peer that never
        reads is aborted after ``close_timeout``, so its buffer is given back.
        """
        transport = conn.transport
        assert transport is not None
        self._release(conn)
        conn.write = _discard
        if transport.can_write_eof():
            transport.write_eof()
            self._loop.call_later(min(2.0, self.close_timeout), transport.close)
        else:
            transport.close()  # TLS: close_notify, then close
        self._loop.call_later(self.close_timeout, transport.abort)

    # -- frames -----------------------------------------------------------------------------

    def _handle_frames(self, conn: Connection, frames: list[str | ProtocolError]) -> None:
        """Handle every frame decoded from one read, batching consecutive room messages."""
        if conn.deferred is not None:  # an asynchronous step is pending: keep the order
            conn.deferred.extend(frames)
            return
        batch: list[str] = []
        for index, frame in enumerate(frames):
            if conn.closing:
                break
            if type(frame) is not str:
                self._flush_batch(conn, batch)
                self._error(conn, str(frame))
                continue
            assert isinstance(frame, str)
            try:
                if conn.first_frame:
                    conn.first_frame = False
                    if frame.startswith("{") and self._maybe_hello(conn, frame):
                        if conn.deferred is not None:
                            conn.deferred.extend(frames[index + 1 :])
                            return
                        continue
                if conn.json:
                    command = proto.parse_json(frame)
                elif not frame:
                    continue  # text mode: an empty line (Enter pressed) is ignored
                elif frame[0] != "/":
                    command = proto.Say(proto.check_text(frame))
                else:
                    command = proto.parse_text(frame)
            except InvalidFrame as exc:
                self._flush_batch(conn, batch)
                self._error(conn, str(exc))
                continue
            if not conn.authenticated:
                self._flush_batch(conn, batch)
                self._unauthenticated(conn, command)
                continue
            if type(command) is proto.Say and command.to is None:
                if self._admit(conn):
                    batch.append(command.text)
                elif self._flooding(conn):
                    break  # relay what was accepted before this, then drop the flooder
                continue
            self._flush_batch(conn, batch)
            self._command(conn, command)
            if conn.deferred is not None:
                conn.deferred.extend(frames[index + 1 :])
                return
            if not conn.announced and conn.room and not conn.closing:
                self._announce(conn)  # any first command ends the silent join grace
        self._flush_batch(conn, batch)
        if self._flooding(conn) and not conn.closing:
            self._drop_flooder(conn)

    def _maybe_hello(self, conn: Connection, frame: str) -> bool:
        try:
            obj = json.loads(frame)
        except (ValueError, RecursionError):
            return False
        if not isinstance(obj, dict) or obj.get("type") != "hello":
            return False
        try:
            command = proto.parse_json(obj)
            assert isinstance(command, proto.Hello)
            self._hello(conn, command)
        except InvalidFrame as exc:
            conn.json = True
            self._disconnect(conn, Message(str(exc), kind=ERROR))
            self._errors += 1
        return True

    def _hello(self, conn: Connection, hello: proto.Hello) -> None:
        conn.json = True
        if conn.flush_handle is not None:
            conn.flush_handle.cancel()
            conn.flush_handle = None
        if self._token is not None and not conn.authenticated:
            if hello.token is None or not hmac.compare_digest(hello.token.encode(), self._token):
                self._auth_failed(conn, "authentication failed")
                return
            conn.authenticated = True
        room = proto.check_name(hello.room, "room") if hello.room else self.default_room
        name = hello.name
        if name is not None:
            proto.check_name(name)
            holder = self._names.get(name)
            if holder is not None and holder is not conn:
                raise InvalidFrame(f"name {name!r} is taken")
            if self._cluster is not None:
                self._cluster.claim(
                    conn, name, room, lambda claimed: self._welcome(conn, name, room, claimed)
                )
                return
        self._welcome(conn, name, room, True)

    def _welcome(self, conn: Connection, name: str | None, room: str, claimed: bool) -> None:
        """Finish a hello: take the name and room, or refuse a name taken elsewhere."""
        if not claimed:
            self._errors += 1
            self._disconnect(conn, Message(f"name {name!r} is taken", kind=ERROR))
            return
        # The text-mode guest identity held since connecting is given up: silently while
        # its join was not announced yet (the usual case), with a leave notice otherwise.
        if conn.room:
            if conn.announced:
                self._leave_room(conn, "switched to JSON mode")
            else:
                self._rooms[conn.room].discard(conn)
                if not self._rooms[conn.room]:
                    del self._rooms[conn.room]
                conn.room = ""
        self._set_name(conn, name or (conn.name or self._guest_name()))
        conn.write(
            dump_frame(
                {
                    "type": "welcome",
                    "name": conn.name,
                    "room": room,
                    "text": self.welcome,
                    "version": proto.PROTOCOL_VERSION,
                    "heartbeat": self.heartbeat_interval,
                }
            )
        )
        self._add_to_room(conn, room, announce=True)

    def _unauthenticated(self, conn: Connection, command: proto.Command) -> None:
        if type(command) is proto.Auth:
            assert self._token is not None
            if hmac.compare_digest(command.token.encode(), self._token):
                conn.send(Message("authenticated", kind=INFO))
                self._enter_text_mode(conn)
            else:
                self._auth_failed(conn, "authentication failed")
            return
        if type(command) is proto.Quit:
            self._disconnect(conn, None)
            return
        self._error(conn, "authentication required: send /auth TOKEN first")

    def _auth_failed(self, conn: Connection, reason: str) -> None:
        self._auth_failures += 1
        log.info("authentication failure from %s: %s", conn.address, reason)
        self._disconnect(conn, Message(reason, kind=ERROR))

    def _admit(self, conn: Connection) -> bool:
        """Flood control: take a token from ``conn``'s bucket, or refuse the message.

        Refused messages also fill a second, *violation* bucket that drains at ``rate`` per
        second; a client that fills it past ``4 * burst`` is flooding persistently and is
        disconnected. Occasional bursts over the limit drain away and are forgiven.
        """
        rate = self.rate
        if rate is None:
            return True
        now = self._loop.time()
        elapsed = now - conn.tokens_at
        conn.tokens_at = now
        conn.tokens = min(self.burst, conn.tokens + elapsed * rate)
        conn.strikes = max(0.0, conn.strikes - elapsed * rate)
        if conn.tokens >= 1.0:
            conn.tokens -= 1.0
            return True
        first = conn.strikes < 1.0
        conn.strikes += 1.0
        self._rate_limited += 1
        if first and not self._flooding(conn):
            # One error per run of refused messages, not one per message: a flood must not
            # turn into a flood of error frames.
            self._error(conn, f"rate limit ({rate:g}/s) exceeded: message dropped")
        return False

    def _flooding(self, conn: Connection) -> bool:
        """True once ``conn`` has filled its violation bucket (see :meth:`_admit`)."""
        return self.rate is not None and conn.strikes > 4 * self.burst

    def _drop_flooder(self, conn: Connection) -> None:
        self._disconnect(
            conn, Message("flooding: too many messages over the rate limit", kind=ERROR)
        )

    def _command(self, conn: Connection, command: proto.Command) -> None:
        try:
            if type(command) is proto.Say:
                if self._admit(conn):
                    self._private(conn, command.text, command.to)
                elif self._flooding(conn):
                    self._drop_flooder(conn)
            elif type(command) is proto.Join:
                self._join(conn, proto.check_name(command.room, "room"))
            elif type(command) is proto.Nick:
                self._nick(conn, proto.check_name(command.name))
            elif type(command) is proto.Who:
                room = command.room or conn.room
                names = self.who(room)
                if conn.json:
                    conn.write(dump_frame({"type": "who", "room": room, "names": names}))
                else:
                    conn.send(Message(f"in {room}: {', '.join(names) or '(nobody)'}", kind=INFO))
            elif type(command) is proto.Rooms:
                rooms = self.rooms()
                if conn.json:
                    conn.write(dump_frame({"type": "rooms", "rooms": rooms}))
                else:
                    listing = ", ".join(f"{r} ({n})" for r, n in rooms.items())
                    conn.send(Message(f"rooms: {listing}", kind=INFO))
            elif type(command) is proto.Help:
                conn.send(Message(proto.HELP_TEXT, kind=INFO))
            elif type(command) is proto.Quit:
                self._disconnect(conn, None, leave_reason=command.reason or "quit")
            elif type(command) is proto.Ping:
                conn.write(b'{"type":"pong"}\n')
            elif type(command) is proto.Pong:
                pass
            elif type(command) is proto.Hello:
                raise InvalidFrame("hello must be the first frame")
            elif type(command) is proto.Auth:
                raise InvalidFrame("already authenticated")
        except InvalidFrame as exc:
            self._error(conn, str(exc))

    def _error(self, conn: Connection, reason: str) -> None:
        self._errors += 1
        log.debug("error for %s: %s", conn.name or conn.address, reason)
        conn.send(Message(reason, kind=ERROR))

    # -- rooms, names, delivery -------------------------------------------------------------

    def _guest_name(self) -> str:
        suffix = self._cluster.guest_suffix() if self._cluster is not None else ""
        while True:
            self._guest_counter += 1
            name = f"guest{self._guest_counter}{suffix}"
            if name not in self._names:
                return name

    def _set_name(self, conn: Connection, name: str) -> None:
        if conn.name and self._names.get(conn.name) is conn:
            del self._names[conn.name]
        if conn.name and self._cluster is not None:
            self._cluster.release(conn.name)
        conn.name = name
        conn.name_json = _encode_str(name)
        self._names[name] = conn
        if conn.room and self._cluster is not None:
            self._cluster.moved(name, conn.room)

    def _add_to_room(self, conn: Connection, room: str, *, announce: bool) -> None:
        conn.room = room
        self._rooms.setdefault(room, set()).add(conn)
        if self._cluster is not None:
            self._cluster.moved(conn.name, room)
        if announce:
            self._announce(conn)

    def _leave_room(self, conn: Connection, reason: str) -> None:
        room = conn.room
        members = self._rooms.get(room)
        if members is not None:
            members.discard(conn)
            if not members:
                del self._rooms[room]
        conn.room = ""
        if conn.announced:
            conn.announced = False
            if self._closing:
                return  # everyone is being told the server is closing: no n^2 leave notices
            self._notify_room(
                room,
                Message(reason, sender=conn.name, kind=LEAVE, room=room, timestamp=_now()),
                conn,
            )

    def _join(self, conn: Connection, room: str) -> None:
        if room == conn.room:
            conn.send(Message(f"you are already in {room}", kind=INFO))
            return
        self._leave_room(conn, f"joined {room}")
        self._add_to_room(conn, room, announce=True)
        if not conn.json:
            conn.send(Message(f"you are now in {room}", kind=INFO))

    def _nick(self, conn: Connection, name: str) -> None:
        if name == conn.name:
            return
        if name in self._names:
            raise InvalidFrame(f"name {name!r} is taken")
        if self._cluster is not None:
            self._cluster.claim(
                conn, name, conn.room, lambda claimed: self._renamed(conn, name, claimed)
            )
            return
        self._renamed(conn, name, True)

    def _renamed(self, conn: Connection, name: str, claimed: bool) -> None:
        if not claimed:
            self._error(conn, f"name {name!r} is taken")
            return
        old = conn.name
        self._set_name(conn, name)
        message = Message(name, sender=old, kind=NICK, room=conn.room, timestamp=_now())
        self._notify_room(conn.room, message, None)
        if not conn.announced:  # the change was not shown to the room; show its author
            conn.send(message)

    def _private(self, conn: Connection, text: str, to: str | None) -> None:
        assert to is not None
        message = Message(text, sender=conn.name, kind=PRIVATE, to=to, timestamp=_now())
        target = self._names.get(to)
        if target is None or target.closing or not target.authenticated:
            if self._cluster is None or not self._cluster.private(message):
                raise InvalidFrame(f"no such user: {to}")
            self._messages_in += 1
            self._publish(message)
            return
        self._messages_in += 1
        self._deliver_private(target, message)

    def _deliver_private(self, target: Connection, message: Message) -> None:
        data = target.encode(message)
        target.write(data)
        self._messages_out += 1
        self._bytes_out += len(data)
        self._publish(message)

    def _notify_room(
        self, room: str, message: Message, exclude: Connection | None, *, remote: bool = False
    ) -> None:
        if self._cluster is not None and not remote:
            self._cluster.notice(message)
        members = self._rooms.get(room)
        if members:
            self._send_many((c for c in members if c is not exclude), message)
        self._publish(message)

    def _send_many(self, targets: Iterable[Connection], message: Message) -> int:
        """Deliver one non-chat message to many, encoding it at most once per wire form."""
        text_data: bytes | None = None
        json_data: bytes | None = None
        count = 0
        for conn in targets:
            if conn.closing:
                continue
            if conn.json:
                if json_data is None:
                    json_data = dump_frame(message.to_wire())
                data = json_data
            else:
                if text_data is None:
                    text_data = conn.encode(message)
                data = text_data
            conn.write(data)
            self._bytes_out += len(data)
            count += 1
        return count

    def _receive_text(self, conn: Connection, data: bytes) -> bool:
        """Relay a text-mode read that holds only chat lines in bulk; False if it may not.

        The fast path of :meth:`Connection.data_received`. It applies to an authenticated
        text-mode connection without flood control, and only when every complete line of
        the read is plain chat: not empty, not a ``/`` command, valid UTF-8, within
        ``max_line_bytes``, free of the control characters :func:`~._protocol.check_text`
        refuses. Those are checked once over the whole read (in C) instead of line by line
        through the decoder and :meth:`_handle_frames`; what is relayed, and the order, are
        the same. Anything else returns False having consumed nothing except, when it has
        to, the end of a line the decoder was holding, which it then handles itself.
        """
        decoder = conn.decoder
        if (
            self.rate is not None
            or conn.json
            or conn.first_frame
            or not conn.authenticated
            or decoder.discarding
            or conn.deferred is not None  # frames wait for an asynchronous step: keep order
        ):
            return False
        end = data.rfind(b"\n")
        if end < 0:
            return False
        held: str | None = None
        start = 0
        if decoder.pending:
            # The read completes a line the decoder holds: let it finish that one line.
            start = data.find(b"\n") + 1
            head = decoder.feed(data[:start])
            frame = head[0] if len(head) == 1 else None
            if not isinstance(frame, str) or not _plain_chat(frame):
                self._handle_frames(conn, head + decoder.feed(data[start:]))
                return True
            held = frame
        lines = self._plain_lines(data, start, end) if end >= start else []
        if lines is None:
            frames: list[str | ProtocolError] = [] if held is None else [held]
            frames += decoder.feed(data[start:])
            self._handle_frames(conn, frames)
            return True
        if held is not None:
            lines.insert(0, held)
        tail = decoder.feed(data[end + 1 :]) if end + 1 < len(data) else None
        self._flush_batch(conn, lines)
        if tail:
            self._handle_frames(conn, tail)  # an over-long unfinished line: its error
        return True

    def _plain_lines(self, data: bytes, start: int, end: int) -> list[str] | None:
        """The lines of ``data[start:end]`` if every one is plain chat text, else None."""
        raw = data[start:end]
        # What check_text refuses, found in C: deleting every printable ASCII byte, tab and
        # LF leaves nothing in a clean ASCII read; an ASCII byte left is a control character.
        # Non-ASCII reads also need the C1 controls (U+0080-U+009F, UTF-8 C2 80-C2 9F);
        # surrogates and other invalid UTF-8 fail to decode.
        rest = raw.translate(None, _PLAIN_ASCII)
        if rest and (rest.translate(None, _HIGH_BYTES) or _C1_UTF8.search(raw) is not None):
            return None
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            return None
        if not text or text[0] in "\n/" or text[-1] == "\n" or "\n\n" in text or "\n/" in text:
            return None  # an empty line or a command: the per-frame path handles those
        lines = text.split("\n")
        if end - start > self.max_line_bytes and (
            not text.isascii() or max(map(len, lines)) > self.max_line_bytes
        ):
            return None  # some line may be over the limit: the decoder says which
        return lines

    def _flush_batch(self, conn: Connection, batch: list[str]) -> None:
        """Relay the room messages in ``batch`` from ``conn`` to the rest of its room.

        With a backplane the batch also crosses to the other servers, once per batch.
        """
        if not batch or not conn.room:
            batch.clear()
            return
        if not conn.announced:
            self._announce(conn)
        self._messages_in += len(batch)
        timestamp = _now()
        self._fan_out(conn.room, conn, conn.name, conn.name_json, batch, timestamp)
        if self._cluster is not None:
            self._cluster.batch(conn.name, conn.room, batch, timestamp)
        batch.clear()

    def _relay_remote(self, sender: str, room: str, batch: list[str], timestamp: float) -> None:
        """Relay a batch that another server's member sent to ``room``, to our members."""
        if room in self._rooms:
            self._fan_out(room, None, sender, _encode_str(sender), batch, timestamp)

    def _fan_out(
        self,
        room: str,
        exclude: Connection | None,
        sender: str,
        sender_json: str,
        batch: list[str],
        timestamp: float,
    ) -> None:
        """Hand ``batch`` to every member of ``room`` but ``exclude``; never waits.

        The hot path: both wire forms are built once for the whole batch (lazily, only if
        a recipient needs that form) and handed to each transport in one write.
        """
        text_data = json_data = b""
        text_members = json_members = 0
        for member in self._rooms.get(room, ()):
            if member is exclude:
                continue
            if member.json:
                if not json_members:
                    json_data = _json_batch(sender_json, room, batch, timestamp)
                member.write(json_data)
                json_members += 1
            else:
                if not text_members:
                    text_data = _text_batch(sender, batch)
                member.write(text_data)
                text_members += 1
        self._messages_out += len(batch) * (text_members + json_members)
        self._bytes_out += text_members * len(text_data) + json_members * len(json_data)
        if self._subscribers:
            for text in batch:
                self._publish(
                    Message(text, sender=sender, kind=MESSAGE, room=room, timestamp=timestamp)
                )

    def _publish(self, event: Message) -> None:
        for queue, dropped in self._subscribers:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                dropped[0] += 1
                self._events_dropped += 1

    # -- timers -----------------------------------------------------------------------------

    async def _sweep(self) -> None:
        """Once a second: heartbeats, idle and authentication timeouts."""
        interval = min(
            1.0,
            self.heartbeat_interval / 2,
            self.heartbeat_timeout / 2,
            self.auth_timeout / 2,
            (self.idle_timeout or 2.0) / 2,
        )
        while True:
            await asyncio.sleep(interval)
            now = self._loop.time()
            for conn in list(self._connections):
                if conn.closing:
                    continue
                idle = now - conn.last_rx
                if not conn.authenticated:
                    if idle > self.auth_timeout:
                        self._auth_failed(conn, "authentication timeout")
                elif conn.json:
                    if conn.pinged_at is not None:
                        if now - conn.pinged_at > self.heartbeat_timeout:
                            self._timeouts += 1
                            self._disconnect(conn, Message("heartbeat timeout", kind=ERROR))
                    elif idle > self.heartbeat_interval:
                        conn.pinged_at = now
                        conn.write(b'{"type":"ping"}\n')
                elif self.idle_timeout is not None and idle > self.idle_timeout:
                    self._timeouts += 1
                    self._disconnect(conn, Message("idle timeout", kind=ERROR))


def _plain_chat(line: str) -> bool:
    """True if a text-mode ``line`` is a chat message that :meth:`_handle_frames` relays."""
    return bool(line) and line[0] != "/" and _BAD_TEXT.search(line) is None


def _now() -> float:
    return round(time.time(), 3)


def _text_batch(name: str, batch: list[str]) -> bytes:
    # "name: " before every line, the lines inside multi-line texts (from JSON clients)
    # included, so nobody can fake a line from someone else. Joining with LF and prefixing
    # after every LF does it for the whole batch in C, without a Python loop per message.
    prefix = name + ": "
    return (prefix + "\n".join(batch).replace("\n", "\n" + prefix) + "\n").encode()


def _json_batch(name_json: str, room: str, batch: list[str], timestamp: float) -> bytes:
    # One frame per message; everything but the text is the same for the whole batch, so
    # the frames are the encoded texts joined by "tail + head" (a C loop, not a Python one).
    head = '{"type":"message","from":' + name_json + ',"text":'
    tail = ',"room":' + _encode_str(room) + ',"ts":' + repr(timestamp) + "}\n"
    return (head + (tail + head).join(map(_encode_str, batch)) + tail).encode()
