"""The :class:`Message` type, its kinds, and its two wire forms (JSON and text).

The codec lives in the sans-I/O core (``chatcast._core.wire``); this module is its public face,
kept so that ``from chatcast.message import Message, MESSAGE`` goes on working.
``docs/protocol.md`` is the normative description of both forms.
"""

from __future__ import annotations

from ._core.wire import (
    ANNOUNCEMENT,
    BAN,
    CLOSING,
    ERROR,
    GAP,
    INFO,
    JOIN,
    KICK,
    KINDS,
    LEAVE,
    MESSAGE,
    MODERATION_KINDS,
    MUTE,
    NICK,
    OP,
    PRIVATE,
    TOPIC,
    UNBAN,
    UNMUTE,
    Message,
    decode_message,
    dump_frame,
    encode_message,
    parse_frame,
    render_text,
    sanitize,
)

__all__ = [
    "ANNOUNCEMENT",
    "BAN",
    "CLOSING",
    "ERROR",
    "GAP",
    "INFO",
    "JOIN",
    "KICK",
    "KINDS",
    "LEAVE",
    "MESSAGE",
    "MODERATION_KINDS",
    "MUTE",
    "NICK",
    "OP",
    "PRIVATE",
    "TOPIC",
    "UNBAN",
    "UNMUTE",
    "Message",
    "decode_message",
    "dump_frame",
    "encode_message",
    "parse_frame",
    "render_text",
    "sanitize",
]
