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
import logging
import ssl as ssl_module
from dataclasses import dataclass
from typing import Final, Literal

from ._cluster import Cluster
from ._connection import Connection, _discard
from ._core import commands as proto
from ._core.framing import DEFAULT_MAX_LINE_BYTES
from ._relay import EventStream, _now
from ._session import Session
from .backplane import Backplane
from .exceptions import ChannelClosed, ConnectionClosed, InvalidFrame
from .message import (
    ANNOUNCEMENT,
    CLOSING,
    ERROR,
    PRIVATE,
    Message,
)

__all__ = ["DEFAULT_WELCOME", "BroadcastServer", "EventStream", "ServerStatistics"]

log = logging.getLogger("chatcast.server")

#: The lab's greeting, sent as the first line of every connection.
DEFAULT_WELCOME: Final = "Selamat datang di Server..."


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """A snapshot of a server's counters (:meth:`BroadcastServer.statistics`).

    Attributes:
        clients: Connections open now (not counting those being closed).
        rooms: Rooms with at least one member now.
        connections: Connections accepted since start.
        messages_in: Chat messages received from clients (room and private).
        messages_out: Messages handed to recipients' transports, one per recipient: room and
            private chat, and announcements (not notices or errors).
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
        backplane_lost_messages: Chat messages in those envelopes.
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
    backplane_lost_messages: int = 0


class BroadcastServer(Session):
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
        ssl: An :class:`ssl.SSLContext` to serve TLS. A TLS connection counts against
            ``max_clients`` and ``max_per_address`` from the moment it is accepted, before
            its handshake (on uvloop: once its handshake is done).
        ssl_handshake_timeout: Seconds a TLS handshake may take, counted from the accept.
        max_handshakes: TLS handshakes in progress at once (each holds about 300 KiB in
            asyncio's TLS layer); connections beyond it wait their turn within their
            ``ssl_handshake_timeout``.
        close_timeout: Seconds :meth:`close` lets pending output flush before aborting.
        reuse_port: Set ``SO_REUSEPORT`` so several processes can share the port.
        notice_limit: Rooms with more members than this get no join, leave and nick notices
            (as Twitch does past 1000): announcing every arrival to everyone costs n^2
            writes when many connect at once. The one renamed is still told. ``None`` for
            notices in rooms of any size.
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
        max_handshakes: int = 64,
        close_timeout: float = 5.0,
        reuse_port: bool = False,
        backplane: Backplane | None = None,
        notice_limit: int | None = 100,
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
            ("notice_limit", notice_limit),
            ("max_handshakes", max_handshakes),
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
        self.notice_limit = notice_limit
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
        self.max_handshakes = max_handshakes
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
        self._names: dict[str, Connection] = {}  # by name_key(): one "alice" or "Alice"
        self._guest_counter = 0
        self._subscribers: list[tuple[asyncio.Queue[Message | None], list[int]]] = []
        # TLS: connections waiting for a handshake slot, handshakes running, their tasks.
        self._tls_waiting: collections.deque[Connection] = collections.deque()
        self._handshakes = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._tls_per_connection = False  # set by start(): TLS started by us, per connection
        self._notices = {}  # join and leave notices waiting (NOTICE_DELAY), by room
        self._notices_due = False
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
        # TLS is started on each accepted connection by the server itself (start_tls), not
        # by create_server(ssl=...): that way a connection is counted against the limits as
        # soon as it is accepted, and only max_handshakes handshakes run at once. Otherwise
        # each silent TCP connection to a TLS port would hold asyncio's TLS buffers (about
        # 300 KiB) for the whole handshake timeout, uncounted. uvloop starts reading right
        # after connection_made, whatever the protocol asks, so the ClientHello would reach
        # us instead of the TLS layer: there, TLS stays in create_server (counted after it).
        self._tls_per_connection = self.ssl is not None and isinstance(
            self._loop, asyncio.BaseEventLoop
        )
        in_accept = self.ssl is not None and not self._tls_per_connection
        self._server = await self._loop.create_server(
            lambda: Connection(self),
            self.host,
            self._port,
            ssl=self.ssl if in_accept else None,
            ssl_handshake_timeout=self.ssl_handshake_timeout if in_accept else None,
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
        if self._notices:
            self._flush_notices()  # joins and leaves before the shutdown notice
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
        if self._tasks:  # handshakes end with their connections
            await asyncio.wait(list(self._tasks), timeout=self.close_timeout)
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

    async def send(self, name: str, text: str) -> None:
        """Send ``text`` from the server privately to the client called ``name``.

        With a backplane, a client on another server is reached too.

        Raises:
            KeyError: Nobody of that name is connected.
            ConnectionClosed: The name is on another server and the backplane is down.
            ChannelClosed: The server is closed.
        """
        if self._closing:
            raise ChannelClosed("server is closed")
        message = Message(text, sender="server", kind=PRIVATE, to=name, timestamp=_now())
        conn = self._names.get(proto.name_key(name))
        if conn is not None and not conn.closing:
            self._deliver_private(conn, message)
            return
        try:
            if self._cluster is None or not self._cluster.private(message):
                raise KeyError(name)
        except InvalidFrame as exc:
            raise ConnectionClosed(str(exc)) from None

    def who(self, room: str | None = None) -> list[str]:
        """Names in ``room`` (or everyone connected, when ``None``), sorted.

        With a backplane, the names on the other servers are included, as this server last
        heard of them (joins and leaves cross at once; a full refresh every few seconds).
        """
        # Everyone who can read the room is listed, including a text-mode guest whose join
        # notice is still waiting for its first line or the join grace.
        if room is None:
            names = {conn.name for conn in self._names.values() if not conn.closing}
        else:
            names = {c.name for c in self._rooms.get(room, ())}
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
                "backplane_lost_messages": figures.lost_messages,
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
        conn.last_rx = conn.admitted_at = now
        conn.tokens = self.burst
        conn.tokens_at = now
        ip = conn.address.rpartition(":")[0]
        self._per_address[ip] += 1
        self._active += 1
        refusal = None
        if self._closing:
            refusal = "server shutting down"
        elif self.max_clients is not None and self._active > self.max_clients:
            refusal = f"server full ({self.max_clients} clients)"
        elif self.max_per_address is not None and self._per_address[ip] > self.max_per_address:
            refusal = f"too many connections from {ip}"
        if refusal is not None:
            self._refuse(conn, refusal)
        elif self._tls_per_connection:
            conn.handshaking = True
            self._tls_waiting.append(conn)
            self._start_handshakes()
        else:
            self._greet(conn)

    def _greet(self, conn: Connection) -> None:
        """Send the welcome line to a connection that may stay (after TLS, if any)."""
        assert conn.transport is not None
        conn.last_rx = conn.admitted_at = self._loop.time()
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
        if self._tls_per_connection:
            # No TLS session yet, so nothing readable can be said without a handshake, which
            # is what a flood of refused connections must not cost: just close.
            self._release(conn)
            conn.write = _discard
            conn.transport.close()
            return
        conn.transport.write(f"! {reason}\n".encode())
        self._close_gently(conn)

    # -- TLS --------------------------------------------------------------------------------

    def _start_handshakes(self) -> None:
        """Start the waiting TLS handshakes that fit under ``max_handshakes``."""
        now = self._loop.time()
        while self._tls_waiting and self._handshakes < self.max_handshakes:
            conn = self._tls_waiting.popleft()
            if conn.closing or conn.transport is None or conn.transport.is_closing():
                continue
            left = conn.admitted_at + self.ssl_handshake_timeout - now
            if left <= 0:
                log.info("TLS handshake with %s timed out waiting for a slot", conn.address)
                self._release(conn)
                conn.transport.abort()
                continue
            self._handshakes += 1
            task = self._loop.create_task(self._handshake(conn, left))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handshake(self, conn: Connection, seconds: float) -> None:
        assert self.ssl is not None
        raw = conn.transport
        assert raw is not None
        try:
            transport = await self._loop.start_tls(
                raw, conn, self.ssl, server_side=True, ssl_handshake_timeout=seconds
            )
        except (OSError, EOFError) as exc:  # SSLError, TimeoutError, ConnectionError too
            # Garbage instead of a ClientHello, plain text, a timeout, a reset. The TLS layer
            # had taken the connection over, so its end never reaches conn: end it here.
            log.info("TLS handshake with %s failed: %s", conn.address, exc or "timeout")
            self._connection_lost(conn, exc)
            return
        finally:
            self._handshakes -= 1
            self._start_handshakes()
        conn.handshaking = False
        if transport is None or conn.closing:  # the server closed meanwhile
            if transport is not None:
                transport.abort()
            return
        conn.transport = transport
        conn.write = transport.write
        self._greet(conn)
        early, conn.early = conn.early, []
        for data in early:  # what the peer said before we took over the TLS transport
            conn.data_received(data)

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
        key = proto.name_key(conn.name)
        if conn.name and self._names.get(key) is conn:
            del self._names[key]
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
        if conn.handshaking:  # nothing can be said before TLS is up
            self._release(conn)
            conn.transport.abort()
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
                if conn.closing or conn.handshaking:  # a handshake has its own timeout
                    continue
                idle = now - conn.last_rx
                if not conn.authenticated:
                    # From the welcome, not from the last byte: a connection that keeps
                    # sending something without ever authenticating still times out.
                    if now - conn.admitted_at > self.auth_timeout:
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
