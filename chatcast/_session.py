"""What clients ask of the server: frames, hello and authentication, commands, names, rooms.

A mixin of :class:`~chatcast.server.BroadcastServer`, on top of :class:`~._relay.Relay`. The
commands themselves are parsed sans-I/O in :mod:`chatcast._protocol`; here they take effect.
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Final

from ._connection import Connection
from ._core import commands as proto
from ._relay import Relay, _encode_str, _now
from .exceptions import InvalidFrame, ProtocolError
from .message import (
    ERROR,
    INFO,
    JOIN,
    LEAVE,
    NICK,
    PRIVATE,
    Message,
    dump_frame,
    parse_frame,
)

__all__ = ["Session"]

# Frames flood control lets through: heartbeats, and leaving.
_UNMETERED: Final = (proto.Ping, proto.Pong, proto.Quit)

log = logging.getLogger("chatcast.server")


class Session(Relay):
    """Mixin: handling what each connection sends."""

    if TYPE_CHECKING:  # defined by BroadcastServer

        def _disconnect(
            self, conn: Connection, notice: Message | None, leave_reason: str = ""
        ) -> None: ...
        def who(self, room: str | None = None) -> list[str]: ...
        def rooms(self) -> dict[str, int]: ...

    def _enter_text_mode(self, conn: Connection) -> None:
        """Authenticated text-mode connection: in the default room under a guest name,
        receiving at once; its join is announced after ``join_grace`` or its first line."""
        conn.authenticated = True
        self._set_name(conn, self._guest_name())
        self._add_to_room(conn, self.default_room, announce=False)
        self._loop.call_later(self.join_grace, self._announce, conn)

    def _announce(self, conn: Connection) -> None:
        if conn.announced or conn.closing or not conn.room:
            return
        conn.announced = True
        message = Message("", sender=conn.name, kind=JOIN, room=conn.room, timestamp=_now())
        if conn.json:
            conn.send(message)  # confirms the join (and the room) to a JSON client
        self._notify_room(conn.room, message, conn)

    # -- frames -----------------------------------------------------------------------------

    def _handle_frames(self, conn: Connection, frames: list[str | ProtocolError]) -> None:
        """Handle every frame decoded from one read, batching consecutive room messages."""
        if conn.deferred is not None:  # an asynchronous step is pending: keep the order
            conn.deferred.extend(frames)
            return
        batch: list[str] = []
        for index, frame in enumerate(frames):
            if conn.closing:
                break
            if type(frame) is not str:
                self._flush_batch(conn, batch)
                self._error(conn, str(frame))
                continue
            assert isinstance(frame, str)
            try:
                if conn.first_frame:
                    conn.first_frame = False
                    if frame.startswith("{") and self._maybe_hello(conn, frame):
                        if conn.deferred is not None:
                            conn.deferred.extend(frames[index + 1 :])
                            return
                        continue
                if conn.json:
                    command = proto.parse_json(frame)
                elif not frame:
                    continue  # text mode: an empty line (Enter pressed) is ignored
                elif frame[0] != "/":
                    command = proto.Say(proto.check_text(frame))
                else:
                    command = proto.parse_text(frame)
            except InvalidFrame as exc:
                self._flush_batch(conn, batch)
                self._error(conn, str(exc))
                continue
            if not conn.authenticated:
                self._flush_batch(conn, batch)
                self._unauthenticated(conn, command)
                continue
            if type(command) is proto.Say and command.to is None:
                if self._admit(conn):
                    batch.append(command.text)
                elif self._flooding(conn):
                    break  # relay what was accepted before this, then drop the flooder
                continue
            self._flush_batch(conn, batch)
            self._command(conn, command)
            if conn.deferred is not None:
                conn.deferred.extend(frames[index + 1 :])
                return
            if not conn.announced and conn.room and not conn.closing:
                self._announce(conn)  # any first command ends the silent join grace
        self._flush_batch(conn, batch)
        if self._flooding(conn) and not conn.closing:
            self._drop_flooder(conn)

    def _maybe_hello(self, conn: Connection, frame: str) -> bool:
        try:
            obj = parse_frame(frame)  # refuses lone surrogates, which str.encode() cannot take
        except InvalidFrame:
            return False
        if obj["type"] != "hello":
            return False
        try:
            command = proto.parse_json(obj)
            assert isinstance(command, proto.Hello)
            self._hello(conn, command)
        except InvalidFrame as exc:
            conn.json = True
            self._disconnect(conn, Message(str(exc), kind=ERROR))
            self._errors += 1
        return True

    def _hello(self, conn: Connection, hello: proto.Hello) -> None:
        conn.json = True
        if conn.flush_handle is not None:
            conn.flush_handle.cancel()
            conn.flush_handle = None
        if self._token is not None and not conn.authenticated:
            if hello.token is None:
                self._auth_failed(conn, "authentication required")
                return
            if not hmac.compare_digest(hello.token.encode(), self._token):
                self._auth_failed(conn, "authentication failed")
                return
            conn.authenticated = True
        room = proto.check_name(hello.room, "room") if hello.room else self.default_room
        name = hello.name
        if name is not None:
            proto.check_name(name)
            holder = self._names.get(proto.name_key(name))
            if holder is not None and holder is not conn:
                raise InvalidFrame(f"name {name!r} is taken")
            if self._cluster is not None:
                self._cluster.claim(
                    conn, name, room, lambda claimed: self._welcome(conn, name, room, claimed)
                )
                return
        self._welcome(conn, name, room, True)

    def _welcome(self, conn: Connection, name: str | None, room: str, claimed: bool) -> None:
        """Finish a hello: take the name and room, or refuse a name taken elsewhere."""
        if not claimed:
            self._errors += 1
            self._disconnect(conn, Message(f"name {name!r} is taken", kind=ERROR))
            return
        # The text-mode guest identity held since connecting is given up: silently while
        # its join was not announced yet (the usual case), with a leave notice otherwise.
        if conn.room:
            if conn.announced:
                self._leave_room(conn, "switched to JSON mode")
            else:
                self._rooms[conn.room].discard(conn)
                if not self._rooms[conn.room]:
                    del self._rooms[conn.room]
                conn.room = ""
        self._set_name(conn, name or (conn.name or self._guest_name()))
        conn.write(
            dump_frame(
                {
                    "type": "welcome",
                    "name": conn.name,
                    "room": room,
                    "text": self.welcome,
                    "version": proto.PROTOCOL_VERSION,
                    "heartbeat": float(self.heartbeat_interval),
                }
            )
        )
        self._add_to_room(conn, room, announce=True)

    def _unauthenticated(self, conn: Connection, command: proto.Command) -> None:
        if type(command) is proto.Auth:
            assert self._token is not None
            if hmac.compare_digest(command.token.encode(), self._token):
                conn.send(Message("authenticated", kind=INFO))
                self._enter_text_mode(conn)
            else:
                self._auth_failed(conn, "authentication failed")
            return
        if type(command) is proto.Quit:
            self._disconnect(conn, None)
            return
        self._error(conn, "authentication required: send /auth TOKEN first")

    def _auth_failed(self, conn: Connection, reason: str) -> None:
        self._auth_failures += 1
        log.info("authentication failure from %s: %s", conn.address, reason)
        self._disconnect(conn, Message(reason, kind=ERROR))

    def _admit(self, conn: Connection) -> bool:
        """Flood control: take a token from ``conn``'s bucket, or refuse the message.

        Refused messages also fill a second, *violation* bucket that drains at ``rate`` per
        second; a client that fills it past ``4 * burst`` is flooding persistently and is
        disconnected. Occasional bursts over the limit drain away and are forgiven.
        """
        rate = self.rate
        if rate is None:
            return True
        now = self._loop.time()
        elapsed = now - conn.tokens_at
        conn.tokens_at = now
        conn.tokens = min(self.burst, conn.tokens + elapsed * rate)
        conn.strikes = max(0.0, conn.strikes - elapsed * rate)
        if conn.tokens >= 1.0:
            conn.tokens -= 1.0
            conn.refusing = False
            return True
        first = not conn.refusing
        conn.refusing = True
        conn.strikes += 1.0
        self._rate_limited += 1
        if first and not self._flooding(conn):
            # One error per run of refused messages, not one per message: a flood must not
            # turn into a flood of error frames.
            self._error(conn, f"rate limit ({rate:g}/s) exceeded: message dropped")
        return False

    def _flooding(self, conn: Connection) -> bool:
        """True once ``conn`` has filled its violation bucket (see :meth:`_admit`)."""
        return self.rate is not None and conn.strikes > 4 * self.burst

    def _drop_flooder(self, conn: Connection) -> None:
        self._disconnect(
            conn, Message("flooding: too many messages over the rate limit", kind=ERROR)
        )

    def _command(self, conn: Connection, command: proto.Command) -> None:
        if type(command) not in _UNMETERED and not self._admit(conn):
            # Every command takes a token, not only chat: /nick and /join make notices for a
            # whole room, and a flood of them is a flood.
            if self._flooding(conn):
                self._drop_flooder(conn)
            return
        try:
            if type(command) is proto.Say:
                self._private(conn, command.text, command.to)
            elif type(command) is proto.Join:
                self._join(conn, proto.check_name(command.room, "room"))
            elif type(command) is proto.Nick:
                self._nick(conn, proto.check_name(command.name))
            elif type(command) is proto.Who:
                room = command.room or conn.room
                names = self.who(room)
                if conn.json:
                    conn.write(dump_frame({"type": "who", "room": room, "names": names}))
                else:
                    conn.send(Message(f"in {room}: {', '.join(names) or '(nobody)'}", kind=INFO))
            elif type(command) is proto.Rooms:
                rooms = self.rooms()
                if conn.json:
                    conn.write(dump_frame({"type": "rooms", "rooms": rooms}))
                else:
                    listing = ", ".join(f"{r} ({n})" for r, n in rooms.items())
                    conn.send(Message(f"rooms: {listing}", kind=INFO))
            elif type(command) is proto.Help:
                conn.send(Message(proto.HELP_TEXT, kind=INFO))
            elif type(command) is proto.Quit:
                self._disconnect(conn, None, leave_reason=command.reason or "quit")
            elif type(command) is proto.Ping:
                conn.write(b'{"type":"pong"}\n')
            elif type(command) is proto.Pong:
                pass
            elif type(command) is proto.Hello:
                raise InvalidFrame("hello must be the first frame")
            elif type(command) is proto.Auth:
                raise InvalidFrame("already authenticated")
        except InvalidFrame as exc:
            self._error(conn, str(exc))

    def _error(self, conn: Connection, reason: str) -> None:
        self._errors += 1
        log.debug("error for %s: %s", conn.name or conn.address, reason)
        conn.send(Message(reason, kind=ERROR))

    # -- rooms, names, delivery -------------------------------------------------------------

    def _guest_name(self) -> str:
        suffix = self._cluster.guest_suffix() if self._cluster is not None else ""
        while True:
            self._guest_counter += 1
            name = f"guest{self._guest_counter}{suffix}"
            if name not in self._names:  # guest names are their own key
                return name

    def _set_name(self, conn: Connection, name: str) -> None:
        if conn.name:
            key = proto.name_key(conn.name)
            if self._names.get(key) is conn:
                del self._names[key]
            if self._cluster is not None:
                self._cluster.release(conn.name)
        conn.name = name
        conn.name_json = _encode_str(name)
        self._names[proto.name_key(name)] = conn
        if conn.room and self._cluster is not None:
            self._cluster.moved(name, conn.room)

    def _add_to_room(self, conn: Connection, room: str, *, announce: bool) -> None:
        conn.room = room
        self._rooms.setdefault(room, set()).add(conn)
        if self._cluster is not None:
            self._cluster.moved(conn.name, room)
        if announce:
            self._announce(conn)

    def _leave_room(self, conn: Connection, reason: str) -> None:
        room = conn.room
        members = self._rooms.get(room)
        if members is not None:
            members.discard(conn)
            if not members:
                del self._rooms[room]
        conn.room = ""
        if conn.announced:
            conn.announced = False
            message = Message(reason, sender=conn.name, kind=LEAVE, room=room, timestamp=_now())
            if self._closing:
                # Everyone here is being told the server is closing: no n^2 leave notices.
                # The rooms on other servers still hear who left.
                if self._cluster is not None:
                    self._cluster.notice(message)
                return
            self._notify_room(room, message, conn)

    def _join(self, conn: Connection, room: str) -> None:
        if room == conn.room:
            conn.send(Message(f"you are already in {room}", kind=INFO))
            return
        self._leave_room(conn, f"joined {room}")
        self._add_to_room(conn, room, announce=True)
        if not conn.json:
            conn.send(Message(f"you are now in {room}", kind=INFO))

    def _nick(self, conn: Connection, name: str) -> None:
        if name == conn.name:
            return
        holder = self._names.get(proto.name_key(name))
        if holder is not None and holder is not conn:  # "Alice" may become "alice"
            raise InvalidFrame(f"name {name!r} is taken")
        if self._cluster is not None:
            self._cluster.claim(
                conn, name, conn.room, lambda claimed: self._renamed(conn, name, claimed)
            )
            return
        self._renamed(conn, name, True)

    def _renamed(self, conn: Connection, name: str, claimed: bool) -> None:
        if not claimed:
            self._error(conn, f"name {name!r} is taken")
            return
        old = conn.name
        self._set_name(conn, name)
        message = Message(name, sender=old, kind=NICK, room=conn.room, timestamp=_now())
        if conn.announced:
            self._notify_room(conn.room, message, conn)
        # The author is always told (a big room gets no notices); the room is not when it
        # has not heard of the old name yet (a text guest's first command): it will see
        # the join under the new one.
        conn.send(message)

    def _private(self, conn: Connection, text: str, to: str | None) -> None:
        assert to is not None
        message = Message(text, sender=conn.name, kind=PRIVATE, to=to, timestamp=_now())
        target = self._names.get(proto.name_key(to))
        if target is None or target.closing or not target.authenticated:
            if self._cluster is None or not self._cluster.private(message):
                raise InvalidFrame(f"no such user: {to}")
            self._messages_in += 1
            self._publish(message)
            return
        self._messages_in += 1
        self._deliver_private(target, message)
