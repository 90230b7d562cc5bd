"""Delivery, the server's hot path: handing messages to connections without waiting.

A mixin of :class:`~chatcast.server.BroadcastServer` (the state it uses is declared below and
owned by the server). Every batch of messages decoded from one read is encoded once per wire
form and handed to each recipient's transport; nothing here awaits. Text-mode reads made only of
plain chat lines take a bulk path that checks the whole read at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

from ._connection import Connection, encode
from ._core import commands as proto
from .exceptions import ProtocolError
from .message import (
    JOIN,
    LEAVE,
    MESSAGE,
    NICK,
    Message,
    dump_frame,
)

if TYPE_CHECKING:
    from ._cluster import Cluster
    from .server import BroadcastServer

__all__ = ["EventStream", "Relay"]

log = logging.getLogger("chatcast.server")

_encode_str: Callable[[str], str] = json.encoder.encode_basestring
#: Seconds join and leave notices wait to be sent together (a storm of joins then costs each
#: member one write per this interval, not one per join). Not per loop iteration: uvloop runs
#: ready callbacks after nearly every read, so an iteration holds about one join there.
NOTICE_DELAY: Final = 0.005
# What check_text refuses, for one line; and the same for a whole read, byte-wise.
_BAD_TEXT: Final = proto._BAD_TEXT
_PLAIN_ASCII: Final = bytes(range(0x20, 0x7F)) + b"\t\n"
_HIGH_BYTES: Final = bytes(range(0x80, 0x100))
# The non-ASCII characters check_text refuses, as UTF-8: C1 controls (C2 80-9F), U+2028-U+202E
# (E2 80 A8-AE), U+2066-U+2069 (E2 81 A6-A9), U+FEFF (EF BB BF).
_BAD_UTF8: Final = re.compile(
    rb"\xc2[\x80-\x9f]|\xe2\x80[\xa8-\xae]|\xe2\x81[\xa6-\xa9]|\xef\xbb\xbf"
)


class EventStream:
    """An async iterator over a server's events; see :meth:`BroadcastServer.events`."""

    def __init__(self, server: BroadcastServer, maxsize: int) -> None:
        self._server = server
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue(maxsize)
        self._entry = (self._queue, [0])
        self._done = False
        server._subscribers.append(self._entry)
        if server._closing:
            self._done = True

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Message:
        if self._done and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            await self.aclose()
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        """Unsubscribe; iteration ends."""
        if self._entry in self._server._subscribers:
            self._server._subscribers.remove(self._entry)
        self._done = True
        if self._queue.empty():
            self._queue.put_nowait(None)

    @property
    def dropped(self) -> int:
        """Events this reader lost by falling behind."""
        return self._entry[1][0]


