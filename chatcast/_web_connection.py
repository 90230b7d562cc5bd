"""One connection to the web port (:mod:`chatcast.web`): HTTP for the page, then a WebSocket.

:class:`WebConnection` is an :class:`asyncio.Protocol` over websockets' sans-I/O
:class:`~websockets.server.ServerProtocol` (the library does all of RFC 6455: the handshake,
framing, masking, close codes, the size limit), and, once upgraded, a hub
:class:`~chatcast._core.peer.Peer` like a TCP connection: same rooms, names, commands, limits,
flood control, slow-consumer policy and statistics. It is one object per connection, plus
websockets' protocol and a small :class:`_MessageTransport` that the hub writes to.

The WebSocket carries the JSON mode of ``docs/protocol.md``, one frame per message both ways:

* in: each text message is handed to the hub as one frame (a newline in it, which JSON allows
  only as whitespace, becomes a space); the first must be a ``hello``;
* out: the hub's buffers (one or more LF-terminated frames) are cut at each LF into one text
  message per frame. Every member of a fan-out gets the same buffer, so its WebSocket form is
  made once and shared (a server's frames are not masked, and no extension is negotiated).

Back-pressure is the TCP one: the socket transport's write buffer is the WebSocket's, so the
hub's pause/resume (``max_buffer_bytes``, the slow-consumer policy) applies as it is.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import ssl as ssl_module
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from ._core.hub import Hub
from ._core.peer import Peer

__all__ = ["Door", "WebConnection"]

log = logging.getLogger("chatcast.web")

#: Close codes (RFC 6455 section 7.4.1).
GOING_AWAY = 1001
POLICY = 1008
TOO_BIG = 1009
TRY_AGAIN = 1013


@dataclass(eq=False, slots=True)
class Door:
    """What every connection of one gateway shares (one reference per connection).

    Attributes:
        hub: The server's chat.
        admit: Counts an upgraded connection against the server's limits; returns the refusal.
        lost: Tells the server a counted connection ended.
        route: Answers an HTTP request that is not the WebSocket (the page and its files).
        allowed: Decides whether a WebSocket handshake's request (its Origin) is allowed.
        max_message_bytes: The largest message a client may send (close code 1009 past it).
        max_pending: Connections allowed at once before their WebSocket is open.
        open_timeout: Seconds from accept to an open WebSocket (or an HTTP answer).
        hello_timeout: Seconds from the open WebSocket to the client's ``hello``.
        close_timeout: Seconds the closing handshake may take before the TCP connection is cut.
    """

    hub: Hub
    admit: Callable[[Peer], str | None]
    lost: Callable[[Peer, Exception | None], None]
    route: Callable[[Request], Response]
    allowed: Callable[[Request], bool]
    max_message_bytes: int
    max_pending: int
    open_timeout: float
    hello_timeout: float
    close_timeout: float
    pending: int = 0
    # Statistics (WebStatistics).
    requests: int = 0
    upgrades: int = 0
    refused: int = 0
    bad_origin: int = 0
    timeouts: int = 0
    # The last buffer written and its WebSocket form: a fan-out hands one buffer to each
    # member, so it is framed once. Holding the buffer keeps its identity from being reused.
    last_data: bytes = b""
    last_frames: bytes = b""
    # TLS started by the gateway on each connection (as BroadcastServer does), so that at
    # most max_handshakes run at once and each connection is counted from its accept.
    ssl: ssl_module.SSLContext | None = None
    max_handshakes: int = 64
    handshakes: int = 0
    tls_waiting: collections.deque[WebConnection] = field(default_factory=collections.deque)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def start_handshakes(self) -> None:
        """Start the waiting TLS handshakes that fit under ``max_handshakes``."""
        loop = asyncio.get_running_loop()
        while self.tls_waiting and self.handshakes < self.max_handshakes:
            conn = self.tls_waiting.popleft()
            if not conn.opening or conn.raw.is_closing():
                continue
            left = conn.accepted_at + self.open_timeout - loop.time()
            if left <= 0:
                conn.raw.abort()
                continue
            self.handshakes += 1
            task = loop.create_task(self._handshake(conn, left))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _handshake(self, conn: WebConnection, seconds: float) -> None:
        assert self.ssl is not None
        try:
            transport = await asyncio.get_running_loop().start_tls(
                conn.raw, conn, self.ssl, server_side=True, ssl_handshake_timeout=seconds
            )
        except (OSError, EOFError) as exc:  # SSLError, TimeoutError, ConnectionError too
            # The TLS layer had taken the connection over: its end never reaches conn.
            log.info("TLS handshake with %s failed: %s", conn.address, exc or "timeout")
            conn.connection_lost(exc)
            return
        finally:
            self.handshakes -= 1
            self.start_handshakes()
        if transport is None or not conn.opening:
            if transport is not None:
                transport.abort()
            return
        conn.handshake_done(transport)

    def frames(self, data: bytes) -> bytes:
        """``data`` (LF-terminated JSON frames) as unmasked WebSocket text frames."""
        if data is self.last_data:
            return self.last_frames
        if data.count(b"\n") == 1:
            out = Frame(Opcode.TEXT, data[:-1]).serialize(mask=False, extensions=[])
        else:
            out = b"".join(
                Frame(Opcode.TEXT, line).serialize(mask=False, extensions=[])
                for line in data.split(b"\n")
                if line
            )
        self.last_data, self.last_frames = data, out
        return out


_REASONS = (b'{"type":"error"', b'{"type":"closing"')


class _MessageTransport:
    """The transport the hub writes to: JSON frames in, WebSocket messages out."""

    __slots__ = ("_conn", "last")

    def __init__(self, conn: WebConnection) -> None:
        self._conn = conn
        self.last = b""  # the last buffer written: its last frame says why we close

    def write(self, data: bytes) -> None:
        conn = self._conn
        if not conn.json:
            # The hub's text-mode welcome line, written at greet() just before the hello is
            # handled: a WebSocket client is JSON from its first frame, so it is not sent.
            return
        if conn.ws.state is not State.OPEN or not data:
            return
        # The hub writes the reason for closing (an error, or closing) on its own just before
        # close(): only such a buffer is kept, not every buffer (a fan-out's would stay alive).
        if data.startswith(_REASONS):
            self.last = data
        elif self.last:
            self.last = b""
        conn.raw.write(conn.door.frames(data))

    def write_eof(self) -> None:
        raise NotImplementedError("a WebSocket is closed with a close frame")

    def can_write_eof(self) -> bool:
        return False  # the hub then calls close(): the WebSocket closing handshake

    def close(self) -> None:
        """Start the closing handshake, its code and reason from the last frame sent."""
        conn = self._conn
        code, reason = _close_code(self.last)
        conn.close(code, reason)

    def abort(self) -> None:
        self._conn.raw.abort()

    def is_closing(self) -> bool:
        conn = self._conn
        return conn.raw.is_closing() or conn.ws.state is not State.OPEN

    def pause_reading(self) -> None:
        self._conn.raw.pause_reading()

    def resume_reading(self) -> None:
        self._conn.raw.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._conn.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._conn.raw.get_write_buffer_size()


def _close_code(data: bytes) -> tuple[int, str]:
    """The close code and reason for a connection whose last frame was ``data``'s last."""
    line = data.rstrip(b"\n").rpartition(b"\n")[2]
    try:
        frame = json.loads(line)
    except ValueError:
        return CloseCode.NORMAL_CLOSURE, ""
    if not isinstance(frame, dict):
        return CloseCode.NORMAL_CLOSURE, ""
    reason = str(frame.get("reason") or "")
    if frame.get("type") == "closing":
        return GOING_AWAY, reason
    if frame.get("type") == "error":
        return POLICY, reason
    return CloseCode.NORMAL_CLOSURE, ""


