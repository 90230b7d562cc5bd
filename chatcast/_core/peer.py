"""One connection as the hub sees it: :class:`Peer`, a record with no behaviour of its own
beyond attaching its transport. The hub (``hub.py``) is the only module that changes a peer;
``rooms.py`` reads peers and calls their ``write``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..exceptions import ProtocolError
from .backlog import Backlog
from .flood import Bucket
from .framing import LineDecoder
from .ports import Timer, Transport
from .wire import Message, encode

if TYPE_CHECKING:
    from .sessions import Session

__all__ = ["Peer", "discard"]


def discard(data: bytes) -> None:
    """Stand-in writer for a peer that is being dropped."""


class Peer:
    """One connection's state, as the hub sees it. Only the hub (and this class) write it.

    A shell creates one per connection (the asyncio ``Connection`` is a subclass) and calls
    :meth:`attach` when its transport is ready; everything else is the hub's.
    """

    __slots__ = (
        "address",
        "admitted_at",
        "announced",
        "asked",
        "authenticated",
        "backlog",
        "bucket",
        "closing",
        "decoder",
        "deferred",
        "first_frame",
        "flush_timer",
        "greeted",
        "json",
        "last_rx",
        "name",
        "name_json",
        "pinged_at",
        "replay",
        "room",
        "session",
        "transport",
        "version",
        "write",
    )

    def __init__(self, max_line_bytes: int) -> None:
        self.decoder = LineDecoder(max_line_bytes)
        # Frames waiting while an asynchronous step (a cluster-wide name claim) completes.
        self.deferred: list[str | ProtocolError] | None = None
        # The cluster was asked for its session (its hello waits for the answer).
        self.asked = False
        self.transport: Transport | None = None
        self.write: Callable[[bytes], object] = discard
        self.address = "?"
        self.name = ""
        self.name_json = '""'
        self.room = ""
        self.json = False
        self.announced = False
        self.authenticated = False
        self.first_frame = True
        self.closing = False
        self.greeted = False  # the welcome was sent (after TLS, if any)
        self.admitted_at = 0.0  # when it was greeted: the authentication clock starts here
        self.last_rx = 0.0
        self.pinged_at: float | None = None
        self.flush_timer: Timer | None = None
        self.backlog: Backlog | None = None  # output waiting while paused (drop-oldest)
        self.bucket: Bucket | None = None  # flood control, when the server has a rate
        self.version = 1  # the protocol version of a JSON client's hello
        self.session: Session | None = None  # resumable identity (JSON clients)
        # While missed messages are replayed (see Hub._replay): the live output held back,
        # what is to be replayed, and [next index, waiting for the transport to drain].
        self.replay: tuple[list[bytes], list[Any], list[Any]] | None = None

    def attach(self, transport: Transport, address: str) -> None:
        """Write to ``transport`` from now on (a new one after a TLS handshake, too)."""
        self.transport = transport
        self.write = transport.write
        self.address = address

    def detach(self) -> None:
        """The connection is gone: nothing more is written, no timer fires for it."""
        if self.flush_timer is not None:
            self.flush_timer.cancel()
            self.flush_timer = None
        self.write = discard

    def send(self, message: Message) -> None:
        """Queue ``message`` for this peer in its wire form; never waits."""
        self.write(encode(message, self.json))
