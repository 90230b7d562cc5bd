"""chatcast: group messaging on asyncio.

* :class:`MulticastChannel`: UDP multicast chat that talks to any UDP peer.
* :class:`BroadcastServer` / :class:`BroadcastClient`: a TCP chat hub and its client.

Messages are newline-framed (``docs/protocol.md``). No runtime dependencies.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._framing import DEFAULT_MAX_LINE_BYTES, LineDecoder
from .exceptions import (
    AuthenticationError,
    ChannelClosed,
    ChatcastError,
    ConnectionClosed,
    InvalidFrame,
    LineTooLong,
    MessageTooLong,
    ProtocolError,
)
from .message import Message

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "AuthenticationError",
    "ChannelClosed",
    "ChatcastError",
    "ConnectionClosed",
    "InvalidFrame",
    "LineDecoder",
    "LineTooLong",
    "Message",
    "MessageTooLong",
    "ProtocolError",
    "__version__",
]