def _short(reason: str) -> str:
    """A close reason cut to the 123 bytes a close frame can carry (RFC 6455 5.5)."""
    encoded = reason.encode()
    if len(encoded) <= 123:
        return reason
    return encoded[:120].decode(errors="ignore") + "..."


class WebConnection(Peer, asyncio.Protocol):
    """One connection to the web port. Not public: the gateway owns every instance.

    Before the upgrade it answers one HTTP request (the page, its files) and closes, as
    websockets does; ``/ws`` upgrades it, and it becomes a hub peer once counted.
    """

    __slots__ = (
        "_early",
        "_parts",
        "_timer",
        "accepted_at",
        "counted",
        "door",
        "handshaking",
        "opening",
        "raw",
        "ws",
    )

    def __init__(self, door: Door) -> None:
        super().__init__(door.max_message_bytes)
        self.door = door
        self.ws = ServerProtocol(max_size=door.max_message_bytes, logger=log)
        self.raw: asyncio.Transport = cast(asyncio.Transport, None)
        self._parts: list[bytes] | None = None  # a fragmented message being received
        self._timer: asyncio.TimerHandle | None = None
        self.counted = False  # admitted by the server: its end is the server's to hear of
        self.opening = False  # counted in door.pending: accepted, no WebSocket open yet
        self.handshaking = door.ssl is not None  # TLS to be started by the gateway
        self._early: list[bytes] | None = None  # read before the TLS transport was ours
        self.accepted_at = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"
        door = self.door
        door.requests += 1
        if door.pending >= door.max_pending:
            door.refused += 1
            log.info("refused %s: %d connections opening already", self.address, door.pending)
            self.raw.abort()
            return
        door.pending += 1
        self.opening = True
        loop = asyncio.get_running_loop()
        self.accepted_at = loop.time()
        self._timer = loop.call_later(door.open_timeout, self._timed_out, "opening")
        if self.handshaking:
            # Not a byte of the ClientHello may reach us: it is for the TLS layer.
            self.raw.pause_reading()
            door.tls_waiting.append(self)
            door.start_handshakes()

    def handshake_done(self, transport: asyncio.Transport) -> None:
        """TLS is up: write through ``transport``, and read what came meanwhile."""
        self.raw = transport
        self.handshaking = False
        early, self._early = self._early or [], None
        for data in early:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self.handshaking:
            if self._early is None:
                self._early = []
            self._early.append(data)
            return
        self.ws.receive_data(data)
        self._events()

    def eof_received(self) -> bool:
        self.ws.receive_eof()
        self._flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.handshaking = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.opening:
            self.opening = False
            self.door.pending -= 1
        self.ws.receive_eof()
        if self.counted:
            self.door.lost(self, exc)
        else:
            self.detach()

    def pause_writing(self) -> None:
        if self.counted:
            self.door.hub.paused(self)

    def resume_writing(self) -> None:
        if self.counted:
            self.door.hub.resumed(self)

    # -- what websockets' protocol says -----------------------------------------------------

    def _events(self) -> None:
        for event in self.ws.events_received():
            if isinstance(event, Request):
                self._request(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._flush()

    def _flush(self) -> None:
        ws, raw = self.ws, self.raw
        for data in ws.data_to_send():
            if data:
                raw.write(data)
            elif raw.can_write_eof():  # SEND_EOF: half-close, the client closes
                raw.write_eof()
            else:
                raw.close()
        if ws.close_expected() and self._timer is None and not raw.is_closing():
            self._timer = asyncio.get_running_loop().call_later(self.door.close_timeout, raw.abort)

    def _request(self, request: Request) -> None:
        try:
            self._answer(request)
        finally:
            # websockets' parser keeps the request for the connection's life: its headers
            # (about 1.5 KB) are not needed once answered.
            request.headers.clear()

    def _answer(self, request: Request) -> None:
        door = self.door
        if request.path.partition("?")[0] != "/ws":
            self.ws.send_response(door.route(request))
            return
        if not door.allowed(request):
            door.bad_origin += 1
            origin = request.headers.get("Origin", "")
            log.info("refused %s: origin %r not allowed", self.address, origin)
            self.ws.send_response(self.ws.reject(403, f"origin not allowed: {origin}\n"))
            return
        response = self.ws.accept(request)
        if response.status_code != 101:
            self.ws.send_response(response)
            return
        response.headers["Cache-Control"] = "no-store"
        self.ws.send_response(response)
        door.pending -= 1
        self.opening = False
        door.upgrades += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None  # free for the closing handshake's timeout, if refused
        self.attach(_MessageTransport(self), self.address)
        self.counted = True
        refusal = door.admit(self)
        if refusal is not None:
            door.hub.release(self)
            self._refuse(refusal, TRY_AGAIN)
            return
        self._timer = asyncio.get_running_loop().call_later(
            door.hello_timeout, self._timed_out, "hello"
        )

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.CONT:
            if not frame.fin:
                if self._parts is None:
                    self._parts = []
                self._parts.append(bytes(frame.data))  # the total is bounded by max_size
                return
            if self._parts is not None:
                data = b"".join([*self._parts, frame.data])
                self._parts = None
            else:
                data = bytes(frame.data)
            self._message(data)
        elif opcode is Opcode.BINARY:
            self._refuse("binary messages are not supported: send JSON text", 1003)

    def _message(self, data: bytes) -> None:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self.close(CloseCode.INVALID_DATA, "invalid UTF-8")
            return
        hub = self.door.hub
        if not self.greeted:
            if self.closing:
                return
            try:
                hello = json.loads(text)
            except ValueError:
                hello = None
            if not isinstance(hello, dict) or hello.get("type") != "hello":
                self._refuse('the first message must be a hello: {"type":"hello",...}', POLICY)
                return
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            hub.greet(self)
        if b"\n" in data:
            data = data.replace(b"\n", b" ")  # JSON whitespace: one message is one frame
        hub.receive(self, data + b"\n")

    def _refuse(self, reason: str, code: int) -> None:
        """Send ``reason`` as an error frame, then close with ``code``."""
        if self.ws.state is State.OPEN:
            frame = {"type": "error", "reason": reason, "text": reason}
            self.ws.send_text(json.dumps(frame, ensure_ascii=False).encode())
        self.close(code, reason)

    def _timed_out(self, what: str) -> None:
        self._timer = None
        self.door.timeouts += 1
        if what == "opening":
            log.info("dropping %s: no WebSocket opened in time", self.address)
            self.raw.abort()
            return
        log.info("dropping %s: no hello in time", self.address)
        if self.counted:
            self.door.hub.release(self)
        self._refuse("no hello in time", POLICY)

    # -- closing ----------------------------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        """Start the WebSocket closing handshake (once); cut the connection if it stalls."""
        if self.ws.state is State.OPEN:
            self.ws.send_close(code, _short(reason))
        self._flush()
