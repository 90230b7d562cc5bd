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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

from ._core import commands as proto
from ._core.framing import DEFAULT_MAX_LINE_BYTES, LineDecoder
from .exceptions import (
    AuthenticationError,
    ChannelClosed,
    ChatcastError,
    ConnectionClosed,
    InvalidFrame,
    MessageTooLong,
    ProtocolError,
)
from .message import (
    CLOSING,
    ERROR,
    INFO,
    JOIN,
    NICK,
    Message,
    decode_message,
    dump_frame,
    parse_frame,
)

__all__ = ["BroadcastClient", "ClientStatistics"]

log = logging.getLogger("chatcast.client")

_AUTH_REASONS: Final = (
    "authentication failed",
    "authentication required",
    "authentication timeout",
)


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    """A snapshot of a client's counters (:meth:`BroadcastClient.statistics`).

    Attributes:
        connected: Whether a connection is up now.
        sent: Messages sent.
        received: Messages handed to :meth:`BroadcastClient.receive` (any kind).
        errors: Error frames received from the server.
        reconnects: Successful reconnections.
    """

    connected: bool
    sent: int
    received: int
    errors: int
    reconnects: int


@dataclass(frozen=True, slots=True)
class _End:
    """Queue sentinel: the stream of messages is over, for this reason."""

    error: ChatcastError


