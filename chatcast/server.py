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
import json
import logging
import os
import ssl as ssl_module
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeVar, cast, overload

from ._announce import Announce, Announcer, ServerInfo
from ._cluster import Cluster
from ._connection import Acceptor, Connection
from ._core.config import DEFAULT_WELCOME, ServerConfig
from ._core.framing import DEFAULT_MAX_LINE_BYTES
from ._core.history import HistoryLimits
from ._core.hub import Hub
from ._core.moderation import BanRecord, MuteRecord, TopicRecord, UnknownTarget
from ._core.peer import Peer
from ._core.ports import Store
from ._events import EventStream, end_all
from .backplane import Backplane
from .exceptions import ChannelClosed, ConnectionClosed, InvalidFrame
from .message import ANNOUNCEMENT, CLOSING, PRIVATE, Message

__all__ = [
    "DEFAULT_WELCOME",
    "BanRecord",
    "BroadcastServer",
    "EventStream",
    "HistoryLimits",
    "MuteRecord",
    "ServerStatistics",
    "TopicRecord",
]

log = logging.getLogger("chatcast.server")

T = TypeVar("T")


class _Setting(Generic[T]):
    """A server attribute that reads one field of its frozen ``config`` (``server.rate``).

    Settings are fixed once the server is made: assigning one raises, rather than seeming to
    work and changing nothing.
    """

    def __init__(self, field: str | None = None) -> None:
        self._field = field

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name
        self._field = self._field or name

    @overload
    def __get__(self, server: None, owner: type) -> _Setting[T]: ...

    @overload
    def __get__(self, server: BroadcastServer, owner: type) -> T: ...

    def __get__(self, server: BroadcastServer | None, owner: type) -> T | _Setting[T]:
        if server is None:
            return self
        value: T = getattr(server.config, self._field or self._name)
        return value

    def __set__(self, server: BroadcastServer, value: T) -> None:
        raise AttributeError(
            f"{self._name} is fixed once the server is made: pass {self._name}= to "
            "BroadcastServer(...)"
        )


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
        backplane_bad_entries: Entries of the backplane's log skipped as malformed, foreign
            or from the future.
        backplane_duplicates: Entries of the log dropped because their id was delivered.
        backplane_caught_up: Entries read from the log after a lost link came back.
        last_id: The id of the newest message (room, private or announcement).
        history_messages: Messages kept in the history now (all rooms and conversations).
        history_bytes: What they count against the byte limits.
        history_evicted: Messages pushed out of the history by its limits.
        sessions_waiting: Sessions whose connection ended, holding their names to resume.
        resumes: Sessions resumed.
        resume_failures: Resumes refused (an unknown, expired or forged session token).
        replayed: Messages replayed: missed ones after a resume, and history on join.
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
    backplane_bad_entries: int = 0
    backplane_duplicates: int = 0
    backplane_caught_up: int = 0
    last_id: int = 0
    history_messages: int = 0
    history_bytes: int = 0
    history_evicted: int = 0
    sessions_waiting: int = 0
    resumes: int = 0
    resume_failures: int = 0
    replayed: int = 0


