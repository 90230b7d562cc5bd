"""The :class:`Message` type and its two wire forms.

* **JSON form**: one JSON object per frame, ``{"type": "message", "from": "alice",
  "text": "hi", "room": "lobby", "ts": 1700000000.0}``; fields that are ``None`` are left out.
  Text may hold newlines: JSON escapes them, so multi-line text survives one frame.
* **Text form**: what a human (``nc``, ``telnet``, the lab's scripts) reads:
  ``alice: hi``, ``* bob joined lobby``, ``! reason``. Control characters from the peer are
  shown in caret notation (``^[``), so nobody can drive another user's terminal (CWE-150).

Pure functions, no I/O; ``docs/protocol.md`` is the normative description.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any, Final

from ..exceptions import InvalidFrame

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
    "encode",
    "encode_message",
    "encode_str",
    "json_batch",
    "parse_frame",
    "render_text",
    "sanitize",
    "text_batch",
]

#: A chat message to a room (or, on multicast, to the group).
MESSAGE: Final = "message"
#: A private message to one name.
PRIVATE: Final = "private"
#: Someone joined a room (``sender`` joined ``room``).
JOIN: Final = "join"
#: Someone left a room (``sender`` left ``room``; ``text`` may hold the reason).
LEAVE: Final = "leave"
#: An announcement from the server operator to everyone.
ANNOUNCEMENT: Final = "announcement"
#: Someone changed name (``sender`` is the old name, ``text`` the new one).
NICK: Final = "nick"
#: Information from the server for this client only (help, who-is-here, notices).
INFO: Final = "info"
#: An error the server reports to this client (``text`` is the reason).
ERROR: Final = "error"
#: The server is closing this connection (``text`` is the reason).
CLOSING: Final = "closing"

#: Messages were missed and cannot be replayed (``missed`` says how many; ``room`` or, on
#: multicast, ``sender`` says where from).
GAP: Final = "gap"

# Moderation (#14). Each is an event on ``server.events()``: ``sender`` did it (``"server"``
# for the console and the Python API) to ``to`` (a name, or ``@ADDRESS``), in ``room`` where
# there is one; ``text`` is the reason (for a topic: the topic). Clients receive ``topic``.
#: ``to`` was disconnected by ``sender``.
KICK: Final = "kick"
#: ``to`` (a name, or ``@ADDRESS``) was banned by ``sender``.
BAN: Final = "ban"
#: The ban on ``to`` was lifted by ``sender``.
UNBAN: Final = "unban"
#: ``to`` may no longer speak in ``room``.
MUTE: Final = "mute"
#: ``to`` may speak in ``room`` again.
UNMUTE: Final = "unmute"
#: The topic of ``room`` is ``text`` (set by ``sender``; ``""``: cleared).
TOPIC: Final = "topic"
#: ``sender`` became an operator.
OP: Final = "op"
#: The moderation kinds.
MODERATION_KINDS: Final = frozenset({KICK, BAN, UNBAN, MUTE, UNMUTE, TOPIC, OP})

#: Every kind a :class:`Message` can have.
KINDS: Final = (
    frozenset({MESSAGE, PRIVATE, JOIN, LEAVE, ANNOUNCEMENT, NICK, INFO, ERROR, CLOSING, GAP})
    | MODERATION_KINDS
)
# Kinds whose text is a reason: their JSON form also carries it as "reason".
_REASONED: Final = frozenset({ERROR, CLOSING})


@dataclass(frozen=True, slots=True)
class Message:
    """One message, as received or to be sent.

    Attributes:
        text: The text; may contain newlines.
        sender: Who sent it, as stamped by the server (TCP) or carried in the datagram
            (multicast); for a plain-text datagram, ``"host:port"`` of its source.
        kind: What it is; one of :data:`KINDS` (``"message"`` for ordinary chat).
        room: The room it belongs to, when there is one.
        timestamp: Seconds since the epoch when the server (or multicast sender) stamped it.
        to: The recipient of a private message.
        seq: The sender's sequence number, where the transport carries one.
        id: The server's id for this message (room messages, private messages,
            announcements): strictly increasing per room and per private conversation.
        history: ``True`` when this is a replay of an earlier message (history on join, a
            ``history`` request, or a resume), never a live one.
        missed: For a ``"gap"``: how many messages were missed and cannot be replayed.
    """

    text: str
    sender: str | None = None
    kind: str = MESSAGE
    room: str | None = None
    timestamp: float | None = None
    to: str | None = None
    seq: int | None = None
    id: int | None = None
    history: bool = False
    missed: int | None = None

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON-form object, leaving out fields that are ``None``."""
        wire: dict[str, Any] = {"type": self.kind}
        if self.sender is not None:
            wire["from"] = self.sender
        wire["text"] = self.text
        if self.kind in _REASONED:
            wire["reason"] = self.text  # the same text under the name an error is read by
        if self.room is not None:
            wire["room"] = self.room
        if self.to is not None:
            wire["to"] = self.to
        if self.timestamp is not None:
            wire["ts"] = self.timestamp
        if self.seq is not None:
            wire["seq"] = self.seq
        if self.id is not None:
            wire["id"] = self.id
        if self.history:
            wire["history"] = True
        if self.missed is not None:
            wire["missed"] = self.missed
        return wire


