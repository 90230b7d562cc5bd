"""Rooms and delivery, sans I/O: who is in which room, and handing them messages.

:class:`Rooms` is the hub's hot path. Every batch of messages is encoded once per wire form
(:func:`~chatcast._core.wire.text_batch`, :func:`~chatcast._core.wire.json_batch`) and handed
to each member's ``write`` in one call; nothing here waits, and nothing here changes a peer:
membership lives in this class, a peer's own state in :class:`~chatcast._core.hub.Peer`.
Join and leave notices of a few milliseconds are batched into one write per member.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from .peer import Peer
from .ports import Clock
from .wire import JOIN, LEAVE, MESSAGE, NICK, Message, encode, json_batch, text_batch

__all__ = ["NOTICE_DELAY", "Rooms"]

#: Seconds join and leave notices wait to be sent together (a storm of joins then costs each
#: member one write per this interval, not one per join). Not per loop iteration: uvloop runs
#: ready callbacks after nearly every read, so an iteration holds about one join there.
NOTICE_DELAY: Final = 0.005


class Rooms:
    """The rooms of one server, their members, and delivery to them.

    Args:
        clock: For the short wait that batches join and leave notices.
        notice_limit: Rooms with more members get no join, leave or nick notices
            (``None``: no limit).
    """

    def __init__(self, clock: Clock, notice_limit: int | None) -> None:
        self._clock = clock
        self._notice_limit = notice_limit
        self._rooms: dict[str, set[Peer]] = {}
        self._sinks: list[Callable[[Message], bool]] = []
        # Join and leave notices waiting to be sent together (NOTICE_DELAY), by room: each
        # with the peer it is about (which does not get it).
        self._notices: dict[str, list[tuple[Message, Peer | None]]] = {}
        self._notices_due = False
        # Counters (ServerStatistics).
        self.messages_out = 0
        self.bytes_out = 0
        self.events_dropped = 0

    # -- membership -------------------------------------------------------------------------

    def add(self, room: str, peer: Peer) -> None:
        """Make ``peer`` a member of ``room`` (created on its first member)."""
        self._rooms.setdefault(room, set()).add(peer)

    def discard(self, room: str, peer: Peer) -> None:
        """``peer`` is no longer a member of ``room`` (gone with its last member)."""
        members = self._rooms.get(room)
        if members is not None:
            members.discard(peer)
            if not members:
                del self._rooms[room]

    def names(self, room: str) -> set[str]:
        """The names of ``room``'s members here."""
        return {peer.name for peer in self._rooms.get(room, ())}

    def counts(self) -> dict[str, int]:
        """Each room with members here, and how many."""
        return {room: len(members) for room, members in self._rooms.items()}

    def __len__(self) -> int:
        return len(self._rooms)

    def __contains__(self, room: object) -> bool:
        return room in self._rooms

    # -- events -----------------------------------------------------------------------------

    def subscribe(self, sink: Callable[[Message], bool]) -> None:
        """Call ``sink(event)`` for every event; it returns False when it dropped one."""
        self._sinks.append(sink)

    def unsubscribe(self, sink: Callable[[Message], bool]) -> None:
        """Stop calling ``sink``; no error if it was not subscribed."""
        if sink in self._sinks:
            self._sinks.remove(sink)

    def publish(self, event: Message) -> None:
        """Hand ``event`` to every subscriber; count those that dropped it."""
        for sink in self._sinks:
            if not sink(event):
                self.events_dropped += 1

    # -- delivery ---------------------------------------------------------------------------

    def write(self, peer: Peer, data: bytes) -> None:
        """Hand ``data`` to one peer, counted."""
        peer.write(data)
        self.bytes_out += len(data)

    def announce(self, message: Message) -> int:
        """Deliver an announcement to every member (or its room's); return how many."""
        targets: Iterable[Peer]
        if self._notices:
            self.flush_notices()  # what happened before the announcement arrives first
        if message.room is None:
            targets = [peer for members in self._rooms.values() for peer in members]
        else:
            targets = self._rooms.get(message.room, ())
        count = self._send_many(targets, message)
        self.messages_out += count
        self.publish(message)
        return count

    def deliver_private(self, target: Peer, message: Message) -> None:
        """Deliver a private message to ``target`` (after the notices it is owed)."""
        if self._notices:
            self._flush_room_notices(target.room)
        data = encode(message, target.json)
        target.write(data)
        self.messages_out += 1
        self.bytes_out += len(data)
        self.publish(message)

    def notify(self, room: str, message: Message, exclude: Peer | None) -> None:
        """Tell ``room`` (but ``exclude``) of a join, leave or nick.

        Joins and leaves wait :data:`NOTICE_DELAY` to go out together; rooms over
        ``notice_limit`` get none (nor nick notices).
        """
        members = self._rooms.get(room)
        limit = self._notice_limit
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
                    self._clock.call_later(NOTICE_DELAY, self.flush_notices)
        elif members and (kind != NICK or limit is None or size <= limit):
            if self._notices:
                self._flush_room_notices(room)
            self._send_many((peer for peer in members if peer is not exclude), message)
        self.publish(message)

    def flush_notices(self) -> None:
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
        forms: dict[bool, tuple[list[tuple[bytes, Peer | None]], bytes]] = {}
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
                self.bytes_out += len(data)

    def _send_many(self, targets: Iterable[Peer], message: Message) -> int:
        """Deliver one non-chat message to many, encoding it at most once per wire form."""
        forms: dict[bool, bytes] = {}
        count = 0
        for peer in targets:
            if peer.closing:
                continue
            data = forms.get(peer.json)
            if data is None:
                data = forms[peer.json] = encode(message, peer.json)
            peer.write(data)
            self.bytes_out += len(data)
            count += 1
        return count

    def fan_out(
        self,
        room: str,
        exclude: Peer | None,
        sender: str,
        sender_json: str,
        batch: list[str],
        timestamp: float,
        first_id: int | None = None,
    ) -> None:
        """Hand ``batch`` to every member of ``room`` but ``exclude``; never waits.

        The hot path: both wire forms are built once for the whole batch (lazily, only if
        a recipient needs that form) and handed to each transport in one write. JSON frames
        carry ids from ``first_id`` on.
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
                    json_data = json_batch(sender_json, room, batch, timestamp, first_id)
                member.write(json_data)
                json_members += 1
            else:
                if not text_members:
                    text_data = text_batch(sender, batch)
                member.write(text_data)
                text_members += 1
        self.messages_out += len(batch) * (text_members + json_members)
        self.bytes_out += text_members * len(text_data) + json_members * len(json_data)
        if self._sinks:
            for offset, text in enumerate(batch):
                ident = None if first_id is None else first_id + offset
                self.publish(Message(text, sender, MESSAGE, room, timestamp, None, None, ident))
