"""chatcast: group messaging on asyncio.

* :class:`MulticastChannel`: UDP multicast chat that talks to any UDP peer.
* :class:`BroadcastServer` / :class:`BroadcastClient`: a TCP chat hub and its client.
* :func:`discover` / :func:`discover_once`: find servers announcing themselves on the LAN.

Messages are newline-framed (``docs/protocol.md``). No runtime dependencies.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._core.framing import DEFAULT_MAX_LINE_BYTES, LineDecoder
from ._core.history import HistoryLimits
from .client import BroadcastClient, ClientStatistics
from .discovery import (
    Announce,
    DiscoveredServer,
    Discovery,
    client_for,
    discover,
    discover_once,
)
from .exceptions import (
    AuthenticationError,
    BackplaneError,
    ChannelClosed,
    ChatcastError,
    ConnectionClosed,
    InvalidFrame,
    LineTooLong,
    MessageTooLong,
    ProtocolError,
    Refused,
    StoreError,
)
from .message import Message
from .multicast import MulticastChannel, MulticastStatistics, SenderStatistics
from .server import BroadcastServer, EventStream, ServerStatistics

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "Announce",
    "AuthenticationError",
    "BackplaneError",
    "BroadcastClient",
    "BroadcastServer",
    "ChannelClosed",
    "ChatcastError",
    "ClientStatistics",
    "ConnectionClosed",
    "DiscoveredServer",
    "Discovery",
    "EventStream",
    "HistoryLimits",
    "InvalidFrame",
    "LineDecoder",
    "LineTooLong",
    "Message",
    "MessageTooLong",
    "MulticastChannel",
    "MulticastStatistics",
    "ProtocolError",
    "Refused",
    "SenderStatistics",
    "ServerStatistics",
    "StoreError",
    "__version__",
    "client_for",
    "discover",
    "discover_once",
]