def encode_message(message: Message) -> bytes:
    """Encode ``message`` in the JSON form as one LF-terminated frame (UTF-8)."""
    return dump_frame(message.to_wire())


def dump_frame(obj: dict[str, Any]) -> bytes:
    """Encode any JSON-form object as one compact LF-terminated UTF-8 frame."""
    return (
        json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"
    ).encode()


#: JSON-string encoding of one value, in C (``"a\\"b"`` for ``a"b``).
encode_str: Final[Callable[[str], str]] = json.encoder.encode_basestring

#: Heartbeat frames (JSON mode), sent as they are.
PING_FRAME: Final = b'{"type":"ping"}\n'
PONG_FRAME: Final = b'{"type":"pong"}\n'


def encode(message: Message, json_mode: bool) -> bytes:
    """``message`` in one connection's wire form: a JSON frame, or readable text line(s)."""
    if json_mode:
        return dump_frame(message.to_wire())
    return (render_text(message) + "\n").encode()


def text_batch(name: str, batch: list[str]) -> bytes:
    """Room messages from ``name`` in the text form, all in one buffer.

    ``name: `` goes before every line, the lines inside multi-line texts (from JSON clients)
    included, so nobody can fake a line from someone else. Joining with LF and prefixing after
    every LF does it for the whole batch in C, without a Python loop per message.
    """
    prefix = name + ": "
    return (prefix + "\n".join(batch).replace("\n", "\n" + prefix) + "\n").encode()


def json_batch(
    name_json: str, room: str, batch: list[str], timestamp: float, first_id: int | None = None
) -> bytes:
    """Room messages in the JSON form, one frame each, all in one buffer.

    ``name_json`` is the sender already encoded (:data:`encode_str`). Everything but the text
    (and the id) is the same for the whole batch. Without ids the frames are the encoded texts
    joined by "tail + head" (a C loop, not a Python one); with ids (``first_id``, then one
    more per message) one format per frame. Equal to encoding each
    ``Message(text, name, MESSAGE, room, timestamp, id=...)`` with :func:`encode`.
    """
    head = '{"type":"message","from":' + name_json + ',"text":'
    tail = ',"room":' + encode_str(room) + ',"ts":' + repr(timestamp)
    if first_id is None:
        tail += "}\n"
        return (head + (tail + head).join(map(encode_str, batch)) + tail).encode()
    frame = head.replace("%", "%%") + "%s" + tail.replace("%", "%%") + ',"id":%d}\n'
    return "".join([frame % pair for pair in zip(map(encode_str, batch), count(first_id))]).encode()


def parse_frame(frame: str) -> dict[str, Any]:
    """Parse one JSON-form frame into its object.

    Args:
        frame: One frame, without its terminator.

    Returns:
        The object; its ``"type"`` is guaranteed to be a non-empty ``str``.

    Raises:
        InvalidFrame: Not JSON, nested too deeply, a string holding a lone surrogate
            (``"\\ud800"``: not Unicode text), not an object, or no string ``"type"``.
    """
    try:
        obj = json.loads(frame)
    except RecursionError:
        # "[[[[..." nested past the interpreter's limit: say so in the protocol's words.
        raise InvalidFrame("not a JSON frame: nested too deeply") from None
    except ValueError as exc:
        raise InvalidFrame(f"not a JSON frame: {_short(exc)}") from None
    # json.loads turns an unpaired "\ud800" escape into a lone surrogate, which no UTF-8
    # encoder accepts: relaying it would raise UnicodeEncodeError in whoever re-encodes it
    # (RFC 8259 section 8.2: such strings have unpredictable behaviour).
    if _SURROGATE_ESCAPE.search(frame) and _has_lone_surrogate(obj):
        raise InvalidFrame("a JSON frame must hold valid Unicode (lone surrogate escape)")
    if not isinstance(obj, dict):
        raise InvalidFrame("a JSON frame must be an object")
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidFrame('a JSON frame needs a string "type"')
    return obj


