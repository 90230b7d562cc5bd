"""One client connection on the server side: an :class:`asyncio.Protocol`.

It does three things only, as websockets' connection layer does: feed the framing core,
hand complete frames to the server, and write what the server gives it. Writes never wait:
``write`` is the transport's own ``write`` while the peer keeps up, and is swapped for a
bounded backlog (or a discard) when the transport asks us to pause, so the server's fan-out
loop stays one plain call per recipient.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ._core.framing import LineDecoder
from .exceptions import ProtocolError
from .message import ERROR, Message, dump_frame, render_text

if TYPE_CHECKING:
    from .server import BroadcastServer

__all__ = ["Connection", "encode"]

log = logging.getLogger("chatcast.server")


def _discard(data: bytes) -> None:
    """Stand-in writer for a connection that is being dropped."""


class Connection(asyncio.Protocol):
    """Server-side state of one TCP client. Not public: the server owns every instance."""

    __slots__ = (
        "address",
        "admitted_at",
        "announced",
        "authenticated",
        "backlog",
        "backlog_bytes",
        "closing",
        "decoder",
        "deferred",
        "dropped",
        "early",
        "first_frame",
        "flush_handle",
        "handshaking",
        "json",
        "last_rx",
        "name",
        "name_json",
        "pinged_at",
        "refusing",
        "room",
        "server",
        "strikes",
        "tokens",
        "tokens_at",
        "transport",
        "write",
    )

    def __init__(self, server: BroadcastServer) -> None:
        self.server = server
        self.decoder = LineDecoder(server.max_line_bytes)
        # Frames waiting while an asynchronous step (a cluster-wide name claim) completes.
        self.deferred: list[str | ProtocolError] | None = None
        self.transport: asyncio.Transport | None = None
        self.write: Callable[[bytes], object] = _discard
        self.address = "?"
        self.name = ""
        self.name_json = '""'
        self.room = ""
        self.json = False
        self.announced = False
        self.authenticated = False
        self.first_frame = True
        self.closing = False
        self.handshaking = False  # TLS: the handshake has not completed yet
        # TLS: data that arrived between the handshake's end and the server's taking over
        # the new transport (the peer may speak first); replayed in order then.
        self.early: list[bytes] = []
        self.admitted_at = 0.0  # when it was greeted: the authentication clock starts here
        self.last_rx = 0.0
        self.pinged_at: float | None = None
        self.flush_handle: asyncio.TimerHandle | None = None
        self.backlog: collections.deque[bytes] | None = None
        self.backlog_bytes = 0
        self.dropped = 0
        self.tokens = 0.0
        self.tokens_at = 0.0
        self.strikes = 0.0
        self.refusing = False  # flood control: the last frame was refused

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance() check: uvloop's TCP transport is not a subclass of
        # asyncio.Transport, though it implements it (chatcast[speed]).
        transport = cast(asyncio.Transport, transport)
        if self.server._tls_per_connection:
            # Not a byte of the ClientHello may reach us: it is for the TLS layer that
            # start_tls() puts in front of us (and that resumes reading).
            transport.pause_reading()
        self.transport = transport
        self.write = transport.write
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.address = f"{peer[0]}:{peer[1]}"
        sock = transport.get_extra_info("socket")
        if sock is not None and self.server.keepalive:
            _set_keepalive(sock)
        self.server._connection_made(self)

    def data_received(self, data: bytes) -> None:
        if self.handshaking:
            self.early.append(data)
            return
        server = self.server
        server._bytes_in += len(data)
        if self.closing:
            return  # lingering close: what the peer still sends is discarded
        if not self.json:
            # Text mode: any byte is a sign of life (nc cannot answer pings), and the time
            # of the last one tells when a line without LF is complete.
            self.last_rx = server._loop.time()
        if not server._receive_text(self, data):
            frames = self.decoder.feed(data)
            if frames:
                if self.json:
                    # JSON mode: only whole frames count, or a client trickling a frame that
                    # never ends (one byte a second) would never be pinged or dropped.
                    self.last_rx = server._loop.time()
                    self.pinged_at = None
                server._handle_frames(self, frames)
        decoder = self.decoder
        if (
            not self.json
            and (decoder.pending or decoder.discarding)
            and self.flush_handle is None
            and not self.closing
        ):
            # Text mode: a partial line followed by a silence is a message (the lab's
            # clients send() without a newline), and the silence also ends an over-long
            # line being discarded, or a client that never sends LF would be mute for good.
            self.flush_handle = server._loop.call_later(server.line_timeout, self._flush_partial)

    def eof_received(self) -> bool:
        # The peer shut down its sending side: what it sent without a final newline still
        # counts, then we close (a chat connection that cannot talk has left).
        frame = self.decoder.flush()
        if frame is not None and not self.closing:
            self.server._handle_frames(self, [frame])
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        self.write = _discard
        self.server._connection_lost(self, exc)

    def pause_writing(self) -> None:
        # Called from inside transport.write() when the buffer passes the high-water mark,
        # possibly in the middle of a fan-out loop: only swap the writer here.
        self.server._paused(self)

    def resume_writing(self) -> None:
        backlog = self.backlog
        if backlog is None or self.transport is None or self.closing:
            return
        self.backlog = None
        self.backlog_bytes = 0
        transport = self.transport
        self.write = transport.write
        if self.dropped:
            notice = Message(
                f"{self.dropped} messages dropped: you were reading too slowly", kind=ERROR
            )
            self.dropped = 0
            transport.write(self.encode(notice))
        transport.write(b"".join(backlog))

    # -- helpers the server uses ------------------------------------------------------------

    def enqueue(self, data: bytes) -> None:
        """Writer used while paused in drop-oldest mode: keep a bounded backlog."""
        backlog = self.backlog
        assert backlog is not None
        backlog.append(data)
        self.backlog_bytes += len(data)
        limit = self.server.max_buffer_bytes
        while self.backlog_bytes > limit and len(backlog) > 1:
            if not self.dropped:
                self.server._slow_consumers += 1  # once per episode of falling behind
            old = backlog.popleft()
            self.backlog_bytes -= len(old)
            self.dropped += old.count(b"\n")
            self.server._dropped += old.count(b"\n")

    def encode(self, message: Message) -> bytes:
        """Encode ``message`` in this connection's wire form."""
        return encode(message, self.json)

    def send(self, message: Message) -> None:
        """Queue ``message`` for this client; never waits."""
        self.write(self.encode(message))

    def _flush_partial(self) -> None:
        self.flush_handle = None
        decoder = self.decoder
        if self.closing or self.json or not (decoder.pending or decoder.discarding):
            return
        server = self.server
        wait = self.last_rx + server.line_timeout - server._loop.time()
        if wait > 0.001:
            self.flush_handle = server._loop.call_later(wait, self._flush_partial)
            return
        frame = decoder.flush(hold_incomplete=True)  # also ends a discard
        if frame is not None:
            server._handle_frames(self, [frame])


def encode(message: Message, json_mode: bool) -> bytes:
    """``message`` in a connection's wire form: a JSON frame, or a readable text line."""
    if json_mode:
        return dump_frame(message.to_wire())
    return (render_text(message) + "\n").encode()


def _set_keepalive(sock: socket.socket) -> None:
    """Turn on TCP keepalive so a vanished peer is noticed within about two minutes.

    Linux default is 2 hours idle before the first probe (RELIABILITY.md); these options
    exist on Linux and, except TCP_USER_TIMEOUT, on macOS 10.15+ and Windows 10 1709+.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        if hasattr(socket, "TCP_KEEPINTVL"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 15)
        if hasattr(socket, "TCP_KEEPCNT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)
    except OSError as exc:  # some platforms refuse some of these; keepalive is best effort
        log.debug("keepalive options refused: %s", exc)