class BroadcastClient:
    """A client of :class:`~chatcast.server.BroadcastServer`.

    Args:
        host: The server's address.
        port: The server's port.
        name: The name to ask for; ``None`` lets the server pick (``guestN``).
        room: The room to join; ``None`` for the server's default room.
        token: The server's token, when it requires one.
        ssl: ``True`` for TLS with the system's trust store and hostname checks, or an
            :class:`ssl.SSLContext` (e.g. one that trusts a private CA), or ``None``.
        server_hostname: The name to check the server's certificate against, when it is
            not ``host``.
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

    Raises:
        ValueError: An argument is out of range or an invalid name.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        name: str | None = None,
        room: str | None = None,
        token: str | None = None,
        ssl: ssl_module.SSLContext | bool | None = None,
        server_hostname: str | None = None,
        reconnect: bool = False,
        reconnect_delay: float = 0.5,
        reconnect_max_delay: float = 30.0,
        connect_timeout: float = 10.0,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        queue_size: int = 1024,
    ) -> None:
        if not 0 < port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {port}")
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
        self.host = host
        self.port = port
        self.name = name
        self.room = room
        self.token = token
        self.ssl = ssl_module.create_default_context() if ssl is True else ssl or None
        self.server_hostname = server_hostname
        self.reconnect = reconnect
        self.reconnect_delay = reconnect_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.connect_timeout = connect_timeout
        self.max_line_bytes = max_line_bytes
        #: The server's welcome text, once connected.
        self.welcome: str | None = None
        self._heartbeat = 30.0
        # Unbounded queue, bounded by _put: the end-of-stream sentinel must always fit.
        self._queue: asyncio.Queue[Message | _End] = asyncio.Queue()
        self._queue_size = queue_size
        self._space = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = LineDecoder(max_line_bytes)
        self._leftover: list[str | ProtocolError] = []
        self._pending: collections.deque[tuple[str, asyncio.Future[Any]]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._ended = False
        self._sent = 0
        self._received = 0
        self._errors = 0
        self._reconnects = 0

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a connection to the server is up."""
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self) -> None:
        """Connect, say hello, and start receiving.

        Raises:
            ConnectionClosed: The server refused the hello (name taken, server full...) or
                closed the connection; ``reason`` says why.
            AuthenticationError: The server refused the token.
            OSError: The connection could not be made (refused, unreachable, TLS failure).
            TimeoutError: No welcome within ``connect_timeout``.
        """
        if self._task is not None:
            raise RuntimeError("already connected")
        await self._open()
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
        if self._closed:
            return
        self._closed = True
        writer = self._writer
        if writer is not None and not writer.is_closing():
            with contextlib.suppress(OSError):
                writer.write(
                    dump_frame({"type": "quit", "reason": reason} if reason else {"type": "quit"})
                )
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop_connection()
        self._end(ChannelClosed("client closed"))

    # -- sending ----------------------------------------------------------------------------

    async def send(self, text: str, *, to: str | None = None) -> None:
        """Send ``text`` to my room, or privately to the client named ``to``.

        Returns once the text is handed to the operating system, waiting only when this
        connection's own send buffer is full. The server stamps the sender name.

        Raises:
            ValueError: ``text`` is empty or holds control characters other than tab and
                newline.
            MessageTooLong: The encoded frame is over ``max_line_bytes``; nothing was sent.
            ConnectionClosed: Not connected (also while reconnecting).
            ChannelClosed: :meth:`close` was called.
        """
        try:
            proto.check_text(text)
            if to is not None:
                proto.check_name(to, "recipient")
        except InvalidFrame as exc:
            raise ValueError(str(exc)) from None
        frame: dict[str, Any] = {"type": "message", "text": text}
        if to is not None:
            frame["to"] = to
        await self._send_frame(frame)
        self._sent += 1

    async def join(self, room: str) -> None:
        """Move to ``room``. The server confirms with a ``"join"`` message of my own.

        Raises:
            ValueError: Not a valid room name.
            ConnectionClosed / ChannelClosed: As for :meth:`send`.
        """
        try:
            proto.check_name(room, "room")
        except InvalidFrame as exc:
            raise ValueError(str(exc)) from None
        await self._send_frame({"type": "join", "room": room})
        self.room = room

    async def nick(self, name: str) -> None:
        """Ask to be called ``name``; :attr:`name` changes when the server confirms.

        A taken name gets an ``"error"`` message and the name stays as it was.

        Raises:
            ValueError: Not a valid name.
            ConnectionClosed / ChannelClosed: As for :meth:`send`.
        """
        try:
            proto.check_name(name)
        except InvalidFrame as exc:
            raise ValueError(str(exc)) from None
        await self._send_frame({"type": "nick", "name": name})

    async def who(self, room: str | None = None) -> list[str]:
        """Return the names in ``room`` (default: my room), as the server sees them now.

        Wrap it in :func:`asyncio.timeout` to bound the wait; a lost connection ends it.

        Raises:
            ConnectionClosed / ChannelClosed: As for :meth:`send`, or if the connection
                ends before the answer.
        """
        frame: dict[str, Any] = {"type": "who"}
        if room is not None:
            frame["room"] = room
        names: list[str] = await self._request("who", frame)
        return names

    async def rooms(self) -> dict[str, int]:
        """Return every room with members, and how many (see :meth:`who` for errors)."""
        rooms: dict[str, int] = await self._request("rooms", {"type": "rooms"})
        return rooms

    async def _request(self, kind: str, frame: dict[str, Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            await self._send_frame(frame, pending=(kind, future))
            return await future
        finally:
            # A cancelled request keeps its place in the queue: the server answers it all the
            # same, and that answer must not go to the next request.
            if not future.done():
                future.cancel()

    async def _send_frame(
        self, frame: dict[str, Any], *, pending: tuple[str, asyncio.Future[Any]] | None = None
    ) -> None:
        """Write ``frame``; ``pending`` waits for the server's answer once it is written."""
        if self._closed:
            raise ChannelClosed("client is closed")
        data = dump_frame(frame)
        if len(data) - 1 > self.max_line_bytes:
            raise MessageTooLong(len(data) - 1, self.max_line_bytes)
        writer = self._writer
        if writer is None or writer.is_closing():
            raise ConnectionClosed("not connected" + (" (reconnecting)" if self.reconnect else ""))
        try:
            writer.write(data)
            if pending is not None:
                # The server answers requests in the order it reads them: queue this one
                # exactly when its frame is on the wire (not before a send that may fail).
                self._pending.append(pending)
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
        item = await self._queue.get()
        self._space.set()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # every later receive() raises the same
            raise item.error
        return item

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
            errors=self._errors,
            reconnects=self._reconnects,
        )

    # -- the connection ---------------------------------------------------------------------

    async def _open(self) -> None:
        """Connect and complete the hello, or raise (with a reason a user can act on)."""
        where = f"{self.host}:{self.port}"
        try:
            await self._connect_and_hello()
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

    async def _connect_and_hello(self) -> None:
        async with asyncio.timeout(self.connect_timeout):
            reader, writer = await asyncio.open_connection(
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.server_hostname if self.ssl else None,
                ssl_handshake_timeout=self.connect_timeout if self.ssl else None,
            )
            self._decoder = LineDecoder(self.max_line_bytes)
            try:
                hello: dict[str, Any] = {"type": "hello", "version": proto.PROTOCOL_VERSION}
                if self.name is not None:
                    hello["name"] = self.name
                if self.room is not None:
                    hello["room"] = self.room
                if self.token is not None:
                    hello["token"] = self.token
                writer.write(dump_frame(hello))
                await self._await_welcome(reader)
            except BaseException:
                writer.close()
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(1):
                        await writer.wait_closed()
                raise
        self._reader, self._writer = reader, writer

    async def _await_welcome(self, reader: asyncio.StreamReader) -> None:
        text_reason: str | None = None
        while True:
            data = await reader.read(65536)
            if not data:
                if text_reason is None and self.welcome is None and not self.ssl:
                    # Not a word: a TLS port drops a plain hello like this.
                    text_reason = "server closed the connection at once (does it expect TLS?)"
                raise ConnectionClosed(text_reason or "server closed the connection")
            frames = self._decoder.feed(data)
            for index, frame in enumerate(frames):
                if isinstance(frame, ProtocolError):
                    raise ConnectionClosed(f"bad frame from server: {frame}")
                if not frame.startswith("{"):
                    # Text-mode lines sent before our hello was read: the banner, or a
                    # "! reason" when the server refuses us (e.g. full).
                    if frame.startswith("! "):
                        text_reason = frame[2:]
                    elif self.welcome is None:
                        self.welcome = frame
                    continue
                try:
                    obj = parse_frame(frame)
                except InvalidFrame:
                    continue
                if obj["type"] == "welcome":
                    self._welcomed(obj)
                    self._leftover = frames[index + 1 :]  # read with the welcome: keep them
                    return
                if obj["type"] == "error":
                    reason = str(obj.get("text", "refused"))
                    if reason in _AUTH_REASONS:
                        raise AuthenticationError(reason)
                    raise ConnectionClosed(reason)

    def _welcomed(self, obj: dict[str, Any]) -> None:
        self.name = str(obj.get("name") or self.name)
        self.room = str(obj.get("room") or self.room)
        if isinstance(obj.get("text"), str):
            self.welcome = obj["text"]
        heartbeat = obj.get("heartbeat")
        if isinstance(heartbeat, int | float) and heartbeat > 0:
            self._heartbeat = float(heartbeat)
        log.debug("connected to %s:%d as %s in %s", self.host, self.port, self.name, self.room)

    async def _run(self) -> None:
        """Read until the end; reconnect when asked to."""
        attempt = 0
        while True:
            reason = await self._read_loop()
            await self._drop_connection()
            if self._closed:
                return
            if not self.reconnect or reason in _AUTH_REASONS:
                self._end(ConnectionClosed(reason))
                return
            await self._put(Message(f"disconnected: {reason}; reconnecting", kind=INFO))
            while True:
                delay = min(self.reconnect_max_delay, self.reconnect_delay * 2**attempt)
                attempt += 1
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jittered backoff
                try:
                    await self._open()
                except AuthenticationError as exc:
                    self._end(exc)
                    return
                except (OSError, TimeoutError, ChatcastError) as exc:
                    log.info("reconnect to %s:%d failed: %s", self.host, self.port, exc)
                    continue
                attempt = 0
                self._reconnects += 1
                await self._put(Message("reconnected", kind=INFO))
                break

    async def _read_loop(self) -> str:
        """Handle frames until the connection ends; return why it ended."""
        reader, writer = self._reader, self._writer
        assert reader is not None
        assert writer is not None
        reason = "connection closed by server"
        silent = False
        frames, self._leftover = self._leftover, []
        for frame in frames:
            if isinstance(frame, str):
                ended = await self._handle(frame, writer)
                reason = ended or reason
        while True:
            try:
                async with asyncio.timeout(self._heartbeat * (0.5 if silent else 1.0)):
                    data = await reader.read(65536)
            except TimeoutError:
                if silent:
                    return "server stopped answering (heartbeat timeout)"
                silent = True  # nothing for a while: ask, and wait half as long again
                with contextlib.suppress(OSError):
                    writer.write(b'{"type":"ping"}\n')
                continue
            except (ConnectionError, OSError) as exc:
                return f"connection lost: {exc}"
            silent = False
            if not data:
                return reason
            for frame in self._decoder.feed(data):
                if isinstance(frame, ProtocolError):
                    log.warning("bad frame from server: %s", frame)
                    continue
                ended = await self._handle(frame, writer)
                if ended is not None:
                    reason = ended
            if reason in _AUTH_REASONS:
                return reason

    async def _handle(self, frame: str, writer: asyncio.StreamWriter) -> str | None:
        """Handle one frame; return the reason to report if the connection ends next."""
        try:
            obj = parse_frame(frame)
        except InvalidFrame:
            return None  # a stray text-mode line: not for us
        kind = obj["type"]
        if kind == "ping":
            writer.write(b'{"type":"pong"}\n')
            return None
        if kind in ("who", "rooms"):
            value = obj.get("names" if kind == "who" else "rooms")
            # One answer per request, in order: it belongs to the oldest request, answered
            # or not (a cancelled one is simply not told).
            if not self._pending or self._pending[0][0] != kind:
                log.warning("unexpected %r answer from server", kind)
                return None
            _, future = self._pending.popleft()
            if not future.done():
                future.set_result(value if value is not None else ([] if kind == "who" else {}))
            return None
        if kind in ("pong", "welcome"):
            if kind == "welcome":
                self._welcomed(obj)
            return None
        try:
            message = decode_message(obj)
        except InvalidFrame as exc:
            log.warning("unexpected frame from server: %s", exc)
            return None
        if message.kind == NICK and message.sender == self.name:
            self.name = message.text
        elif message.kind == JOIN and message.sender == self.name:
            self.room = message.room
        await self._put(message)
        if message.kind == CLOSING:
            return f"closed by server: {message.text}"
        if message.kind == ERROR:
            # If the server closes the connection next, this was the reason.
            self._errors += 1
            return message.text
        return None

    async def _put(self, message: Message) -> None:
        # Backpressure: while the application is behind, stop reading from the socket.
        while self._queue.qsize() >= self._queue_size:
            self._space.clear()
            await self._space.wait()
        self._received += 1
        self._queue.put_nowait(message)

    async def _drop_connection(self) -> None:
        writer = self._writer
        self._writer = self._reader = None
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(ConnectionClosed("connection closed"))
                future.exception()  # retrieved: nobody may be waiting any more
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1):  # wait_closed can hang: cpython#83939
                    await writer.wait_closed()

    def _end(self, error: ChatcastError) -> None:
        if self._ended:
            return
        self._ended = True
        self._queue.put_nowait(_End(error))