def decode_message(frame: str | dict[str, Any]) -> Message:
    """Decode a JSON-form frame (or its parsed object) into a :class:`Message`.

    Raises:
        InvalidFrame: The frame is not a JSON object, its type is not one of :data:`KINDS`,
            or a field has the wrong type.
    """
    obj = parse_frame(frame) if isinstance(frame, str) else frame
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in KINDS:
        raise InvalidFrame(f"unknown message type {kind!r}")
    text = obj.get("text", obj.get("reason", "") if kind in _REASONED else "")
    if not isinstance(text, str):
        raise InvalidFrame('"text" must be a string')
    timestamp = obj.get("ts")
    if timestamp is not None and (
        isinstance(timestamp, bool)
        or not isinstance(timestamp, int | float)
        or not _finite(timestamp)
    ):
        raise InvalidFrame('"ts" must be a finite number')
    seq = obj.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        raise InvalidFrame('"seq" must be an integer')
    ident = _optional_int(obj, "id")
    missed = _optional_int(obj, "missed")
    history = obj.get("history", False)
    if not isinstance(history, bool):
        raise InvalidFrame('"history" must be true or false')
    return Message(
        text=text,
        sender=_optional_str(obj, "from"),
        kind=kind,
        room=_optional_str(obj, "room"),
        timestamp=None if timestamp is None else float(timestamp),
        to=_optional_str(obj, "to"),
        seq=seq,
        id=ident,
        history=history,
        missed=missed,
    )


def _optional_int(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise InvalidFrame(f'"{key}" must be a non-negative integer')
    return value


def _finite(number: int | float) -> bool:
    # An int too large for a float (1e400 written out) makes isfinite() raise OverflowError.
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def _optional_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidFrame(f'"{key}" must be a string')
    return value


#: An escape in the surrogate range; only then can a parsed frame hold a lone surrogate.
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(obj: Any) -> bool:
    # Iterative: the object may be nested as deep as json.loads allows.
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _caret_table() -> dict[int, str]:
    table = {c: "^" + chr(c + 64) for c in range(0x20)}
    table[0x7F] = "^?"
    table.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})
    del table[0x09]  # a tab is harmless
    # Invisible characters that reorder or break the line (bidi overrides and isolates, line
    # and paragraph separators, BOM): shown by their code point.
    for c in (*range(0x2028, 0x202F), *range(0x2066, 0x206A), 0xFEFF):
        table[c] = f"<U+{c:04X}>"
    return table


_CONTROLS: Final = _caret_table()
_CONTROLS_KEEP_NEWLINE: Final = {c: s for c, s in _CONTROLS.items() if c != 0x0A}


def sanitize(text: str, *, keep_newlines: bool = False) -> str:
    """Return ``text`` with C0/C1 control characters and DEL in visible caret notation.

    ESC becomes ``^[``, NUL ``^@``, CR ``^M``; tab is kept. With ``keep_newlines`` LF is kept
    too. Invisible characters that would reorder or break the line (bidi overrides and
    isolates, U+2028, U+2029, U+FEFF) become ``<U+202E>`` and the like. Safe to print to a
    terminal.
    """
    return text.translate(_CONTROLS_KEEP_NEWLINE if keep_newlines else _CONTROLS)


def render_text(message: Message) -> str:
    """Render ``message`` in the text form: one or more display lines, no terminator.

    Every line of a multi-line text is shown with the same prefix, so a reader can never be
    fooled into seeing a line from someone else.
    """
    kind = message.kind
    sender = sanitize(message.sender or "?")
    if kind == MESSAGE:
        prefix = f"{sender}: "
    elif kind == PRIVATE:
        prefix = f"[private] {sender}: "
    elif kind == ANNOUNCEMENT:
        prefix = "[server] "
    elif kind in (ERROR, CLOSING):
        prefix = "! "
    elif kind == JOIN:
        return f"* {sender} joined {sanitize(message.room or '')}".rstrip()
    elif kind == LEAVE:
        tail = f" ({sanitize(message.text)})" if message.text else ""
        return f"* {sender} left {sanitize(message.room or '')}".rstrip() + tail
    elif kind == NICK:
        return f"* {sender} is now {sanitize(message.text)}"
    elif kind == GAP:
        if message.missed is None and message.text:
            return f"* {sanitize(message.text)}"
        count = message.missed if message.missed is not None else "some"
        where = message.room if message.room is not None else message.sender
        source = f" in {sanitize(where)}" if where else ""
        return f"* {count} message(s) missed{source} (no longer available)"
    elif kind in MODERATION_KINDS:
        return _render_moderation(message)
    else:
        prefix = "* "
    if message.history:
        prefix = "[history] " + prefix
    return "\n".join(
        prefix + line for line in sanitize(message.text, keep_newlines=True).split("\n")
    )


_VERBS: Final = {KICK: "kicked", BAN: "banned", UNBAN: "unbanned", MUTE: "muted", UNMUTE: "unmuted"}


def _render_moderation(message: Message) -> str:
    """One line for a moderation message: ``* alice kicked bob (spamming)``."""
    sender = sanitize(message.sender or "server")
    room = sanitize(message.room or "")
    text = sanitize(message.text)
    if message.kind == TOPIC:
        if not text:
            return f"* {sender} cleared the topic of {room}"
        return f"* topic of {room}: {text} (set by {sender})"
    if message.kind == OP:
        return f"* {sender} is now an operator"
    where = f" in {room}" if room and message.kind in (MUTE, UNMUTE) else ""
    tail = f" ({text})" if text else ""
    return f"* {sender} {_VERBS[message.kind]} {sanitize(message.to or '?')}{where}{tail}"
