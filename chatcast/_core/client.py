"""The client's side of the JSON mode, sans I/O: :class:`ClientProtocol`.

Rules of this room (as h11's ``_state.py`` has its own): everything a client decides about
the protocol lives here, and nothing here waits, reads a clock or touches a socket.

* The shell opens a connection, writes :meth:`ClientProtocol.connect`'s hello and feeds every
  byte it reads to :meth:`~ClientProtocol.receive_data`, which returns the messages for the
  application. After each call the shell writes :meth:`~ClientProtocol.data_to_send` (pongs,
  pings) and delivers :meth:`~ClientProtocol.answers_received` to whoever asked.
* Until the server's ``welcome`` the protocol is *handshaking*: a refusal raises
  (:class:`~chatcast.exceptions.AuthenticationError` for a token, else
  :class:`~chatcast.exceptions.ConnectionClosed` with the server's reason).
* The server answers ``who`` and ``rooms`` in the order it reads them, one answer per request:
  each answer belongs to the oldest request still unanswered, even one the caller gave up on
  (:meth:`~ClientProtocol.cancel`), so a cancelled request never takes the next one's answer.
* Heartbeat: the shell reports how long the server has been silent
  (:meth:`~ClientProtocol.check_silence`); the protocol decides when to ping and when to give
  up. Time comes in as an argument, never from a clock read here.
* Whatever the server sends, the protocol never raises once the hello is done: a bad frame is
  logged, counted in :attr:`~ClientProtocol.bad_frames` and skipped.

``docs/protocol.md`` is the normative description of the frames.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from ..exceptions import (
    AuthenticationError,
    ChannelClosed,
    ConnectionClosed,
    InvalidFrame,
    MessageTooLong,
    ProtocolError,
    Refused,
)
from . import commands
from .framing import DEFAULT_MAX_LINE_BYTES, LineDecoder
from .wire import (
    CLOSING,
    ERROR,
    GAP,
    JOIN,
    MESSAGE,
    NICK,
    Message,
    decode_message,
    dump_frame,
    parse_frame,
)

__all__ = ["AUTH_REASONS", "Answer", "ClientProtocol", "Reply", "RequestKind", "is_final"]

log = logging.getLogger("chatcast.client")

#: The server's reasons for refusing a token: a client must not retry with the same one.
AUTH_REASONS: Final = frozenset(
    {
        "authentication failed",
        "authentication required",
        "authentication timeout",
        "operator authentication failed",  # moderation (#14)
    }
)


def is_final(reason: str) -> bool:
    """Whether a connection ended for ``reason`` must not be retried: a refused token, or
    a kick or ban by an operator (``docs/protocol.md``)."""
    return reason in AUTH_REASONS or reason.startswith(("kicked by ", "banned by "))


#: The requests the server answers: ``who`` (a list of names) and ``rooms`` (room -> size).
RequestKind = Literal["who", "rooms"]

_PING: Final = b'{"type":"ping"}\n'
_PONG: Final = b'{"type":"pong"}\n'


def _chat_factory() -> Callable[[str, str, str, float, int | None], Message]:
    """A maker of chat :class:`Message` objects, several times cheaper than ``Message(...)``.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``; on the
    receive path that is a large part of a message's cost. This sets the slots directly,
    which is exactly what ``__init__`` does for a class with no ``__post_init__``, no
    validation and no default factories, as :class:`Message` is: checked here, or it falls
    back to the constructor.
    """
    fields = [field.name for field in dataclasses.fields(Message)]
    plain = (
        fields
        == ["text", "sender", "kind", "room", "timestamp", "to", "seq", "id", "history", "missed"]
        and not hasattr(Message, "__post_init__")
        and "__slots__" in Message.__dict__
    )
    if not plain:
        return lambda text, sender, room, ts, ident: Message(
            text, sender, MESSAGE, room, ts, id=ident
        )
    setters = [Message.__dict__[name].__set__ for name in fields]
    set_text, set_sender, set_kind, set_room, set_ts, set_to, set_seq, set_id = setters[:8]
    set_history, set_missed = setters[8:]
    new = object.__new__

    def chat(text: str, sender: str, room: str, ts: float, ident: int | None) -> Message:
        message: Message = new(Message)
        set_text(message, text)
        set_sender(message, sender)
        set_kind(message, MESSAGE)
        set_room(message, room)
        set_ts(message, ts)
        set_to(message, None)
        set_seq(message, None)
        set_id(message, ident)
        set_history(message, False)
        set_missed(message, None)
        return message

    return chat


_chat: Final = _chat_factory()


class _State(enum.Enum):
    IDLE = "idle"  # no connection (before the first, between reconnections)
    HELLO = "hello"  # hello sent, waiting for the welcome
    OPEN = "open"  # welcomed: frames are messages, answers, heartbeats
    CLOSED = "closed"  # the application closed the client: for good


@dataclass(frozen=True, slots=True)
class Answer:
    """The server's answer to a request.

    Attributes:
        ticket: What :meth:`ClientProtocol.expect_answer` returned for the request.
        value: A ``who`` answer's names (``list[str]``) or a ``rooms`` answer's sizes
            (``dict[str, int]``); an :class:`~chatcast.exceptions.InvalidFrame` if the
            server's answer was malformed.
    """

    ticket: int
    value: list[str] | dict[str, int] | InvalidFrame


@dataclass(frozen=True, slots=True)
class Reply:
    """The server's answer to a frame sent with a ``ref``: an acknowledged message, a
    history request's messages, or a refusal.

    Attributes:
        ref: The ``ref`` the frame carried.
        value: The accepted message's id (``int``), the messages of a history request
            (``list[Message]``, oldest first), or the server's refusal.
    """

    ref: str
    value: int | list[Message] | Refused


class ClientProtocol:
    """The state of one chat client, across its connections, fed bytes and giving back events.

    Args:
        name: The name to ask for; ``None`` lets the server pick.
        room: The room to join; ``None`` for the server's default.
        token: The server's token, when it requires one.
        max_line_bytes: Largest frame accepted from the server (and sent to it).
        tls: Whether the connections run over TLS (only to word the error when a server
            closes a plain connection without a word, as a TLS port does).

    Raises:
        ValueError: ``max_line_bytes`` is not positive.

    Attributes:
        name: My name: the one asked for, then the one the server confirms (welcome, nick).
        room: My room, likewise.
        token: The token the hello carries.
        welcome: The server's welcome text, once heard.
        heartbeat: The server's ping interval in seconds (from its welcome; 30 before).
        errors: ``error`` frames received.
        bad_frames: Frames from the server that were skipped: undecodable, unknown, malformed.
        end_reason: Why the current connection would have ended if it ended now: the last
            ``error`` or ``closing`` reason, else ``"connection closed without a reason"`` (by
            the server, or by something on the way).
        session: The session token of the last welcome (a secret: never log it); the next
            hello presents it to resume, with :attr:`last_id`.
        last_id: The id of the newest message received (live or replayed after a resume).
        duplicates: Messages dropped because their id had been received already.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        room: str | None = None,
        token: str | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        tls: bool = False,
        op_token: str | None = None,
    ) -> None:
        self._decoder = LineDecoder(max_line_bytes)  # raises ValueError for a bad limit
        self.max_line_bytes = max_line_bytes
        # What the server reads (its welcome's max_bytes), if less: a longer frame would be
        # refused without its ref, and a send() would wait for an answer that never comes.
        self._send_limit = max_line_bytes
        self.name = name
        self.room = room
        self.token = token
        self.op_token = op_token  # moderation (#14): presented in the hello
        self.operator = False  # the welcome said so
        self.tls = tls
        self.welcome: str | None = None
        self.heartbeat = 30.0
        self.errors = 0
        self.bad_frames = 0
        self.end_reason = "connection closed without a reason"
        self._state = _State.IDLE
        self._refusal: str | None = None  # a text-mode "! reason" heard before the welcome
        self._heard = False  # anything at all heard on this connection
        self._out: list[bytes] = []
        self._answers: list[Answer] = []
        # Requests on the wire, oldest first: (kind, ticket); and the tickets given up on.
        self._pending: collections.deque[tuple[str, int]] = collections.deque()
        self._cancelled: set[int] = set()
        self._tickets = 0
        self._pinged_at: float | None = None  # silence (s) at which we pinged; None: not
        self.session: str | None = None
        self.last_id = 0
        self.duplicates = 0
        self._resuming = False  # the hello asked to resume
        self._refs = 0
        self._replies: list[Reply] = []
        # History requests being answered: ref -> the messages so far.
        self._histories: dict[str, list[Message]] = {}
        # Pushed ahead of the next messages: a gap when a resume was refused.
        self._notices: list[Message] = []

    # -- state ------------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        """True between the server's welcome and the end of that connection."""
        return self._state is _State.OPEN

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called: for good."""
        return self._state is _State.CLOSED

    @property
    def refused(self) -> bool:
        """True if the server refused our credentials: reconnecting would not help."""
        return is_final(self.end_reason)

    # -- connections ------------------------------------------------------------------------

    def connect(self) -> bytes:
        """Start a new connection and return the hello to send first.

        Forgets what was left of the previous connection (a partial frame, unanswered
        requests); keeps the name, room, welcome text and counters.

        Raises:
            ChannelClosed: :meth:`close` was called.
        """
        if self._state is _State.CLOSED:
            raise ChannelClosed("client is closed")
        self._decoder = LineDecoder(self.max_line_bytes)
        self._state = _State.HELLO
        self._refusal = None
        self._heard = False
        self.end_reason = "connection closed without a reason"
        self._out.clear()
        self._answers.clear()
        self._pending.clear()
        self._cancelled.clear()
        self._histories.clear()
        self._pinged_at = None
        hello: dict[str, Any] = {"type": "hello", "version": commands.PROTOCOL_VERSION}
        if self.name is not None:
            hello["name"] = self.name
        if self.room is not None:
            hello["room"] = self.room
        if self.token is not None:
            hello["token"] = self.token
        self._resuming = self.session is not None
        if self.session is not None:
            hello["session"] = self.session
            hello["last"] = self.last_id
        if self.op_token is not None:
            hello["op"] = self.op_token
        return dump_frame(hello)

    def receive_eof(self) -> str:
        """The server closed the connection: return why, as it would be reported.

        Raises:
            ConnectionClosed: During the hello, with the server's reason if it gave one.
        """
        state = self._state
        if state is not _State.CLOSED:
            self._state = _State.IDLE
        if state is _State.HELLO:
            if self._refusal is not None:
                raise ConnectionClosed(self._refusal)
            if not self._heard and self.welcome is None and not self.tls:
                # Not a word: a TLS port drops a plain hello like this.
                reason = "server closed the connection at once (does it expect TLS?)"
                raise ConnectionClosed(reason)
            raise ConnectionClosed("server closed the connection")
        return self.end_reason

    def connection_lost(self) -> list[int]:
        """The connection is gone (for any reason): return the tickets left unanswered.

        Their callers should be told the connection closed; cancelled ones are not listed.
        """
        if self._state is not _State.CLOSED:
            self._state = _State.IDLE
        lost = [ticket for _, ticket in self._pending if ticket not in self._cancelled]
        self._pending.clear()
        self._cancelled.clear()
        self._answers.clear()
        self._histories.clear()
        self._out.clear()
        return lost

    def close(self, reason: str = "") -> bytes:
        """Close the client for good; return the goodbye frame (to send if a connection is up).

        Afterwards every frame-building method raises
        :class:`~chatcast.exceptions.ChannelClosed`.
        """
        self._state = _State.CLOSED
        return dump_frame({"type": "quit", "reason": reason} if reason else {"type": "quit"})

    # -- sending ----------------------------------------------------------------------------

    def message(self, text: str, *, to: str | None = None, ref: str | None = None) -> bytes:
        """Return the frame that sends ``text`` to my room, or privately to ``to``; with a
        ``ref`` (:meth:`new_ref`), the server answers it (:meth:`replies_received`).

        Raises:
            ValueError: ``text`` is empty or holds forbidden control characters, or ``to`` is
                not a valid name.
            ChannelClosed: :meth:`close` was called.
            MessageTooLong: The frame is over ``max_line_bytes``.
        """
        try:
            commands.check_text(text)
            if to is not None:
                commands.check_name(to, "recipient")
        except InvalidFrame as exc:
            raise ValueError(str(exc)) from None
        frame: dict[str, Any] = {"type": "message", "text": text}
        if to is not None:
            frame["to"] = to
        if ref is not None:
            frame["ref"] = ref
        return self._encode(frame)

    def new_ref(self) -> str:
        """A ``ref`` not used before by this client."""
        self._refs += 1
        return str(self._refs)

    def history(
        self,
        ref: str,
        *,
        room: str | None = None,
        limit: int = 50,
        before: int | None = None,
        after: int | None = None,
    ) -> bytes:
        """Return the history request for ``room`` (default: mine): the latest ``limit``
        messages, or those before/after an id. Its answer is a :class:`Reply` for ``ref``.

        Raises:
            ValueError: ``limit`` is not from 1 to 500, an id is negative, or ``room`` is
                not a valid name.
            ChannelClosed: :meth:`close` was called.
        """
        if not 1 <= limit <= commands.MAX_HISTORY_REQUEST:
            raise ValueError(f"limit must be from 1 to {commands.MAX_HISTORY_REQUEST}")
        frame: dict[str, Any] = {"type": "history", "limit": limit, "ref": ref}
        if room is not None:
            frame["room"] = self._checked(room, "room")
        for key, value in (("before", before), ("after", after)):
            if value is not None:
                if value < 0:
                    raise ValueError(f"{key} must be >= 0")
                frame[key] = value
        self._histories[ref] = []
        return self._encode(frame)

    def replies_received(self) -> list[Reply]:
        """Return (and forget) the answers to frames sent with a ``ref``, in order."""
        replies, self._replies = self._replies, []
        return replies

    def join(self, room: str) -> bytes:
        """Return the frame that moves me to ``room`` (errors as for :meth:`message`)."""
        return self._encode({"type": "join", "room": self._checked(room, "room")})

    def nick(self, name: str) -> bytes:
        """Return the frame that asks for ``name`` (errors as for :meth:`message`)."""
        return self._encode({"type": "nick", "name": self._checked(name, "name")})

    def who(self, room: str | None = None) -> bytes:
        """Return the ``who`` request for ``room`` (default: mine); see :meth:`expect_answer`.

        Raises:
            ChannelClosed: :meth:`close` was called.
            MessageTooLong: The frame is over ``max_line_bytes``.
        """
        return self._encode({"type": "who"} if room is None else {"type": "who", "room": room})

    def rooms(self) -> bytes:
        """Return the ``rooms`` request (errors as for :meth:`who`)."""
        return self._encode({"type": "rooms"})

    def moderation(self, kind: str, **fields: Any) -> bytes:
        """Return a moderation frame (``op``, ``kick``, ``ban``...; ``docs/protocol.md``);
        fields that are ``None`` are left out. The answer comes as messages (``info``,
        ``error``, ``topic``).

        Raises:
            ChannelClosed: :meth:`close` was called.
            MessageTooLong: The frame is over ``max_line_bytes``.
        """
        frame = {"type": kind, **{k: v for k, v in fields.items() if v is not None}}
        return self._encode(frame)

    def expect_answer(self, kind: RequestKind) -> int:
        """Note that a request of ``kind`` is on the wire; return its ticket.

        Call it when the request's frame has been written, not before: the server answers
        requests in the order it reads them.
        """
        self._tickets += 1
        self._pending.append((kind, self._tickets))
        return self._tickets

    def cancel(self, ticket: int) -> None:
        """Give up on a request: its answer, when it comes, is dropped (and only its own)."""
        if any(pending == ticket for _, pending in self._pending):
            self._cancelled.add(ticket)

    def check_silence(self, silent_for: float) -> float | None:
        """Decide on the heartbeat, given how long the server has been silent, in seconds.

        After :attr:`heartbeat` seconds of silence a ping is queued (:meth:`data_to_send`);
        if the silence then lasts half a heartbeat more, the server is given up on.

        Returns:
            Seconds of silence still to go before the next decision, or ``None``: the server
            stopped answering, end the connection.
        """
        if self._pinged_at is None:
            if silent_for < self.heartbeat:
                return self.heartbeat - silent_for
            self._out.append(_PING)
            self._pinged_at = silent_for
        deadline = self._pinged_at + self.heartbeat / 2
        return deadline - silent_for if silent_for < deadline else None

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes the protocol wants sent: pongs and pings."""
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def answers_received(self) -> list[Answer]:
        """Return (and forget) the answers received since the last call, in order."""
        answers, self._answers = self._answers, []
        return answers

    def _checked(self, name: str, what: str) -> str:
        try:
            return commands.check_name(name, what)
        except InvalidFrame as exc:
            raise ValueError(str(exc)) from None

    def _encode(self, frame: dict[str, Any]) -> bytes:
        if self._state is _State.CLOSED:
            raise ChannelClosed("client is closed")
        data = dump_frame(frame)
        if len(data) - 1 > self._send_limit:
            raise MessageTooLong(len(data) - 1, self._send_limit)
        return data

    # -- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Message]:
        """Take bytes from the server; return the messages they complete, in order.

        Messages are every frame of the kinds :data:`~chatcast.message.KINDS` (chat, notices,
        errors, ``closing``); answers, pings and the welcome are handled here.

        Raises:
            AuthenticationError: During the hello: the server refused the token.
            ConnectionClosed: During the hello: the server refused us (name taken, full...),
                or sent a frame too broken to read. Once welcomed, nothing is raised.
        """
        self._pinged_at = None  # the server is alive
        frames = self._decoder.feed(data)
        if self._state is not _State.OPEN:
            if self._state is not _State.HELLO or not frames:
                return []
            frames = self._hello_frames(frames)
        out: list[Message] = []
        if self._notices:
            out.extend(self._notices)
            self._notices.clear()
        append = out.append
        loads = json.loads
        for frame in frames:
            # The common case, a chat message, decoded with one json.loads and checked field
            # by field; anything unusual (a \u escape that may hide a lone surrogate, an int
            # timestamp, extra fields) takes the full path, which refuses what it must.
            if (
                frame.__class__ is str
                and frame.startswith('{"type":"message",')
                and "\\u" not in frame
            ):
                try:
                    # A JSON text that starts with "{" is an object: a dict.
                    obj = loads(frame)
                    text, sender, room, ts = obj["text"], obj["from"], obj["room"], obj["ts"]
                    ident = obj.get("id")
                except (ValueError, RecursionError, KeyError):
                    pass  # the full path says what is wrong
                else:
                    if (
                        # nothing but type, from, text, room, ts and (version 2) id
                        len(obj) == (5 if ident is None else 6)
                        and obj["type"] == MESSAGE  # not a later duplicate "type"
                        and text.__class__ is str
                        and sender.__class__ is str
                        and room.__class__ is str
                        and ts.__class__ is float
                        and ts - ts == 0.0  # finite
                        and (ident is None or (ident.__class__ is int and ident >= 0))
                    ):
                        if ident is not None:
                            if ident <= self.last_id:
                                self.duplicates += 1
                                continue
                            self.last_id = ident
                        append(_chat(text, sender, room, ts, ident))
                        continue
            elif frame.__class__ is str and frame.startswith('{"type":"ack","ref":'):
                # The answer to a message sent with a ref: as common as chat when pipelining.
                try:
                    obj = loads(frame)
                    ref, ident = obj["ref"], obj["id"]
                except (ValueError, RecursionError, KeyError):
                    pass  # the full path says what is wrong
                else:
                    if ref.__class__ is str and ident.__class__ is int:
                        self._replies.append(Reply(ref, ident))
                        continue
            message = self._frame(frame)
            if message is not None:
                append(message)
        return out

    def _hello_frames(self, frames: list[str | ProtocolError]) -> list[str | ProtocolError]:
        """Handle frames until the welcome; return the frames that came after it."""
        self._heard = True
        for index, frame in enumerate(frames):
            if isinstance(frame, ProtocolError):
                self._state = _State.IDLE
                raise ConnectionClosed(f"bad frame from server: {frame}")
            if not frame.startswith("{"):
                # Text-mode lines sent before our hello was read: the banner, or a
                # "! reason" when the server refuses us (e.g. full).
                if frame.startswith("! "):
                    self._refusal = frame[2:]
                elif self.welcome is None:
                    self.welcome = frame
                continue
            try:
                obj = parse_frame(frame)
            except InvalidFrame:
                continue
            if obj["type"] == "welcome":
                self._welcomed(obj)
                self._state = _State.OPEN
                return frames[index + 1 :]
            if obj["type"] == "error":
                self._state = _State.IDLE
                reason = str(obj.get("text", "refused"))
                if reason in AUTH_REASONS:
                    raise AuthenticationError(reason)
                raise ConnectionClosed(reason)
        return []

    def _welcomed(self, obj: dict[str, Any]) -> None:
        self.operator = obj.get("op") is True
        self.name = str(obj.get("name") or self.name)
        self.room = str(obj.get("room") or self.room)
        limit = obj.get("max_bytes")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            self._send_limit = min(self.max_line_bytes, limit)
        session, last = obj.get("session"), obj.get("last")
        resumed = obj.get("resumed") is True
        if isinstance(session, str) and 0 < len(session) <= 64:
            self.session = session
        if not resumed and isinstance(last, int) and not isinstance(last, bool) and last >= 0:
            # A new session: what came before it is history, not missed.
            if self._resuming:
                self._notices.append(
                    Message(
                        "the server could not resume the session: messages may have been missed",
                        kind=GAP,
                        room=self.room,
                    )
                )
            self.last_id = last
        self._resuming = False
        if isinstance(obj.get("text"), str):
            self.welcome = obj["text"]
        heartbeat = obj.get("heartbeat")
        if isinstance(heartbeat, int | float) and not isinstance(heartbeat, bool):
            if 0 < heartbeat < float("inf"):
                self.heartbeat = float(heartbeat)

    def _frame(self, frame: str | ProtocolError) -> Message | None:
        """Handle one frame of an open connection; return the message it carries, if any."""
        if isinstance(frame, ProtocolError):
            self._bad(f"bad frame from server: {frame}")
            return None
        if not frame.startswith("{") and not frame.lstrip().startswith("{"):
            return None  # a stray text-mode line: not for us (JSON may start with blanks)
        try:
            obj = parse_frame(frame)
        except InvalidFrame as exc:
            self._bad(f"bad frame from server: {exc}")
            return None
        kind = obj["type"]
        if kind == "ping":
            self._out.append(_PONG)
            return None
        if kind in ("who", "rooms"):
            self._answer(kind, obj)
            return None
        if kind == "ack" or (kind == "history" and "ref" in obj):
            self._reply(kind, obj)
            return None
        if kind == "pong":
            return None
        if kind == "welcome":
            self._welcomed(obj)
            return None
        ref = obj.get("ref")
        if ref is not None and kind == ERROR:
            self._replies.append(Reply(str(ref), Refused(str(obj.get("text", "refused")))))
            self._histories.pop(str(ref), None)
            self.errors += 1
            return None
        try:
            message = decode_message(obj)
        except InvalidFrame as exc:
            self._bad(f"unexpected frame from server: {exc}")
            return None
        if ref is not None:
            collected = self._histories.get(str(ref))
            if collected is not None:
                collected.append(message)
                return None
        ident = message.id
        if ident is not None and message.kind != GAP:
            if ident > self.last_id:
                self.last_id = ident
            elif not message.history:
                self.duplicates += 1
                return None
        if message.kind == NICK and message.sender == self.name:
            self.name = message.text
        elif message.kind == JOIN and message.sender == self.name:
            self.room = message.room
        elif message.kind == CLOSING:
            self.end_reason = f"closed by server: {message.text}"
        elif message.kind == ERROR:
            # If the server closes the connection next, this was the reason.
            self.errors += 1
            self.end_reason = message.text
        return message

    def _answer(self, kind: str, obj: dict[str, Any]) -> None:
        # One answer per request, in order: it belongs to the oldest request, answered or
        # not (a cancelled one is simply not told).
        if not self._pending or self._pending[0][0] != kind:
            self._bad(f"unexpected {kind!r} answer from server")
            return
        _, ticket = self._pending.popleft()
        value = _answer_value(kind, obj)
        if isinstance(value, InvalidFrame):
            self._bad(f"bad {kind!r} answer from server: {value}")
        if ticket in self._cancelled:
            self._cancelled.discard(ticket)
        else:
            self._answers.append(Answer(ticket, value))

    def _reply(self, kind: str, obj: dict[str, Any]) -> None:
        ref = str(obj["ref"])
        if kind == "ack":
            ident = obj.get("id")
            if isinstance(ident, int) and not isinstance(ident, bool):
                self._replies.append(Reply(ref, ident))
            else:
                self._bad("bad 'ack' from server: no id")
            return
        collected = self._histories.pop(ref, None)
        if collected is None:
            self._bad("unexpected 'history' answer from server")
            return
        self._replies.append(Reply(ref, collected))

    def _bad(self, what: str) -> None:
        self.bad_frames += 1
        log.warning("%s", what)


def _answer_value(kind: str, obj: dict[str, Any]) -> list[str] | dict[str, int] | InvalidFrame:
    """The value of a ``who`` or ``rooms`` answer, checked; absent means empty."""
    if kind == "who":
        names = obj.get("names")
        if names is None:
            return []
        if isinstance(names, list) and all(isinstance(name, str) for name in names):
            return names
        return InvalidFrame('"names" must be a list of strings')
    rooms = obj.get("rooms")
    if rooms is None:
        return {}
    if isinstance(rooms, dict) and all(
        isinstance(size, int) and not isinstance(size, bool) for size in rooms.values()
    ):
        return rooms
    return InvalidFrame('"rooms" must map room names to counts')
