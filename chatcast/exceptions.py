"""The exceptions chatcast raises.

Every exception chatcast raises on purpose derives from :class:`ChatcastError`, so
``except ChatcastError`` catches them all. The tree is sorted by *what went wrong*, not by
where::

    ChatcastError
    ├── ConnectionClosed        the peer or the network ended the connection
    ├── ChannelClosed           your own code closed it (and you used it afterwards)
    ├── MessageTooLong          you tried to send more than the limit (also ValueError)
    ├── ProtocolError           the peer sent something that breaks the protocol
    │   ├── LineTooLong         a frame over the per-frame limit
    │   └── InvalidFrame        bad UTF-8, bad JSON, unknown type, wrong field types
    ├── AuthenticationError     a token was refused
    ├── Refused                 the server refused a message or request (with its reason)
    ├── BackplaneError          the backplane's engine refused our settings (password, db)
    └── StoreError              the message store's database cannot be used

Argument errors (a bad port, a group that is not multicast) are plain :class:`ValueError` or
:class:`TypeError`, raised at construction with the bad value and the allowed range.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BackplaneError",
    "ChannelClosed",
    "ChatcastError",
    "ConnectionClosed",
    "InvalidFrame",
    "LineTooLong",
    "MessageTooLong",
    "ProtocolError",
    "Refused",
    "StoreError",
]


class ChatcastError(Exception):
    """Root of every exception chatcast raises on purpose."""


class ConnectionClosed(ChatcastError):
    """The connection was ended by the peer or the network.

    Attributes:
        reason: The reason the server gave before closing, or a description of what the
            network did (``"connection reset"``); never empty.

    The underlying :class:`OSError`, when there was one, is chained as ``__cause__``.
    """

    def __init__(self, reason: str = "connection closed") -> None:
        reason = reason or "connection closed"
        super().__init__(reason)
        self.reason = reason


class ChannelClosed(ChatcastError):
    """The channel or connection was closed by this program and can no longer be used."""


class MessageTooLong(ChatcastError, ValueError):
    """A message to send is larger than the limit; nothing was sent.

    Attributes:
        size: The encoded size in bytes.
        limit: The largest size allowed, in bytes.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes is over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class ProtocolError(ChatcastError):
    """The peer sent data that breaks the chatcast protocol."""


class LineTooLong(ProtocolError):
    """A received frame was longer than the per-frame limit.

    It is reported as soon as the limit is passed; the rest of the frame is discarded.

    Attributes:
        limit: The per-frame limit in bytes.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"line longer than {limit} bytes")
        self.limit = limit


class InvalidFrame(ProtocolError):
    """A received frame could not be understood (bad UTF-8, bad JSON, wrong types)."""


class AuthenticationError(ChatcastError):
    """The server refused this client's credentials."""


class BackplaneError(ChatcastError):
    """The backplane's engine answered but refused us (a wrong password, a database it does
    not have): retrying would not help. Raised when the server starts; an engine that is
    merely unreachable is not an error (the server serves locally and keeps retrying)."""


class StoreError(ChatcastError):
    """The message store cannot be used: its database is locked by another process, corrupt,
    not a chatcast store, or not writable. Raised when the server starts, with the path and
    the reason, never as a traceback later."""


class Refused(ChatcastError):
    """The server refused what this client sent (flood control, too long, an unknown
    recipient, not allowed).

    Attributes:
        reason: The server's own words.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
