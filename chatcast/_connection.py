"""One client connection on the server side: an :class:`asyncio.Protocol` over a hub peer.

It does three things only, as websockets' connection layer does: hand the bytes it reads to
the sans-I/O hub (:meth:`~chatcast._core.hub.Hub.receive`), tell the hub of back-pressure and
of the end, and, for TLS, hold what arrives before the server takes the new transport over.
It is given what it needs (an :class:`Acceptor`: the hub, and the server's accept and loss
callbacks), never the server itself. The peer's state is the hub's: :class:`Connection` is a
:class:`~chatcast._core.peer.Peer` so that a connection costs one object, not two.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from ._core.hub import Hub
from ._core.peer import Peer

__all__ = ["Acceptor", "Connection"]

log = logging.getLogger("chatcast.server")


@dataclass(frozen=True, slots=True)
class Acceptor:
    """What every connection of one server is given (shared, so it costs one reference).

    Attributes:
        hub: The chat the connections belong to.
        made: Called with a connection once its transport is attached.
        lost: Called with a connection and the error (or None) when it ends.
        tls_pending: TLS will be started on each connection by the server (``start_tls``).
        keepalive: Turn on TCP keepalive.
    """

    hub: Hub
    made: Callable[[Connection], None]
    lost: Callable[[Connection, Exception | None], None]
    tls_pending: bool
    keepalive: bool


class Connection(Peer, asyncio.Protocol):
    """Server-side protocol of one TCP client. Not public: the server owns every instance.

    While TLS is pending (``handshaking``) nothing is read; what arrives between the
    handshake's end and the server's taking over the TLS transport is kept for
    :meth:`replay_early`.
    """

    __slots__ = ("_acceptor", "_early", "handshaking")

    def __init__(self, acceptor: Acceptor) -> None:
        super().__init__(acceptor.hub.config.max_line_bytes)
        self._acceptor = acceptor
        self.handshaking = acceptor.tls_pending  # TLS: the handshake has not completed yet
        self._early: list[bytes] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance() check: uvloop's TCP transport is not a subclass of
        # asyncio.Transport, though it implements it (chatcast[speed]).
        transport = cast(asyncio.Transport, transport)
        if self.handshaking:
            # Not a byte of the ClientHello may reach us: it is for the TLS layer that
            # start_tls() puts in front of us (and that resumes reading).
            transport.pause_reading()
        peer = transport.get_extra_info("peername")
        address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"
        self.attach(transport, address)
        sock = transport.get_extra_info("socket")
        if sock is not None and self._acceptor.keepalive:
            _set_keepalive(sock)
        self._acceptor.made(self)

    def data_received(self, data: bytes) -> None:
        if self.handshaking:
            if self._early is None:
                self._early = []
            self._early.append(data)
            return
        self._acceptor.hub.receive(self, data)

    def eof_received(self) -> bool:
        # The peer shut down its sending side: what it sent without a final newline still
        # counts, then we close (a chat connection that cannot talk has left).
        self._acceptor.hub.end_of_input(self)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._acceptor.lost(self, exc)

    def pause_writing(self) -> None:
        # Called from inside transport.write() when the buffer passes the high-water mark,
        # possibly in the middle of a fan-out loop: the hub only swaps the writer here.
        self._acceptor.hub.paused(self)

    def resume_writing(self) -> None:
        self._acceptor.hub.resumed(self)

    # -- TLS --------------------------------------------------------------------------------

    def handshake_done(self, transport: asyncio.Transport) -> None:
        """TLS is up: write through ``transport`` from now on, and read what came early."""
        self.handshaking = False
        self.attach(transport, self.address)

    def replay_early(self) -> None:
        """Hand the hub what the peer said before the TLS transport was taken over."""
        early, self._early = self._early or [], None
        for data in early:
            self.data_received(data)


def _set_keepalive(sock: socket.socket) -> None:
    """Turn on TCP keepalive so a vanished peer is noticed within about two minutes.

    The Linux default is 2 hours idle before the first probe; these options exist on Linux
    and, except TCP_USER_TIMEOUT, on macOS 10.15+ and Windows 10 1709+.
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