class Relay:
    """Mixin: delivery of messages and events to this server's connections."""

    # State owned and initialised by BroadcastServer.__init__ (declared for type checkers).
    max_line_bytes: int
    notice_limit: int | None
    rate: float | None
    burst: float
    welcome: str
    default_room: str
    join_grace: float
    heartbeat_interval: float
    _loop: asyncio.AbstractEventLoop
    _closing: bool
    _token: bytes | None
    _cluster: Cluster | None
    _connections: set[Connection]
    _rooms: dict[str, set[Connection]]
    _names: dict[str, Connection]
    _subscribers: list[tuple[asyncio.Queue[Message | None], list[int]]]
    # Join and leave notices waiting to be sent together (NOTICE_DELAY), by room: each with
    # the connection it is about (which does not get it).
    _notices: dict[str, list[tuple[Message, Connection | None]]]
    _notices_due: bool
    _guest_counter: int
    _messages_in: int
    _messages_out: int
    _bytes_out: int
    _errors: int
    _auth_failures: int
    _rate_limited: int
    _events_dropped: int

    if TYPE_CHECKING:  # defined by Session and BroadcastServer

        def _announce(self, conn: Connection) -> None: ...
        def _handle_frames(self, conn: Connection, frames: list[str | ProtocolError]) -> None: ...

    def _announce_locally(self, message: Message) -> int:
        targets: Iterable[Connection]
        if self._notices:
            self._flush_notices()  # what happened before the announcement arrives first
        if message.room is None:
            targets = [c for c in self._connections if c.room]
        else:
            targets = self._rooms.get(message.room, ())
        count = self._send_many(targets, message)
        self._messages_out += count
        self._publish(message)
        return count

    def _deliver_private(self, target: Connection, message: Message) -> None:
        if self._notices:
            self._flush_room_notices(target.room)
        data = target.encode(message)
        target.write(data)
        self._messages_out += 1
        self._bytes_out += len(data)
        self._publish(message)

    def _notify_room(
        self, room: str, message: Message, exclude: Connection | None, *, remote: bool = False
    ) -> None:
        if self._cluster is not None and not remote:
            self._cluster.notice(message)
        members = self._rooms.get(room)
        limit = self.notice_limit
        kind = message.kind
        # The room's size counting the one who joins or leaves, so both notices agree.
        size = len(members) + (kind == LEAVE) if members else 0
        if members and (kind == JOIN or kind == LEAVE):
            if limit is None or size <= limit:
                # Joins and leaves come in storms (a class connecting at once, a network
                # failure): those of a few milliseconds reach each member in one write,
                # not one write per notice per member.
                self._notices.setdefault(room, []).append((message, exclude))
                if not self._notices_due:
                    self._notices_due = True
                    self._loop.call_later(NOTICE_DELAY, self._flush_notices)
        elif members and (kind != NICK or limit is None or size <= limit):
            if self._notices:
                self._flush_room_notices(room)
            self._send_many((c for c in members if c is not exclude), message)
        self._publish(message)

    def _flush_notices(self) -> None:
        """Deliver every waiting join and leave notice."""
        self._notices_due = False
        for room in list(self._notices):
            self._flush_room_notices(room)

    def _flush_room_notices(self, room: str) -> None:
        """Deliver ``room``'s waiting notices to its members now, one write per member.

        A member gets those of the notices that are not about itself, in order; one that
        joined while they waited also gets the notices of those who joined just before it,
        one that left does not get the rest.
        """
        pending = self._notices.pop(room, None)
        members = self._rooms.get(room)
        if not pending or not members:
            return
        abouts = {about for _, about in pending}
        # Per wire form (JSON or not), built when a member needs it: each notice encoded,
        # and all of them joined.
        forms: dict[bool, tuple[list[tuple[bytes, Connection | None]], bytes]] = {}
        for member in members:
            if member.closing:
                continue
            form = forms.get(member.json)
            if form is None:
                encoded = [(encode(message, member.json), about) for message, about in pending]
                form = forms[member.json] = (encoded, b"".join(data for data, _ in encoded))
            if member in abouts:  # not told about itself
                data = b"".join(d for d, about in form[0] if about is not member)
            else:
                data = form[1]
            if data:
                member.write(data)
                self._bytes_out += len(data)

    def _send_many(self, targets: Iterable[Connection], message: Message) -> int:
        """Deliver one non-chat message to many, encoding it at most once per wire form."""
        text_data: bytes | None = None
        json_data: bytes | None = None
        count = 0
        for conn in targets:
            if conn.closing:
                continue
            if conn.json:
                if json_data is None:
                    json_data = dump_frame(message.to_wire())
                data = json_data
            else:
                if text_data is None:
                    text_data = conn.encode(message)
                data = text_data
            conn.write(data)
            self._bytes_out += len(data)
            count += 1
        return count

    def _receive_text(self, conn: Connection, data: bytes) -> bool:
        """Relay a text-mode read that holds only chat lines in bulk; False if it may not.

        The fast path of :meth:`Connection.data_received`. It applies to an authenticated
        text-mode connection without flood control, and only when every complete line of
        the read is plain chat: not empty, not a ``/`` command, valid UTF-8, within
        ``max_line_bytes``, free of the control characters :func:`~._protocol.check_text`
        refuses. Those are checked once over the whole read (in C) instead of line by line
        through the decoder and :meth:`_handle_frames`; what is relayed, and the order, are
        the same. Anything else returns False having consumed nothing except, when it has
        to, the end of a line the decoder was holding, which it then handles itself.
        """
        decoder = conn.decoder
        if (
            self.rate is not None
            or conn.json
            or conn.first_frame
            or not conn.authenticated
            or decoder.discarding
            or conn.deferred is not None  # frames wait for an asynchronous step: keep order
        ):
            return False
        end = data.rfind(b"\n")
        if end < 0:
            return False
        held: str | None = None
        start = 0
        if decoder.pending:
            # The read completes a line the decoder holds: let it finish that one line.
            start = data.find(b"\n") + 1
            head = decoder.feed(data[:start])
            frame = head[0] if len(head) == 1 else None
            if not isinstance(frame, str) or not _plain_chat(frame):
                self._handle_frames(conn, head + decoder.feed(data[start:]))
                return True
            held = frame
        lines = self._plain_lines(data, start, end) if end >= start else []
        if lines is None:
            frames: list[str | ProtocolError] = [] if held is None else [held]
            frames += decoder.feed(data[start:])
            self._handle_frames(conn, frames)
            return True
        if held is not None:
            lines.insert(0, held)
        tail = decoder.feed(data[end + 1 :]) if end + 1 < len(data) else None
        self._flush_batch(conn, lines)
        if tail:
            self._handle_frames(conn, tail)  # an over-long unfinished line: its error
        return True

    def _plain_lines(self, data: bytes, start: int, end: int) -> list[str] | None:
        """The lines of ``data[start:end]`` if every one is plain chat text, else None."""
        raw = data[start:end]
        # What check_text refuses, found in C: deleting every printable ASCII byte, tab and
        # LF leaves nothing in a clean ASCII read; an ASCII byte left is a control character.
        # Non-ASCII reads also need the C1 controls and the invisible formatting characters
        # (_BAD_UTF8); surrogates and other invalid UTF-8 fail to decode.
        rest = raw.translate(None, _PLAIN_ASCII)
        if rest and (rest.translate(None, _HIGH_BYTES) or _BAD_UTF8.search(raw) is not None):
            return None
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            return None
        if not text or text[0] in "\n/" or text[-1] == "\n" or "\n\n" in text or "\n/" in text:
            return None  # an empty line or a command: the per-frame path handles those
        lines = text.split("\n")
        if end - start > self.max_line_bytes and (
            not text.isascii() or max(map(len, lines)) > self.max_line_bytes
        ):
            return None  # some line may be over the limit: the decoder says which
        return lines

    def _flush_batch(self, conn: Connection, batch: list[str]) -> None:
        """Relay the room messages in ``batch`` from ``conn`` to the rest of its room.

        With a backplane the batch also crosses to the other servers, once per batch.
        """
        if not batch or not conn.room:
            batch.clear()
            return
        if not conn.announced:
            self._announce(conn)
        self._messages_in += len(batch)
        timestamp = _now()
        self._fan_out(conn.room, conn, conn.name, conn.name_json, batch, timestamp)
        if self._cluster is not None:
            self._cluster.batch(conn.name, conn.room, batch, timestamp)
        batch.clear()

    def _relay_remote(self, sender: str, room: str, batch: list[str], timestamp: float) -> None:
        """Relay a batch that another server's member sent to ``room``, to our members."""
        if room in self._rooms:
            self._fan_out(room, None, sender, _encode_str(sender), batch, timestamp)

    def _fan_out(
        self,
        room: str,
        exclude: Connection | None,
        sender: str,
        sender_json: str,
        batch: list[str],
        timestamp: float,
    ) -> None:
        """Hand ``batch`` to every member of ``room`` but ``exclude``; never waits.

        The hot path: both wire forms are built once for the whole batch (lazily, only if
        a recipient needs that form) and handed to each transport in one write.
        """
        if self._notices:
            self._flush_room_notices(room)  # who joined or left before these messages
        text_data = json_data = b""
        text_members = json_members = 0
        for member in self._rooms.get(room, ()):
            if member is exclude:
                continue
            if member.json:
                if not json_members:
                    json_data = _json_batch(sender_json, room, batch, timestamp)
                member.write(json_data)
                json_members += 1
            else:
                if not text_members:
                    text_data = _text_batch(sender, batch)
                member.write(text_data)
                text_members += 1
        self._messages_out += len(batch) * (text_members + json_members)
        self._bytes_out += text_members * len(text_data) + json_members * len(json_data)
        if self._subscribers:
            for text in batch:
                self._publish(
                    Message(text, sender=sender, kind=MESSAGE, room=room, timestamp=timestamp)
                )

    def _publish(self, event: Message) -> None:
        for queue, dropped in self._subscribers:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                dropped[0] += 1
                self._events_dropped += 1


def _plain_chat(line: str) -> bool:
    """True if a text-mode ``line`` is a chat message that :meth:`_handle_frames` relays."""
    return bool(line) and line[0] != "/" and _BAD_TEXT.search(line) is None


def _now() -> float:
    return round(time.time(), 3)


def _text_batch(name: str, batch: list[str]) -> bytes:
    # "name: " before every line, the lines inside multi-line texts (from JSON clients)
    # included, so nobody can fake a line from someone else. Joining with LF and prefixing
    # after every LF does it for the whole batch in C, without a Python loop per message.
    prefix = name + ": "
    return (prefix + "\n".join(batch).replace("\n", "\n" + prefix) + "\n").encode()


def _json_batch(name_json: str, room: str, batch: list[str], timestamp: float) -> bytes:
    # One frame per message; everything but the text is the same for the whole batch, so
    # the frames are the encoded texts joined by "tail + head" (a C loop, not a Python one).
    head = '{"type":"message","from":' + name_json + ',"text":'
    tail = ',"room":' + _encode_str(room) + ',"ts":' + repr(timestamp) + "}\n"
    return (head + (tail + head).join(map(_encode_str, batch)) + tail).encode()