_DEFAULT_HISTORY: Final = HistoryLimits()
# Where a store keeps the moderation records, and the events that change them.
_MODERATION_STATE: Final = "moderation"
_KEPT_MODERATION: Final = frozenset({"ban", "unban", "mute", "unmute", "topic"})


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
            ``/auth TOKEN``) before they can send or receive anything. Never read from the
            environment (``chatcast server`` reads ``CHATCAST_TOKEN``; a program passes it).
        op_token: If set, a client that presents this token (JSON hello ``"op"`` or text
            ``/op TOKEN``) becomes an operator: it may kick, ban, mute and set topics
            (``docs/security.md``). Must differ from ``token``.
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
        history: What history the server keeps: a :class:`~chatcast.HistoryLimits` (the
            default keeps the last 1000 messages and 1 MiB per room for a day, 100,000
            messages and 64 MiB in all), or ``None`` for none (ids are given all the same).
        history_on_join: How many of a room's last messages a client gets, marked as
            history, when it joins (JSON clients of protocol version 2; text clients ask
            with ``/history``). 0 turns it off.
        resume_window: Seconds a JSON client's name (and the private messages sent to it)
            are held after its connection ends, for it to resume with its session token.
            0 turns resuming off.
        store: Keep the history and the ids on disk, in this SQLite file (a path, or a
            :class:`~chatcast.store.SQLiteStore`), so that they survive a restart.
            ``None`` (the default) keeps them in memory only.
        announce: Announce this server on the LAN while it runs (``docs/discovery.md``):
            an :class:`~chatcast.discovery.Announce`, or ``True`` for the defaults (on the
            interface of ``host``, which must then be a specific address). Off by default.

    Attributes:
        config: The settings above, validated and frozen. Each is also readable on the
            server itself (``server.rate``; ``server.burst`` is the bucket size in use);
            assigning one raises :class:`AttributeError`.
        ssl: The TLS context, or ``None``.

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
        op_token: str | None = None,
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
        history: HistoryLimits | None = _DEFAULT_HISTORY,
        history_on_join: int = 20,
        resume_window: float = 120.0,
        store: str | os.PathLike[str] | Store | None = None,
        announce: Announce | bool | None = None,
    ) -> None:
        #: The settings, validated (:class:`~chatcast._core.config.ServerConfig`).
        self.config = ServerConfig(
            host=host,
            port=port,
            welcome=welcome,
            default_room=default_room,
            max_clients=max_clients,
            max_per_address=max_per_address,
            max_line_bytes=max_line_bytes,
            max_buffer_bytes=max_buffer_bytes,
            slow_consumer=slow_consumer,
            line_timeout=line_timeout,
            join_grace=join_grace,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            idle_timeout=idle_timeout,
            keepalive=keepalive,
            token=token,
            op_token=op_token,
            auth_timeout=auth_timeout,
            rate=rate,
            burst=burst,
            ssl_handshake_timeout=ssl_handshake_timeout,
            max_handshakes=max_handshakes,
            close_timeout=close_timeout,
            reuse_port=reuse_port,
            notice_limit=notice_limit,
            history=history if history is not None else HistoryLimits(messages=0),
            history_on_join=history_on_join,
            resume_window=resume_window,
        )
        self.ssl = ssl
        #: The on-disk store, or ``None``.
        self.store: Store | None
        if isinstance(store, str | os.PathLike):
            from .store import SQLiteStore  # sqlite3 is loaded only by those who use it

            self.store = SQLiteStore(store, limits=self.config.history)
        else:
            self.store = store
        self._port = port
        self._cluster = Cluster(backplane) if backplane is not None else None
        self._clock = _LoopClock()
        self._hub = Hub(self.config, self._clock, cluster=self._cluster, release=self._release)
        if self._cluster is not None:
            self._cluster.serve(self._hub)
        self._server: asyncio.Server | None = None
        self._per_address: collections.Counter[str] = collections.Counter()
        self._active = 0  # connections counted against the limits (not closing)
        # TLS: connections waiting for a handshake slot, handshakes running, their tasks.
        self._tls_waiting: collections.deque[Connection] = collections.deque()
        self._handshakes = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._tls_per_connection = False  # set by start(): TLS started by us, per connection
        self._streams: weakref.WeakSet[EventStream] = weakref.WeakSet()
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self._all_gone = asyncio.Event()
        self._all_gone.set()
        self._connections_total = 0
        self._rejected = 0
        self._web_port: int | None = None  # set by a WebGateway while it serves (beacons say so)
        self._announcer = None
        if announce:
            settings = announce if isinstance(announce, Announce) else Announce()
            self._announcer = Announcer(self._beacon_info, settings, server_host=host)

    # -- settings read back (read-only: ``config`` is frozen) --------------------------------

    host: _Setting[str | None] = _Setting()
    welcome: _Setting[str] = _Setting()
    default_room: _Setting[str] = _Setting()
    max_clients: _Setting[int | None] = _Setting()
    max_per_address: _Setting[int | None] = _Setting()
    max_line_bytes: _Setting[int] = _Setting()
    max_buffer_bytes: _Setting[int] = _Setting()
    slow_consumer: _Setting[str] = _Setting()
    line_timeout: _Setting[float] = _Setting()
    join_grace: _Setting[float] = _Setting()
    heartbeat_interval: _Setting[float] = _Setting()
    heartbeat_timeout: _Setting[float] = _Setting()
    idle_timeout: _Setting[float | None] = _Setting()
    keepalive: _Setting[bool] = _Setting()
    auth_timeout: _Setting[float] = _Setting()
    rate: _Setting[float | None] = _Setting()
    burst: _Setting[float] = _Setting("bucket")  # the bucket size in use, default included
    ssl_handshake_timeout: _Setting[float] = _Setting()
    max_handshakes: _Setting[int] = _Setting()
    close_timeout: _Setting[float] = _Setting()
    reuse_port: _Setting[bool] = _Setting()
    notice_limit: _Setting[int | None] = _Setting()
    history_on_join: _Setting[int] = _Setting()
    resume_window: _Setting[float] = _Setting()

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
        loop = self._clock.loop = asyncio.get_running_loop()
        if self.store is not None:
            # A locked, corrupt or unwritable database is a StoreError here, not later.
            next_id, kept = await asyncio.to_thread(self.store.open)
            self._hub.history.restore(kept)
            self._hub.history.next_id = max(self._hub.history.next_id, next_id)
            self._hub.recorder = self.store
            # Bans, mutes and topics survive a restart too (#14).
            records = self.store.state.get(_MODERATION_STATE)
            if records:
                try:
                    self.restore_moderation(json.loads(records))
                except ValueError as exc:
                    log.warning("store %s: moderation records not restored: %s", self.store, exc)
            self._hub.rooms.subscribe(self._moderation_changed)
        try:
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
                loop, asyncio.BaseEventLoop
            )
            in_accept = self.ssl is not None and not self._tls_per_connection
            acceptor = Acceptor(
                self._hub,
                self._connection_made,
                self._connection_lost,
                tls_pending=self._tls_per_connection,
                keepalive=self.config.keepalive,
            )
            self._server = await loop.create_server(
                lambda: Connection(acceptor),
                self.config.host,
                self._port,
                ssl=self.ssl if in_accept else None,
                ssl_handshake_timeout=self.config.ssl_handshake_timeout if in_accept else None,
                reuse_port=self.config.reuse_port or None,
                backlog=1024,
            )
        except BaseException:
            # Not left half started: a store opened above is closed (and unlocked) again.
            if self.store is not None and self._hub.recorder is not None:
                self._hub.recorder = None
                self._hub.rooms.unsubscribe(self._moderation_changed)
                await self.store.aclose()
            raise
        self._port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(self._sweep(), name="chatcast-server-sweep")
        log.info("listening on %s port %d", self.config.host or "*", self._port)
        if self._announcer is not None:
            try:
                await self._announcer.start()
            except BaseException:  # no interface, no route: not left half started
                await self.aclose()
                raise

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
        if self._announcer is not None:
            self._announcer.close()  # its goodbye first: nobody should try to join now
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._hub.close(Message(reason, kind=CLOSING))
        end_all(self._streams)
        self._closed.set()
        self._clock.call_later(self.config.close_timeout, self._abort_all)

    async def wait_closed(self) -> None:
        """Wait until the server is closed and every connection is gone."""
        if self._server is None:
            return
        await self._closed.wait()
        await self._all_gone.wait()
        if self._sweeper is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._tasks:  # handshakes end with their connections
            await asyncio.wait(list(self._tasks), timeout=self.config.close_timeout)
        await self._server.wait_closed()
        if self._announcer is not None:
            await self._announcer.wait_closed()
        if self._cluster is not None:
            cluster, self._cluster = self._cluster, None
            await cluster.close()
        if self.store is not None and self._hub.recorder is not None:
            self._hub.recorder = None
            await self.store.aclose()  # what is still queued is written first

    async def aclose(self, reason: str = "server shutting down") -> None:
        """:meth:`close`, then :meth:`wait_closed`."""
        self.close(reason)
        await self.wait_closed()

    def _abort_all(self) -> None:
        for peer in list(self._hub.peers):
            if peer.transport is not None:
                peer.transport.abort()

    def _beacon_info(self) -> ServerInfo:
        return ServerInfo(
            self.config.host, self._port, self.ssl is not None, self.config.token is not None,
            self._active, self._web_port,
        )  # fmt: skip

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
        message = Message(
            text, sender="server", kind=ANNOUNCEMENT, room=room, timestamp=self._hub.now()
        )
        if self._cluster is not None and self._cluster.announcement(message):
            # Through the cluster's log, which delivers it here too.
            return self._hub.audience(room)
        return self._hub.announce(message)

    async def send(self, name: str, text: str) -> None:
        """Send ``text`` from the server privately to the client called ``name``.

        With a backplane, a client on another server is reached too.

        A client that is away but may still resume (its connection dropped within the
        resume window) gets it when it comes back.

        Raises:
            KeyError: Nobody of that name is connected (or away and resumable).
            ConnectionClosed: The name is on another server and the backplane is down.
            ChannelClosed: The server is closed.
        """
        if self._closing:
            raise ChannelClosed("server is closed")
        message = Message(text, sender="server", kind=PRIVATE, to=name, timestamp=self._hub.now())
        peer = self._hub.peer_named(name)
        if peer is not None and not peer.closing:
            self._hub.deliver_private(peer, message)
            return
        if self._hub.keep_for_away(message):  # away, may resume: it waits for them
            return
        if self._cluster is not None and self._cluster.private_to_away(message):
            return  # the same, through the cluster's log (ids are the log's)
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
        return self._hub.who(room)

    def rooms(self) -> dict[str, int]:
        """Each room with members, and how many (on every server, with a backplane)."""
        return self._hub.room_counts()

    # -- moderation (#14) -------------------------------------------------------------------

    def kick(self, name: str, reason: str = "") -> None:
        """Disconnect the client called ``name``; it and its room are told ``reason``. With
        a backplane, a client of another server is kicked by that server.

        Raises:
            KeyError: Nobody of that name is connected (here, or on the other servers).
            ValueError: A reason with control characters.
        """
        with _moderating():
            self._hub.moderation.kick(name, reason)

    def ban(
        self,
        name: str | None = None,
        address: str | None = None,
        duration: float | None = None,
        reason: str = "",
    ) -> BanRecord:
        """Ban a name, an IP address, or both, for ``duration`` seconds (``None``: until
        :meth:`unban`). Connected clients it matches are disconnected with the reason; a
        banned address is refused at connect, a banned name at its hello or ``/nick``.

        A ban on the name of a client connected here also covers the address it connects
        from (so that it survives a change of name), unless that address is loopback (shared
        by every user of this machine) or another client is connected from it too (a NAT, a
        shared machine).

        Returns:
            The ban (see :meth:`bans`).

        Raises:
            ValueError: Neither name nor address, or a bad name, address, duration or reason.
        """
        with _moderating():
            return self._hub.moderation.ban(name, address, duration, reason)
        raise AssertionError("unreachable")  # pragma: no cover

    def unban(self, name: str | None = None, address: str | None = None) -> BanRecord:
        """Lift the ban on ``name`` or ``address``; return it.

        Raises:
            KeyError: No such ban.
        """
        with _moderating():
            return self._hub.moderation.unban(name, address)
        raise AssertionError("unreachable")  # pragma: no cover

    def bans(self) -> list[BanRecord]:
        """The bans in force, oldest first."""
        return self._hub.moderation.bans()

    def mute(self, name: str, room: str | None = None, reason: str = "") -> MuteRecord:
        """Stop ``name`` speaking in ``room`` (default: the room it is in); it is told.

        Raises:
            KeyError: No room given, and nobody called ``name`` is connected here.
            ValueError: A bad name, room or reason.
        """
        with _moderating():
            return self._hub.moderation.mute(name, room, reason)
        raise AssertionError("unreachable")  # pragma: no cover

    def unmute(self, name: str, room: str | None = None) -> MuteRecord:
        """Let ``name`` speak in ``room`` (default: the room it is in) again.

        Raises:
            KeyError: ``name`` is not muted there.
        """
        with _moderating():
            return self._hub.moderation.unmute(name, room)
        raise AssertionError("unreachable")  # pragma: no cover

    def set_topic(self, room: str, text: str) -> None:
        """Set the topic of ``room`` (``""`` clears it); shown to its members now and to
        whoever enters it later.

        Raises:
            ValueError: A bad room name, or a topic with control characters or over 300
                characters.
        """
        with _moderating():
            self._hub.moderation.set_topic(room, text)

    def topic(self, room: str) -> str | None:
        """The topic of ``room``, or ``None``."""
        record = self._hub.moderation.topic(room)
        return None if record is None else record.text

    def operators(self) -> list[str]:
        """The names of the clients that are operators here, sorted."""
        return sorted(peer.name for peer in self._hub.moderation.operators)

    def _moderation_changed(self, event: Message) -> bool:
        """A ban, mute or topic changed: keep them all in the store (written off the loop)."""
        if event.kind in _KEPT_MODERATION and self.store is not None and not self._closed.is_set():
            self.store.save_state(_MODERATION_STATE, json.dumps(self.moderation_records()))
        return True

    def moderation_records(self) -> list[dict[str, Any]]:
        """Every ban, mute and topic as plain dicts, to keep (see :meth:`restore_moderation`)."""
        return self._hub.moderation.records()

    def restore_moderation(self, records: list[dict[str, Any]]) -> int:
        """Load what :meth:`moderation_records` returned; return how many were loaded.

        Raises:
            ValueError: A record that is not one.
        """
        return self._hub.moderation.restore(records)

    def events(self, *, maxsize: int = 1000) -> EventStream:
        """Subscribe to what happens in the server: messages, privates, joins, leaves...

        Use as ``async for event in server.events():``. Each event is a
        :class:`~chatcast.message.Message` (``kind`` says what). The subscription starts at
        this call, so nothing that happens after it is missed. A reader that falls more than
        ``maxsize`` events behind loses the newest ones (counted in ``events_dropped``); the
        server never waits for it. Iteration ends when the server closes, or at
        :meth:`EventStream.aclose`.
        """
        stream = EventStream(self._hub, maxsize, ended=self._closing)
        self._streams.add(stream)
        return stream

    def statistics(self) -> ServerStatistics:
        """Return a snapshot of the counters."""
        hub = self._hub
        cluster: dict[str, Any] = {}
        if self._cluster is not None:
            figures = self._cluster.backplane.statistics()
            cluster = {
                "backplane_connected": figures.connected,
                "backplane_published": figures.published,
                "backplane_received": figures.received,
                "backplane_failures": figures.failures,
                "backplane_reconnects": figures.reconnects,
                "backplane_lost_messages": figures.lost_messages,
                "backplane_bad_entries": figures.bad_entries,
                "backplane_duplicates": figures.duplicates,
                "backplane_caught_up": figures.caught_up,
            }
        return ServerStatistics(
            clients=self._active,
            rooms=len(hub.rooms),
            connections=self._connections_total,
            messages_in=hub.messages_in,
            messages_out=hub.rooms.messages_out,
            bytes_in=hub.bytes_in,
            bytes_out=hub.rooms.bytes_out,
            slow_consumers=hub.slow_consumers,
            dropped=hub.dropped,
            errors=hub.errors,
            rejected=self._rejected,
            auth_failures=hub.auth_failures,
            rate_limited=hub.rate_limited,
            timeouts=hub.timeouts,
            events_dropped=hub.rooms.events_dropped,
            last_id=hub.history.latest_id,
            history_messages=hub.history.total_messages,
            history_bytes=hub.history.total_bytes,
            history_evicted=hub.history.evicted,
            sessions_waiting=hub.sessions.waiting,
            resumes=hub.resumes,
            resume_failures=hub.resume_failures,
            replayed=hub.replayed,
            **cluster,
        )

    # -- connections: limits and TLS (called by Connection) ---------------------------------

    def _connection_made(self, conn: Connection) -> None:
        refusal = self._admit(conn)
        if refusal is not None:
            # Over TLS there is no session yet, so nothing readable can be said without a
            # handshake, which is what a flood of refused connections must not cost.
            banned = self._hub.moderation.address_refusal(conn.address) is not None
            self._hub.refuse(conn, refusal, say=not self._tls_per_connection, quiet=banned)
        elif self._tls_per_connection:
            self._tls_waiting.append(conn)
            self._start_handshakes()
        else:
            self._hub.greet(conn)

    def _admit(self, peer: Peer) -> str | None:
        """Count a new connection (a TCP one, or a WebSocket one from :mod:`chatcast.web`)
        against the limits; return why it is refused (it is counted as rejected), or None."""
        self._hub.add(peer)
        self._connections_total += 1
        self._all_gone.clear()
        ip = peer.address.rpartition(":")[0]
        self._per_address[ip] += 1
        self._active += 1
        config = self.config
        refusal = banned = None
        if self._closing:
            refusal = "server shutting down"
        elif (banned := self._hub.moderation.address_refusal(peer.address)) is not None:
            refusal = banned  # moderation (#14): refused before a byte is decoded
        elif config.max_clients is not None and self._active > config.max_clients:
            refusal = f"server full ({config.max_clients} clients)"
        elif config.max_per_address is not None and self._per_address[ip] > config.max_per_address:
            refusal = f"too many connections from {ip}"
        if refusal is not None:
            self._rejected += 1
        return refusal

    def _connection_lost(self, conn: Peer, exc: Exception | None) -> None:
        self._hub.lost(conn, exc)
        if not self._hub.peers:
            self._all_gone.set()

    def _release(self, peer: Peer) -> None:
        """The hub no longer counts ``peer`` (it is closing): neither do the limits."""
        self._active -= 1
        ip = peer.address.rpartition(":")[0]
        self._per_address[ip] -= 1
        if self._per_address[ip] <= 0:
            del self._per_address[ip]

    def _start_handshakes(self) -> None:
        """Start the waiting TLS handshakes that fit under ``max_handshakes``."""
        now = self._clock.time()
        while self._tls_waiting and self._handshakes < self.config.max_handshakes:
            conn = self._tls_waiting.popleft()
            if conn.closing or conn.transport is None or conn.transport.is_closing():
                continue
            left = conn.admitted_at + self.config.ssl_handshake_timeout - now
            if left <= 0:
                log.info("TLS handshake with %s timed out waiting for a slot", conn.address)
                self._hub.release(conn)
                conn.transport.abort()
                continue
            self._handshakes += 1
            task = asyncio.get_running_loop().create_task(self._handshake(conn, left))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handshake(self, conn: Connection, seconds: float) -> None:
        assert self.ssl is not None
        raw = conn.transport
        assert raw is not None
        try:
            transport = await asyncio.get_running_loop().start_tls(
                cast(asyncio.Transport, raw),  # the transport Connection was made with
                conn,
                self.ssl,
                server_side=True,
                ssl_handshake_timeout=seconds,
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
        if transport is None or conn.closing:  # the server closed meanwhile
            if transport is not None:
                transport.abort()
            return
        conn.handshake_done(transport)
        self._hub.greet(conn)
        conn.replay_early()  # what the peer said before we took over the TLS transport

    # -- timers -----------------------------------------------------------------------------

    async def _sweep(self) -> None:
        """Heartbeats, idle and authentication timeouts, checked by the hub."""
        interval = self.config.sweep_interval
        while True:
            await asyncio.sleep(interval)
            self._hub.tick()


@contextlib.contextmanager
def _moderating() -> Iterator[None]:
    """The core's refusals as the Python API raises them: KeyError for whom nobody knows,
    ValueError for the rest."""
    try:
        yield
    except UnknownTarget as exc:
        raise KeyError(str(exc)) from None
    except InvalidFrame as exc:
        raise ValueError(str(exc)) from None


class _LoopClock:
    """The hub's clock: the event loop the server was started in.

    A server is made outside any loop and started inside one; until then the running loop
    (if any) answers.
    """

    __slots__ = ("loop",)

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def time(self) -> float:
        return (self.loop or asyncio.get_running_loop()).time()

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any
    ) -> asyncio.TimerHandle:
        return (self.loop or asyncio.get_running_loop()).call_later(delay, callback, *args)

    def call_soon(self, callback: Callable[..., object], *args: Any) -> asyncio.Handle:
        return (self.loop or asyncio.get_running_loop()).call_soon(callback, *args)
