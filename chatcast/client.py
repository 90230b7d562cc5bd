"""The chat client: :class:`BroadcastClient`.

Speaks the JSON mode of the protocol (``docs/protocol.md``) over asyncio streams. A
background task reads from the server while your code sends, so sending and receiving never
wait for each other (the lab's clients could only do one at a time).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import ssl as ssl_module
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from ._core import commands as proto
from ._core.addresses import Address, format_address, parse_addresses
from ._core.client import ClientProtocol, RequestKind, is_final
from ._core.framing import DEFAULT_MAX_LINE_BYTES
from .exceptions import (
    AuthenticationError,
    ChannelClosed,
    ChatcastError,
    ConnectionClosed,
    InvalidFrame,
    Refused,
)
from .message import INFO, MESSAGE, PRIVATE, Message

__all__ = ["BroadcastClient", "ClientStatistics"]

log = logging.getLogger("chatcast.client")


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    """A snapshot of a client's counters (:meth:`BroadcastClient.statistics`).

    Attributes:
        connected: Whether a connection is up now.
        sent: Messages sent.
        received: Messages handed to :meth:`BroadcastClient.receive` (any kind).
        errors: Error frames received from the server.
        reconnects: Successful reconnections.
        failovers: Reconnections that landed on another server than the one lost (with
            ``servers``).
        duplicates: Messages dropped because their id had been received already (a resume
            that overlapped what came live).
    """

    connected: bool
    sent: int
    received: int
    errors: int
    reconnects: int
    failovers: int = 0
    duplicates: int = 0


class BroadcastClient:
    """A client of :class:`~chatcast.server.BroadcastServer`.

    Args:
        host: The server's address (default ``127.0.0.1``).
        port: The server's port (default 8080). With ``servers`` and neither ``host`` nor
            ``port``, the first of ``servers`` is the first tried.
        name: The name to ask for; ``None`` lets the server pick (``guestN``).
        room: The room to join; ``None`` for the server's default room.
        token: The server's token, when it requires one. The library never reads the
            environment: to use ``CHATCAST_TOKEN`` as the command line does, pass
            ``token=os.environ.get("CHATCAST_TOKEN")``.
        op_token: The server's operator token: presented in the hello, it makes this
            client an operator (:attr:`operator`); a wrong one is refused like a wrong token.
        ssl: ``True`` for TLS with the system's trust store and hostname checks, or an
            :class:`ssl.SSLContext` (e.g. one that trusts a private CA), or ``None``.
        server_hostname: The name to check every server's certificate against, when it is
            not the host of its address (``host``, or that of the one of ``servers``).
        reconnect: Reconnect after a lost connection, with exponential backoff and jitter,
            rejoining with the same name and room. Off by default. While disconnected,
            :meth:`send` raises :class:`ConnectionClosed` (nothing is queued: delivery is at
            most once) and :meth:`receive` waits; an ``"info"`` message tells when the
            connection was lost and when it is back.
        reconnect_delay: First backoff delay, in seconds.
        reconnect_max_delay: Largest backoff delay, in seconds.
        connect_timeout: Seconds to connect and complete the hello.
        max_line_bytes: Largest frame accepted from the server (and sent to it).
        queue_size: Messages held for :meth:`receive`; when full, the client stops reading
            from the socket (TCP backpressure) rather than grow.
        ack_timeout: Seconds :meth:`send` waits for the server to accept a message.
        servers: More servers to fail over to, after ``host:port``: each ``"host:port"``,
            ``"[ipv6]:port"`` or ``(host, port)``. :meth:`connect` tries them in order until
            one answers; with ``reconnect=True`` a lost connection moves on to the next
            one at once (the server just lost comes last, after the backoff delay, so a dead
            server never delays a live one by a backoff) and resumes its session there.
            :attr:`server_address` says where it is connected.

    With ``reconnect=True`` the client resumes its session after a lost connection: the
    server gives its name back at once (closing a ghost connection that still held it) and
    replays every room and private message missed meanwhile, exactly once and in order
    (marked ``history``), or a ``"gap"`` message saying how many are gone for good. A server
    that does not know the session (another server outside a cluster, or the session
    expired) starts a new one: a ``"gap"`` message without a count says messages may have
    been missed.

    Raises:
        ValueError: An argument is out of range or an invalid name, or an address of
            ``servers`` is invalid or listed twice.
        TypeError: ``servers`` is one string, or holds something that is not an address.
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        name: str | None = None,
        room: str | None = None,
        token: str | None = None,
        op_token: str | None = None,
        ssl: ssl_module.SSLContext | bool | None = None,
        server_hostname: str | None = None,
        reconnect: bool = False,
        reconnect_delay: float = 0.5,
        reconnect_max_delay: float = 30.0,
        connect_timeout: float = 10.0,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        queue_size: int = 1024,
        ack_timeout: float = 10.0,
        servers: Sequence[str | tuple[str, int]] | None = None,
    ) -> None:
        if host is None and port is None and servers:
            self._addresses = parse_addresses(None, servers)
        else:
            host = "127.0.0.1" if host is None else host
            port = 8080 if port is None else port
            if not 0 < port <= 65535:
                raise ValueError(f"port must be in 1..65535, got {port}")
            self._addresses = parse_addresses((host, port), servers)
        self._index = 0  # the address of the connection (or the last attempt)
        host, port = self._addresses[0]
        for label, value in (("name", name), ("room", room)):
            if value is not None:
                try:
                    proto.check_name(value, label)
                except InvalidFrame as exc:
                    raise ValueError(str(exc)) from None
        if not 0 < reconnect_delay <= reconnect_max_delay:
            raise ValueError(
                "need 0 < reconnect_delay <= reconnect_max_delay, got "
                f"{reconnect_delay} and {reconnect_max_delay}"
            )
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be > 0, got {connect_timeout}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not ack_timeout > 0:
            raise ValueError(f"ack_timeout must be > 0, got {ack_timeout}")
        self.ack_timeout = ack_timeout
        self.host = host
        self.port = port
        self.ssl = ssl_module.create_default_context() if ssl is True else ssl or None
        self.server_hostname = server_hostname
        self.reconnect = reconnect
        self.reconnect_delay = reconnect_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.connect_timeout = connect_timeout
        self.max_line_bytes = max_line_bytes
        # The protocol's state (name, room, welcome, requests, heartbeat) lives in the core;
        # this shell owns the streams, the tasks and the queue of received messages.
        self._protocol = ClientProtocol(
            name=name,
            room=room,
            token=token,
            max_line_bytes=max_line_bytes,
            tls=self.ssl is not None,
            op_token=op_token,
        )
        # Received messages, bounded by _deliver/_put; the end of the stream comes after them.
        self._inbox: collections.deque[Message] = collections.deque()
        self._queue_size = queue_size
        self._readable = asyncio.Event()  # set when the inbox has messages or the end
        self._space = asyncio.Event()  # set when a full inbox is down to half
        self._reading_paused = False
        self._ending: ChatcastError | None = None
        self._early: list[Message] = []  # read with the welcome, delivered by the reader
        self._requests: dict[int, asyncio.Future[Any]] = {}
        # By ref: what waits for the server's answer (an ack, a history answer), and for an
        # ack the text and recipient of the message, to give back the accepted Message.
        self._awaiting: dict[str, tuple[asyncio.Future[Any], str | None, str | None]] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._heard = 0.0  # loop time of the last read from the server
        self._silent = False  # the heartbeat gave up on the server
        self._watchdog: asyncio.Handle | None = None
        self._task: asyncio.Task[None] | None = None
        self._sent = 0
        self._received = 0
        self._reconnects = 0
        self._failovers = 0

    # -- what the protocol knows --------------------------------------------------------------

    @property
    def name(self) -> str | None:
        """My name: the one asked for, then the one the server confirmed (welcome, nick)."""
        return self._protocol.name

    @name.setter
    def name(self, value: str | None) -> None:
        self._protocol.name = value

    @property
    def room(self) -> str | None:
        """My room: the one asked for, then the one the server confirmed."""
        return self._protocol.room

    @room.setter
    def room(self, value: str | None) -> None:
        self._protocol.room = value

    @property
    def token(self) -> str | None:
        """The token the hello presents."""
        return self._protocol.token

    @token.setter
    def token(self, value: str | None) -> None:
        self._protocol.token = value

    @property
    def welcome(self) -> str | None:
        """The server's welcome text, once connected."""
        return self._protocol.welcome

    @welcome.setter
    def welcome(self, value: str | None) -> None:
        self._protocol.welcome = value

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a connection to the server is up."""
        return self._writer is not None and not self._writer.is_closing()

    @property
    def servers(self) -> tuple[Address, ...]:
        """Every server's ``(host, port)``, in the order tried: ``host:port``, then ``servers``."""
        return tuple(self._addresses)

    @property
    def server_address(self) -> Address:
        """The ``(host, port)`` of the server connected to now (while reconnecting: the one
        last tried)."""
        return self._addresses[self._index]

    async def connect(self) -> None:
        """Connect, say hello, and start receiving.

        Raises:
            ConnectionClosed: The server refused the hello (name taken, server full...) or
                closed the connection; ``reason`` says why. With ``servers``: the first
                refusal, once every server failed.
            AuthenticationError: The server refused the token (no other server is tried).
            OSError: The connection could not be made (refused, unreachable, TLS failure);
                with ``servers``, to none of them: the message lists each one's error.
            TimeoutError: No welcome within ``connect_timeout`` (one server only).
        """
        if self._task is not None:
            raise RuntimeError("already connected")
        await self._open_any()
        self._task = asyncio.create_task(self._run(), name="chatcast-client-reader")

    async def __aenter__(self) -> BroadcastClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self, reason: str = "") -> None:
        """Say goodbye (with ``reason``, shown to the room) and close the connection. Idempotent.

        Afterwards :meth:`send` and :meth:`receive` raise :class:`ChannelClosed` (messages
        already received are still returned first).
        """
        if self._protocol.closed:
            return
        goodbye = self._protocol.close(reason)
        writer = self._writer
        if writer is not None and not writer.is_closing():
            with contextlib.suppress(OSError):
                writer.write(goodbye)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop_connection()
        self._end(ChannelClosed("client closed"))

    # -- sending ----------------------------------------------------------------------------

    async def send(self, text: str, *, to: str | None = None) -> Message:
        """Send ``text`` to my room, or privately to the client named ``to``, and wait until
        the server has accepted it.

        The server stamps the sender name and gives the message its id. To send many
        messages without a round trip each, use :meth:`post` and await the results later.

        Returns:
            The message as accepted: its ``id``, my name, the room
            (or ``to``).

        Raises:
            Refused: The server refused it (flood control, an unknown recipient, too long,
                not allowed), with its reason.
            TimeoutError: No answer within ``ack_timeout`` seconds.
            ValueError: ``text`` is empty or holds control characters other than tab and
                newline.
            MessageTooLong: The encoded frame is over ``max_line_bytes``; nothing was sent.
            ConnectionClosed: Not connected (also while reconnecting), or the connection
                ended before the answer: the message may or may not have been delivered.
            ChannelClosed: :meth:`close` was called.
        """
        accepted = await self.post(text, to=to)
        async with asyncio.timeout(self.ack_timeout):
            return await accepted

    async def post(self, text: str, *, to: str | None = None) -> asyncio.Future[Message]:
        """Send ``text`` like :meth:`send`, but return as soon as it is written: the
        returned future completes when the server accepts the message (or raises as
        :meth:`send` does). Many posts in a row are pipelined, one write each.

        Raises:
            ValueError, MessageTooLong, ConnectionClosed, ChannelClosed: As for :meth:`send`,
                before anything is sent.
        """
        protocol = self._protocol
        ref = protocol.new_ref()
        data = protocol.message(text, to=to, ref=ref)
        writer = self._writable()
        accepted: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._awaiting[ref] = (accepted, text, to)
        self._write(writer, data)
        self._sent += 1
        await self._drain(writer)
        return accepted

    async def history(
        self,
        room: str | None = None,
        *,
        limit: int = 50,
        before: int | None = None,
        after: int | None = None,
    ) -> list[Message]:
        """Return messages the server keeps for ``room`` (default: my room), oldest first,
        each marked ``history``: the latest ``limit``, or those before or after an id.

        Args:
            room: The room.
            limit: At most this many (1 to 500).
            before: Only messages with a smaller id.
            after: Only messages with a larger id.

        Raises:
            Refused: The server refused the request (an id it has not given yet, a bad room).
            TimeoutError: No answer within ``ack_timeout`` seconds.
            ValueError: ``limit`` out of range, a negative id, an invalid room name.
            ConnectionClosed: As for :meth:`send`.
            ChannelClosed: As for :meth:`send`.
        """
        protocol = self._protocol
        ref = protocol.new_ref()
        data = protocol.history(ref, room=room, limit=limit, before=before, after=after)
        writer = self._writable()
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._awaiting[ref] = (answer, None, None)
        try:
            self._write(writer, data)
            await self._drain(writer)
            async with asyncio.timeout(self.ack_timeout):
                messages: list[Message] = await answer
            return messages
        finally:
            self._awaiting.pop(ref, None)

    async def join(self, room: str) -> None:
        """Move to ``room``. The server confirms with a ``"join"`` message of my own.

        Raises:
            ValueError: Not a valid room name.
            ConnectionClosed: As for :meth:`send`.
            ChannelClosed: As for :meth:`send`.
        """
        await self._send_frame(self._protocol.join(room))
        self.room = room

    async def nick(self, name: str) -> None:
        """Ask to be called ``name``; :attr:`name` changes when the server confirms.

        A taken name gets an ``"error"`` message and the name stays as it was.

        Raises:
            ValueError: Not a valid name.
            ConnectionClosed: As for :meth:`send`.
            ChannelClosed: As for :meth:`send`.
        """
        await self._send_frame(self._protocol.nick(name))

    async def who(self, room: str | None = None) -> list[str]:
        """Return the names in ``room`` (default: my room), as the server sees them now.

        Wrap it in :func:`asyncio.timeout` to bound the wait; a lost connection ends it.

        Raises:
            ConnectionClosed: As for :meth:`send`, or if the connection ends before the
                answer.
            ChannelClosed: As for :meth:`send`.
            InvalidFrame: The server's answer is malformed (not a list of names).
        """
        names: list[str] = await self._request("who", self._protocol.who(room))
        return names

    async def rooms(self) -> dict[str, int]:
        """Return every room with members, and how many (see :meth:`who` for errors)."""
        rooms: dict[str, int] = await self._request("rooms", self._protocol.rooms())
        return rooms

    # -- moderation (#14): operators only, but op() and topic() -----------------------------

    @property
    def operator(self) -> bool:
        """Whether the server made this client an operator at its hello (``op_token``)."""
        return self._protocol.operator

    async def op(self, token: str) -> None:
        """Present the operator token; an ``"info"`` message confirms, an ``"error"``
        refuses (each failure counts against flood control; the third disconnects)."""
        await self._send_frame(self._protocol.moderation("op", token=token))

    async def kick(self, name: str, reason: str = "") -> None:
        """Ask the server to disconnect ``name`` (an ``"error"`` if I am not an operator)."""
        await self._send_frame(self._protocol.moderation("kick", name=name, reason=reason or None))

    async def ban(
        self,
        name: str | None = None,
        *,
        address: str | None = None,
        duration: float | None = None,
        reason: str = "",
    ) -> None:
        """Ask the server to ban ``name`` or ``address`` for ``duration`` seconds (``None``:
        until lifted); an ``"info"`` message confirms."""
        frame = self._protocol.moderation(
            "ban", name=name, address=address, duration=duration, reason=reason or None
        )
        await self._send_frame(frame)

    async def unban(self, name: str | None = None, *, address: str | None = None) -> None:
        """Ask the server to lift the ban on ``name`` or ``address``."""
        await self._send_frame(self._protocol.moderation("unban", name=name, address=address))

    async def list_bans(self) -> None:
        """Ask for the bans: they arrive as an ``"info"`` message, one ban per line."""
        await self._send_frame(self._protocol.moderation("bans"))

    async def mute(self, name: str, room: str | None = None, reason: str = "") -> None:
        """Ask the server to stop ``name`` speaking in ``room`` (default: its room)."""
        frame = self._protocol.moderation("mute", name=name, room=room, reason=reason or None)
        await self._send_frame(frame)

    async def unmute(self, name: str, room: str | None = None) -> None:
        """Ask the server to let ``name`` speak in ``room`` (default: its room) again."""
        await self._send_frame(self._protocol.moderation("unmute", name=name, room=room))

    async def set_topic(self, room: str, text: str) -> None:
        """Ask the server to set the topic of ``room`` (``""`` clears it); the room's members
        (me too, if I am in it) get a ``"topic"`` message."""
        await self._send_frame(self._protocol.moderation("topic", room=room, text=text))

    async def ask_topic(self, room: str | None = None) -> None:
        """Ask for the topic of ``room`` (default: mine): it arrives as a ``"topic"`` message
        (an ``"info"`` one if there is none)."""
        await self._send_frame(self._protocol.moderation("topic", room=room))

    async def _request(self, kind: RequestKind, data: bytes) -> Any:
        writer = self._writable()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._write(writer, data)
        # The server answers requests in the order it reads them: queue this one exactly
        # when its frame is on the wire (not before a send that may fail).
        ticket = self._protocol.expect_answer(kind)
        self._requests[ticket] = future
        try:
            await self._drain(writer)
            return await future
        finally:
            # A cancelled request keeps its place in the protocol's queue: the server
            # answers it all the same, and that answer must not go to the next request.
            if not future.done():
                future.cancel()
            if future.cancelled():
                self._requests.pop(ticket, None)
                self._protocol.cancel(ticket)

    async def _send_frame(self, data: bytes) -> None:
        writer = self._writable()
        self._write(writer, data)
        await self._drain(writer)

    def _writable(self) -> asyncio.StreamWriter:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise ConnectionClosed("not connected" + (" (reconnecting)" if self.reconnect else ""))
        return writer

    @staticmethod
    def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
        try:
            writer.write(data)
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(f"connection lost: {exc}") from exc

    @staticmethod
    async def _drain(writer: asyncio.StreamWriter) -> None:
        """Wait while this connection's send buffer is full."""
        try:
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(f"connection lost: {exc}") from exc

    # -- receiving --------------------------------------------------------------------------

    async def receive(self) -> Message:
        """Return the next message from the server.

        Messages of every kind arrive here in order: ``"message"``, ``"private"``,
        ``"join"``, ``"leave"``, ``"nick"``, ``"announcement"``, ``"error"``, ``"info"``,
        ``"closing"``. Cancelling a waiting ``receive()`` loses no message.

        Raises:
            ConnectionClosed: The connection ended (and is not being re-established);
                ``reason`` is what the server said, or what the network did.
            ChannelClosed: :meth:`close` was called and every message before it was read.
        """
        inbox = self._inbox
        while not inbox:
            if self._ending is not None:
                raise self._ending  # every later receive() raises the same
            self._readable.clear()
            await self._readable.wait()  # nothing is taken until it returns: cancel-safe
        message = inbox.popleft()
        if self._reading_paused and len(inbox) <= self._queue_size // 2:
            self._reading_paused = False
            self._space.set()
        return message

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        """Yield messages until the connection ends; a server shutdown or :meth:`close`
        ends the iteration quietly, an abnormal end raises :class:`ConnectionClosed`."""
        while True:
            try:
                message = await self.receive()
            except ChannelClosed:
                return
            except ConnectionClosed as exc:
                if exc.reason.startswith("closed by server:"):
                    return
                raise
            yield message

    def statistics(self) -> ClientStatistics:
        """Return a snapshot of the counters."""
        return ClientStatistics(
            connected=self.connected,
            sent=self._sent,
            received=self._received,
            errors=self._protocol.errors,
            reconnects=self._reconnects,
            failovers=self._failovers,
            duplicates=self._protocol.duplicates,
        )

    # -- the connection ---------------------------------------------------------------------

    async def _open_any(self) -> None:
        """Connect to the first server that answers, in order; raise if none does."""
        if len(self._addresses) == 1:
            await self._open(0)
            return
        failures: list[tuple[Address, Exception]] = []
        for index, address in enumerate(self._addresses):
            try:
                await self._open(index)
            except (AuthenticationError, ChannelClosed):
                raise  # the same token everywhere; closed is closed
            except ConnectionClosed as exc:
                if is_final(exc.reason):  # banned: by the cluster, as far as we know
                    raise
                failures.append((address, exc))
            except (OSError, ChatcastError) as exc:  # OSError: TimeoutError and SSLError too
                failures.append((address, exc))
            else:
                return
            log.info("could not connect to %s: %s", format_address(address), failures[-1][1])
        for _, failure in failures:
            if isinstance(failure, ChatcastError):
                raise failure  # a server's own words say more than another's silence
        detail = "; ".join(f"{format_address(where)}: {error}" for where, error in failures)
        raise OSError(f"could not connect to any server: {detail}") from failures[-1][1]

    async def _open(self, index: int) -> None:
        """Connect to the server at ``index`` and complete the hello, or raise (with a reason
        a user can act on)."""
        self._index = index
        address = self._addresses[index]
        where = format_address(address)
        try:
            await self._connect_and_hello(address)
        except TimeoutError:
            hint = "TLS handshake or welcome" if self.ssl else "welcome"
            raise TimeoutError(
                f"no {hint} from {where} within {self.connect_timeout:g} s "
                "(is it a chatcast server, and does it speak TLS on that port only if you do?)"
            ) from None
        except ssl_module.SSLCertVerificationError:
            raise  # its own message says what is wrong with the certificate
        except ssl_module.SSLError as exc:
            raise ssl_module.SSLError(
                exc.errno,
                f"TLS with {where} failed: {exc.reason or exc} (does the server speak TLS "
                "on this port?)",
            ) from exc

    async def _connect_and_hello(self, address: Address) -> None:
        protocol = self._protocol
        host, port = address
        async with asyncio.timeout(self.connect_timeout):
            reader, writer = await asyncio.open_connection(
                host,
                port,
                ssl=self.ssl,
                # None: each address's own host is checked against its certificate.
                server_hostname=self.server_hostname if self.ssl else None,
                ssl_handshake_timeout=self.connect_timeout if self.ssl else None,
            )
            try:
                writer.write(protocol.connect())
                early: list[Message] = []
                while not protocol.open:
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionClosed(protocol.receive_eof())
                    early += protocol.receive_data(data)  # raises if refused
            except BaseException:
                protocol.connection_lost()
                writer.close()
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(1):
                        await writer.wait_closed()
                raise
        self._early = early  # read with the welcome: delivered first by the reader
        self._reader, self._writer = reader, writer
        log.debug("connected to %s as %s in %s", format_address(address), self.name, self.room)

    async def _run(self) -> None:
        """Read until the end; reconnect when asked to."""
        attempt = 0
        count = len(self._addresses)
        while True:
            reason = await self._read_loop()
            await self._drop_connection()
            if self._protocol.closed:
                return
            if not self.reconnect or is_final(reason):
                self._end(ConnectionClosed(reason))
                return
            await self._put(Message(f"disconnected: {reason}; reconnecting", kind=INFO))
            lost = self._index
            step = 0
            while True:
                # The rotation goes on from the server just lost, which comes last: the
                # others are tried at once, and the backoff comes once per round, before
                # the lost one (so one server alone waits before every attempt, as ever).
                step += 1
                index = (lost + step) % count
                if index == lost:
                    delay = min(self.reconnect_max_delay, self.reconnect_delay * 2**attempt)
                    attempt += 1
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jittered backoff
                where = format_address(self._addresses[index])
                try:
                    await self._open(index)
                except AuthenticationError as exc:
                    self._end(exc)
                    return
                except ConnectionClosed as exc:
                    if not is_final(exc.reason):  # banned (#14): retrying cannot help
                        log.info("reconnect to %s failed: %s", where, exc)
                        continue
                    self._end(exc)
                    return
                except (OSError, TimeoutError, ChatcastError) as exc:
                    log.info("reconnect to %s failed: %s", where, exc)
                    continue
                attempt = 0
                self._reconnects += 1
                if index != lost:
                    self._failovers += 1
                    log.info("failed over to %s", where)
                # With several servers, say which one: the user sees the switch.
                text = "reconnected" if count == 1 else f"reconnected to {where}"
                await self._put(Message(text, kind=INFO))
                break

    async def _read_loop(self) -> str:
        """Feed the protocol until the connection ends; return why it ended."""
        reader, writer, protocol = self._reader, self._writer, self._protocol
        assert reader is not None
        assert writer is not None
        loop = asyncio.get_running_loop()
        now = loop.time
        self._heard = now()
        self._silent = False
        # The heartbeat is one timer re-armed from the time of the last read, not a timeout
        # around every read: reads stay cheap when the server is busy.
        self._watchdog = loop.call_later(protocol.heartbeat, self._check_silence, writer)
        try:
            early, self._early = self._early, []
            self._flush(writer)
            await self._deliver(early)
            while True:
                try:
                    # Whole reads, not a readline per frame: one wake-up for every frame
                    # that has arrived, decoded in one pass.
                    data = await reader.read(65536)
                except (ConnectionError, OSError) as exc:
                    return f"connection lost: {exc}"
                if not data:
                    if self._silent:
                        return "server stopped answering (heartbeat timeout)"
                    return protocol.receive_eof()
                self._heard = now()
                messages = protocol.receive_data(data)
                self._flush(writer)
                inbox = self._inbox
                if len(inbox) + len(messages) <= self._queue_size:
                    # The usual case, without a wait: the whole read into the inbox at once.
                    if messages:
                        inbox.extend(messages)
                        self._received += len(messages)
                        self._readable.set()
                else:
                    await self._deliver(messages)
                if protocol.refused:
                    return protocol.end_reason
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None

    def _flush(self, writer: asyncio.StreamWriter) -> None:
        """Write what the protocol wants sent, and hand out the answers it received."""
        data = self._protocol.data_to_send()
        if data:
            with contextlib.suppress(OSError):
                writer.write(data)
        for answer in self._protocol.answers_received():
            future = self._requests.pop(answer.ticket, None)
            if future is None or future.done():
                continue
            if isinstance(answer.value, InvalidFrame):
                future.set_exception(answer.value)
            else:
                future.set_result(answer.value)
        replies = self._protocol.replies_received()
        if replies:
            protocol = self._protocol
            for reply in replies:
                waiting = self._awaiting.pop(reply.ref, None)
                if waiting is None or waiting[0].done():
                    continue
                future, text, to = waiting
                value = reply.value
                if isinstance(value, Refused):
                    future.set_exception(value)
                elif isinstance(value, int) and text is not None:
                    kind, room = (PRIVATE, None) if to is not None else (MESSAGE, protocol.room)
                    future.set_result(
                        Message(text, protocol.name, kind, room, None, to, None, value)
                    )
                else:
                    future.set_result(value)

    def _check_silence(self, writer: asyncio.StreamWriter, again: bool = False) -> None:
        """The heartbeat timer: ping a silent server, give up on one that does not answer."""
        if self._writer is not writer:
            return
        loop = asyncio.get_running_loop()
        if self._reading_paused:
            # Not reading (the application is behind): the server's silence proves nothing.
            self._heard = loop.time()
        delay = self._protocol.check_silence(loop.time() - self._heard)
        self._flush(writer)
        if delay is not None:
            self._watchdog = loop.call_later(delay, self._check_silence, writer)
        elif not again:
            # After a stall the loop runs due timers in the same pass as the reads that were
            # waiting, before the reader task has seen them: look again once it has.
            self._watchdog = loop.call_soon(self._check_silence, writer, True)
        else:
            self._silent = True
            writer.transport.abort()  # the reader sees the end and reports the silence

    async def _deliver(self, messages: list[Message]) -> None:
        """Put ``messages`` in the inbox; while it is full, stop reading (TCP backpressure)."""
        inbox, size = self._inbox, self._queue_size
        start = 0
        while start < len(messages):
            room = size - len(inbox)
            if room <= 0:
                # Until the application has taken half: one wake-up for many messages, not
                # a switch between reader and application per message.
                self._reading_paused = True
                self._space.clear()
                await self._space.wait()
                continue
            batch = messages[start : start + room]
            inbox.extend(batch)
            start += len(batch)
            self._received += len(batch)
            self._readable.set()

    async def _put(self, message: Message) -> None:
        await self._deliver([message])

    async def _drop_connection(self) -> None:
        writer = self._writer
        self._writer = self._reader = None
        for ticket in self._protocol.connection_lost():
            future = self._requests.pop(ticket, None)
            if future is not None and not future.done():
                future.set_exception(ConnectionClosed("connection closed"))
                future.exception()  # retrieved: nobody may be waiting any more
        self._requests.clear()  # what is left was given up on by its caller
        awaiting, self._awaiting = self._awaiting, {}
        for future, _, _ in awaiting.values():
            if not future.done():
                future.set_exception(ConnectionClosed("connection lost before the server answered"))
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1):  # wait_closed can hang: cpython#83939
                    await writer.wait_closed()

    def _end(self, error: ChatcastError) -> None:
        if self._ending is None:
            self._ending = error
            self._readable.set()
