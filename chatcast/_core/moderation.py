"""Moderation, sans I/O: operators, kicks, bans, mutes and topics (issue #14).

Rules of this room:

* **Operators are connections**, not names: a peer becomes one by presenting the operator
  token (the JSON hello's ``"op"``, or ``/op TOKEN``), compared in constant time, and stops
  being one when it disconnects. The server's console and the Python API act as ``"server"``.
  A wrong token counts as an authentication failure, costs the peer
  :data:`OP_FAILURE_COST` flood-control tokens, and after :data:`MAX_OP_FAILURES` on one
  connection the peer is disconnected. Tokens are never logged or shown.
* **Bans** are records (:class:`BanRecord`) on a name (compared as
  :func:`~.commands.name_key` compares names), an address, or both, with an optional expiry in
  wall-clock seconds (so a record means the same after a restart and on another server). A
  ban on the name of a member connected here also covers the address it is connected from,
  unless that address is loopback or another member is connected from it too (a NAT, a
  shared machine): that is how a ban survives a change of name. A banned address is refused
  at the accept, before a byte is decoded; a banned name at the hello and at ``/nick``.
* **Mutes** are per room and name (carried over a change of name); a muted member's room
  messages are refused, its private messages are not.
* **Topics** are per room, shown to whoever enters the room.
* Every action is an event (a :class:`~.wire.Message` of one of
  :data:`~.wire.MODERATION_KINDS`) and a log line: who did what to whom.
* Everything is bounded (:data:`MAX_BANS`, :data:`MAX_MUTES`, :data:`MAX_TOPICS`) and
  serialisable (:meth:`Moderation.records`, :meth:`Moderation.restore`: plain dicts).

The hub owns one :class:`Moderation` and calls it from a few hooks; this module sees the hub
only through :class:`Host`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

from ..exceptions import InvalidFrame
from . import commands as proto
from .modrecords import (
    BanRecord,
    MuteRecord,
    TopicRecord,
    format_duration,
    normalize_address,
    parse_record,
)
from .peer import Peer
from .ports import Clock, ClusterLink
from .rooms import Rooms
from .wire import (
    BAN,
    ERROR,
    INFO,
    KICK,
    MUTE,
    OP,
    TOPIC,
    UNBAN,
    UNMUTE,
    Message,
)

__all__ = [
    "MAX_BANS",
    "MAX_MUTES",
    "MAX_OP_FAILURES",
    "MAX_TOPICS",
    "MAX_TOPIC_LENGTH",
    "OP_FAILURE_COST",
    "BanRecord",
    "Host",
    "Moderation",
    "MuteRecord",
    "TopicRecord",
    "UnknownTarget",
    "format_duration",
    "normalize_address",
]

log = logging.getLogger("chatcast.server")

#: Most bans held at once (expired ones are dropped first).
MAX_BANS: Final = 10_000
#: Most mutes held at once.
MAX_MUTES: Final = 10_000
#: Most rooms with a topic.
MAX_TOPICS: Final = 1_000
#: The longest topic, in characters.
MAX_TOPIC_LENGTH: Final = 300
#: Failed operator attempts one connection may make; the next failure disconnects it.
MAX_OP_FAILURES: Final = 3
#: Flood-control tokens a failed operator attempt costs, on top of its own frame.
OP_FAILURE_COST: Final = 5.0
#: Who acts when the server's console or the Python API does.
SERVER: Final = "server"


class UnknownTarget(InvalidFrame):
    """Nobody of that name is connected, or no ban, mute or topic matches."""


class Host(Protocol):
    """What moderation needs of the hub (:class:`~.hub.Hub` is one)."""

    peers: set[Peer]
    rooms: Rooms
    cluster: ClusterLink | None
    clock: Clock
    auth_failures: int

    def peer_named(self, name: str) -> Peer | None: ...

    def disconnect(self, peer: Peer, notice: Message | None, leave_reason: str = "") -> None: ...

    def end_session(self, peer: Peer) -> None: ...

    def now(self) -> float: ...


def _peer_ip(peer: Peer) -> str:
    """The IP part of a peer's ``host:port`` address."""
    return peer.address.rpartition(":")[0]


def _check_reason(reason: str) -> str:
    reason = reason.strip()
    if "\n" in reason:
        raise InvalidFrame("a reason must be one line")
    return proto.check_text(reason)[: proto.MAX_REASON_LENGTH] if reason else ""


class Moderation:
    """The moderation state of one server, and the actions on it.

    Args:
        host: The hub acted on.
        op_token: The operator token, or ``None`` (then nobody but the server is one).
        wall: Wall-clock seconds (ban expiry and record times).
    """

    def __init__(self, host: Host, op_token: str | None, *, wall: Callable[[], float]) -> None:
        self._host = host
        self._op_token = op_token.encode() if op_token is not None else None
        self._wall = wall
        #: Peers that are operators.
        self.operators: set[Peer] = set()
        self._op_failures: dict[Peer, int] = {}
        self._by_name: dict[str, BanRecord] = {}  # name_key -> ban
        self._by_address: dict[str, BanRecord] = {}  # canonical address -> ban
        #: Mutes, by (room, name_key): empty means nobody is muted (the hub's fast check).
        self.mutes: dict[tuple[str, str], MuteRecord] = {}
        self._topics: dict[str, TopicRecord] = {}
        #: Connections refused because their address is banned.
        self.refused = 0
        #: Called with each action taken here, as a plain dict, for the other servers of a
        #: cluster (set by the backplane glue); they :meth:`apply` it.
        self.share: Callable[[dict[str, Any]], None] | None = None
        self._applying = False  # in apply(): an action from elsewhere is not shared again

    # -- hooks: the hub asks ----------------------------------------------------------------

    def address_refusal(self, address: str) -> str | None:
        """Why a connection from ``address`` (a peer's ``host:port``, IPv6 hosts unbracketed
        as asyncio gives them: ``::1:5000``) is refused, or None."""
        if not self._by_address:
            return None
        ip = address.rpartition(":")[0]
        try:
            ban = self._by_address.get(normalize_address(ip))
        except InvalidFrame:
            ban = self._by_address.get(ip)
        if ban is None:
            return None
        now = self._wall()
        if ban.expired(now):
            self._drop(ban)
            return None
        self.refused += 1
        # One log line per ban for a client reconnecting in a loop, not one per attempt.
        (log.info if self.refused & (self.refused - 1) == 0 else log.debug)(
            "refused %s: banned (%d refused so far)", address, self.refused
        )
        return ban.refusal(now)

    def name_refusal(self, name: str) -> str | None:
        """Why ``name`` may not be taken (a banned name), or None."""
        if not self._by_name:
            return None
        ban = self._by_name.get(proto.name_key(name))
        if ban is None:
            return None
        now = self._wall()
        if ban.expired(now):
            self._drop(ban)
            return None
        return ban.refusal(now)

    def muted(self, peer: Peer) -> bool:
        """Whether ``peer`` may not speak in its room (call only when :attr:`mutes`)."""
        return (peer.room, proto.name_key(peer.name)) in self.mutes

    def is_operator(self, peer: Peer) -> bool:
        """Whether ``peer`` is an operator."""
        return peer in self.operators

    def operator_names(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` that are operators here."""
        ops = {peer.name for peer in self.operators}
        return [name for name in names if name in ops]

    def check_op_token(self, token: str) -> bool:
        """Whether ``token`` is the operator token (constant-time compare)."""
        return self._op_token is not None and hmac.compare_digest(token.encode(), self._op_token)

    def welcomed(self, peer: Peer) -> None:
        """``peer`` finished its hello: an operator (by its hello) is announced now."""
        if peer in self.operators:
            self._event(Message("", sender=peer.name, kind=OP), f"{peer.name} is now an operator")

    def topic_message(self, room: str) -> Message | None:
        """The topic of ``room`` as a message for whoever enters it, or None."""
        topic = self._topics.get(room)
        if topic is None:
            return None
        return Message(topic.text, sender=topic.by, kind=TOPIC, room=room, timestamp=topic.at)

    def renamed(self, old: str, new: str) -> None:
        """A member changed name: its mutes follow it."""
        if not self.mutes:
            return
        old_key, new_key = proto.name_key(old), proto.name_key(new)
        for room, key in [k for k in self.mutes if k[1] == old_key]:
            record = self.mutes.pop((room, key))
            self.mutes[(room, new_key)] = MuteRecord(room, new, record.reason, record.by, record.at)

    def forget(self, peer: Peer) -> None:
        """``peer`` is gone."""
        self.operators.discard(peer)
        self._op_failures.pop(peer, None)

    # -- commands from clients --------------------------------------------------------------

    def command(self, peer: Peer, command: proto.ModerationCommand) -> None:
        """Do what an operator (or, for ``/op`` and showing a topic, anyone) asks.

        Raises:
            InvalidFrame: A refusal, with the reason for the asker.
        """
        if type(command) is proto.Op:
            self._op(peer, command.token)
            return
        if type(command) is proto.Topic and command.text is None:
            room = proto.check_name(command.room, "room") if command.room else peer.room
            topic = self.topic_message(room)
            peer.send(topic or Message(f"no topic in {room}", kind=INFO, room=room))
            return
        if peer not in self.operators:
            word = type(command).__name__.lower()
            raise InvalidFrame(f"/{word} is for operators (see /op)")
        by = peer.name
        if type(command) is proto.Kick:
            self.kick(command.name, command.reason, by=by)
            peer.send(Message(f"kicked {command.name}", kind=INFO))
        elif type(command) is proto.Ban:
            ban = self.ban(command.name, command.address, command.duration, command.reason, by=by)
            peer.send(Message(f"banned {ban.describe(self._wall())}", kind=INFO))
        elif type(command) is proto.Unban:
            ban = self.unban(command.name, command.address, by=by)
            peer.send(Message(f"unbanned {ban.target()}", kind=INFO))
        elif type(command) is proto.Bans:
            now = self._wall()
            lines = [ban.describe(now) for ban in self.bans()]
            peer.send(Message("bans:\n" + "\n".join(lines) if lines else "no bans", kind=INFO))
        elif type(command) is proto.Mute:
            mute = self.mute(command.name, command.room, command.reason, by=by)
            peer.send(Message(f"muted {mute.name} in {mute.room}", kind=INFO))
        elif type(command) is proto.Unmute:
            mute = self.unmute(command.name, command.room, by=by)
            peer.send(Message(f"unmuted {mute.name} in {mute.room}", kind=INFO))
        elif type(command) is proto.Topic:
            assert command.text is not None
            room = proto.check_name(command.room, "room") if command.room else peer.room
            self.set_topic(room, command.text, by=by)
            if room != peer.room:  # in its room, the topic message itself confirms
                peer.send(
                    Message(f"topic of {room} {'set' if command.text else 'cleared'}", kind=INFO)
                )

    def _op(self, peer: Peer, token: str) -> None:
        if peer in self.operators:
            peer.send(Message("you are already an operator", kind=INFO))
            return
        if self._op_token is None:
            raise InvalidFrame("this server has no operator token")
        if self.check_op_token(token):
            self.operators.add(peer)
            self._op_failures.pop(peer, None)
            peer.send(Message("you are now an operator", kind=INFO))
            self.welcomed(peer)
            return
        host = self._host
        host.auth_failures += 1
        failures = self._op_failures[peer] = self._op_failures.get(peer, 0) + 1
        # The token is never logged: only who tried, from where.
        log.info("operator authentication failure from %s (%s)", peer.name, peer.address)
        if peer.bucket is not None:
            peer.bucket.strike(host.clock.time(), OP_FAILURE_COST)
        if failures >= MAX_OP_FAILURES:
            host.disconnect(peer, Message("too many failed operator attempts", kind=ERROR))
            return
        raise InvalidFrame("operator authentication failed")

    # -- actions (clients' commands, the console and the Python API) ------------------------

    def kick(self, name: str, reason: str = "", *, by: str = SERVER) -> None:
        """Disconnect the member called ``name``, telling it and its room why.

        Raises:
            UnknownTarget: Nobody of that name is connected here.
            InvalidFrame: A reason with control characters.
        """
        reason = _check_reason(reason)
        peer = self._host.peer_named(name)
        if peer is None or peer.closing:
            remote = self._remote_name(name)
            if remote is None or self._applying:
                raise UnknownTarget(f"no such user: {name[: proto.MAX_NAME_LENGTH]}")
            # On another server: it kicks (and tells its room); the event is here too.
            self._share({"action": "kick", "name": remote, "reason": reason, "by": by})
            self._event(
                Message(reason, sender=by, kind=KICK, to=remote),
                f"{by} kicked {remote} (on another server)" + (f" ({reason})" if reason else ""),
            )
            return
        target = peer.name
        self._remove(peer, f"kicked by {by}" + (f": {reason}" if reason else ""))
        self._event(
            Message(reason, sender=by, kind=KICK, to=target, room=peer.room or None),
            f"{by} kicked {target}" + (f" ({reason})" if reason else ""),
        )
        self._share({"action": "kick", "name": target, "reason": reason, "by": by})

    def ban(
        self,
        name: str | None = None,
        address: str | None = None,
        duration: float | None = None,
        reason: str = "",
        *,
        by: str = SERVER,
    ) -> BanRecord:
        """Ban a name, an address, or both, for ``duration`` seconds (``None``: until lifted).

        Connected members it matches are disconnected with the reason. A ban on the name of
        a member connected here also covers its address, unless that is loopback or another
        member is connected from there too. A new ban on a name or address already banned
        replaces the old one.

        Returns:
            The ban made.

        Raises:
            InvalidFrame: Neither a name nor an address, a bad name, address, duration or
                reason, or :data:`MAX_BANS` bans already held.
        """
        if name is None and address is None:
            raise InvalidFrame("ban whom? give a name or an address")
        if name is not None:
            name = proto.check_name(name)
        if address is not None:
            address = normalize_address(address)
        if duration is not None and not 0 < duration <= proto.MAX_DURATION:
            raise InvalidFrame("a duration must be more than 0 seconds and at most 10 years")
        reason = _check_reason(reason)
        peer = self._host.peer_named(name) if name is not None else None
        if address is None and peer is not None and not peer.closing:
            address = self._own_address(peer)
        now = self._wall()
        until = None if duration is None else now + duration
        return self._enforce(BanRecord(name, address, until, reason, by, now))

    def _enforce(self, ban: BanRecord) -> BanRecord:
        """Hold ``ban`` (replacing bans on the same name or address), drop the members it
        matches, and tell: event, log, the other servers."""
        now = self._wall()
        for old in (
            self._by_name.get(proto.name_key(ban.name)) if ban.name is not None else None,
            self._by_address.get(ban.address) if ban.address is not None else None,
        ):
            if old is not None:
                self._drop(old)
        if len(self._by_name) + len(self._by_address) >= MAX_BANS:
            self._purge(now)
            if len(self._by_name) + len(self._by_address) >= MAX_BANS:
                raise InvalidFrame(f"too many bans ({MAX_BANS}): lift some first")
        self._add(ban)
        refusal = ban.refusal(now)
        for member in list(self._host.peers):
            if not member.closing and self._matches(ban, member):
                self._remove(member, refusal)
        left = "until lifted" if ban.until is None else f"for {format_duration(ban.until - now)}"
        self._event(
            Message(ban.reason, sender=ban.by, kind=BAN, to=ban.target(), timestamp=now),
            f"{ban.by} banned {ban.target()} {left}" + (f" ({ban.reason})" if ban.reason else ""),
        )
        self._share({"action": "ban", **ban.to_dict()})
        return ban

    def unban(
        self, name: str | None = None, address: str | None = None, *, by: str = SERVER
    ) -> BanRecord:
        """Lift the ban on ``name`` or ``address`` (the whole ban, if it covers both).

        Returns:
            The ban lifted.

        Raises:
            UnknownTarget: No such ban.
            InvalidFrame: A bad address.
        """
        ban = None
        if name is not None:
            ban = self._by_name.get(proto.name_key(name))
        elif address is not None:
            ban = self._by_address.get(normalize_address(address))
        if ban is None:
            target = name if name is not None else f"@{address}"
            raise UnknownTarget(f"no ban on {target[:64]}")
        self._drop(ban)
        self._event(
            Message("", sender=by, kind=UNBAN, to=ban.target()), f"{by} unbanned {ban.target()}"
        )
        self._share({"action": "unban", "name": ban.name, "address": ban.address, "by": by})
        return ban

    def bans(self) -> list[BanRecord]:
        """The bans in force, oldest first (expired ones are dropped)."""
        self._purge(self._wall())
        unique = {id(ban): ban for ban in (*self._by_name.values(), *self._by_address.values())}
        return sorted(unique.values(), key=lambda ban: ban.at)

    def mute(
        self, name: str, room: str | None = None, reason: str = "", *, by: str = SERVER
    ) -> MuteRecord:
        """Stop ``name`` speaking in ``room`` (default: the room it is in now).

        Raises:
            UnknownTarget: No ``room`` given and nobody called ``name`` is here.
            InvalidFrame: A bad name, room or reason, or :data:`MAX_MUTES` mutes held.
        """
        proto.check_name(name)
        reason = _check_reason(reason)
        peer = self._host.peer_named(name)
        if room is None:
            if peer is not None and peer.room:
                room = peer.room
            else:
                remote = self._remote_name(name)
                cluster = self._host.cluster
                if remote is None or cluster is None:
                    raise UnknownTarget(f"{name[: proto.MAX_NAME_LENGTH]} is not here: name a room")
                room, name = cluster.remote[remote], remote
        proto.check_name(room, "room")
        if peer is not None:
            name = peer.name
        key = (room, proto.name_key(name))
        if key not in self.mutes and len(self.mutes) >= MAX_MUTES:
            raise InvalidFrame(f"too many mutes ({MAX_MUTES}): lift some first")
        record = self.mutes[key] = MuteRecord(room, name, reason, by, self._wall())
        if peer is not None:
            peer.send(
                Message(
                    f"you are muted in {room} by {by}" + (f": {reason}" if reason else ""),
                    kind=INFO,
                )
            )
        self._event(
            Message(reason, sender=by, kind=MUTE, to=name, room=room),
            f"{by} muted {name} in {room}" + (f" ({reason})" if reason else ""),
        )
        self._share({"action": "mute", **record.to_dict()})
        return record

    def unmute(self, name: str, room: str | None = None, *, by: str = SERVER) -> MuteRecord:
        """Let ``name`` speak in ``room`` again (default: the room it is in now).

        Raises:
            UnknownTarget: ``name`` is not muted there.
        """
        peer = self._host.peer_named(name)
        if room is None and peer is not None:
            room = peer.room
        if room is None and self._host.cluster is not None:
            remote = self._remote_name(name)
            room = self._host.cluster.remote.get(remote) if remote is not None else None
        record = self.mutes.pop((room or "", proto.name_key(name)), None)
        if record is None:
            where = f" in {room}" if room else ""
            raise UnknownTarget(f"{name[: proto.MAX_NAME_LENGTH]} is not muted{where}")
        if peer is not None:
            peer.send(Message(f"you may speak in {record.room} again", kind=INFO))
        self._event(
            Message("", sender=by, kind=UNMUTE, to=record.name, room=record.room),
            f"{by} unmuted {record.name} in {record.room}",
        )
        self._share({"action": "unmute", "name": record.name, "room": record.room, "by": by})
        return record

    def set_topic(self, room: str, text: str, *, by: str = SERVER) -> TopicRecord | None:
        """Set the topic of ``room`` (``""`` clears it); its members see it at once.

        Returns:
            The topic set, or ``None`` when cleared.

        Raises:
            InvalidFrame: A bad room or text, a topic over :data:`MAX_TOPIC_LENGTH`, or
                :data:`MAX_TOPICS` rooms with a topic already.
        """
        proto.check_name(room, "room")
        text = text.strip()
        if text:
            proto.check_text(text)
            if "\n" in text:
                raise InvalidFrame("a topic must be one line")
            if len(text) > MAX_TOPIC_LENGTH:
                raise InvalidFrame(f"a topic is at most {MAX_TOPIC_LENGTH} characters")
            if room not in self._topics and len(self._topics) >= MAX_TOPICS:
                raise InvalidFrame(f"too many topics ({MAX_TOPICS}): clear some first")
        now = self._host.now()
        record = None
        if text:
            record = self._topics[room] = TopicRecord(room, text, by, now)
        else:
            self._topics.pop(room, None)
        message = Message(text, sender=by, kind=TOPIC, room=room, timestamp=now)
        # Delivered to the room's members, and an event (announce() publishes it).
        self._host.rooms.announce(message)
        self._share({"action": "topic", "room": room, "text": text, "by": by})
        log.info(
            "moderation: %s %s",
            by,
            f"set the topic of {room}" if text else f"cleared {room}'s topic",
        )
        return record

    def topic(self, room: str) -> TopicRecord | None:
        """The topic of ``room``, or ``None``."""
        return self._topics.get(room)

    # -- the other servers of a cluster -----------------------------------------------------

    def apply(self, action: Mapping[str, Any]) -> None:
        """Do an action another server took (what it passed to :attr:`share`), here: drop
        the members it concerns, hold the record, tell this server's events and log. An
        action about nobody here (a kick of a name held elsewhere) changes nothing.

        Raises:
            ValueError: Not an action :attr:`share` is given.
        """
        self._applying = True
        try:
            fields = {k: v for k, v in action.items() if k not in ("action", "type")}
            kind = action.get("action")
            by = fields.get("by")
            if not isinstance(by, str):
                raise ValueError('an action needs "by"')
            if kind == "ban":
                ban = parse_record({**fields, "type": "ban"})
                assert isinstance(ban, BanRecord)
                if not ban.expired(self._wall()):
                    self._enforce(ban)
            elif kind == "unban":
                self.unban(fields.get("name"), fields.get("address"), by=by)
            elif kind == "kick":
                if self._host.peer_named(str(fields.get("name"))) is not None:
                    self.kick(str(fields["name"]), str(fields.get("reason", "")), by=by)
            elif kind == "mute":
                mute = parse_record({**fields, "type": "mute"})
                assert isinstance(mute, MuteRecord)
                self.mute(mute.name, mute.room, mute.reason, by=by)
            elif kind == "unmute":
                self.unmute(str(fields.get("name")), fields.get("room"), by=by)
            elif kind == "topic":
                self.set_topic(str(fields.get("room")), str(fields.get("text", "")), by=by)
            else:
                raise ValueError(f"unknown moderation action {kind!r}")
        except UnknownTarget:
            pass  # already lifted here, or about nobody here
        except (TypeError, InvalidFrame) as exc:
            raise ValueError(f"not a moderation action: {exc}") from None
        finally:
            self._applying = False

    def _share(self, action: dict[str, Any]) -> None:
        if self.share is not None and not self._applying:
            self.share(action)

    def _remote_name(self, name: str) -> str | None:
        """The name on another server of the cluster that is ``name``, or None."""
        cluster = self._host.cluster
        if cluster is None or not cluster.remote:
            return None
        if name in cluster.remote:
            return name
        key = proto.name_key(name)
        return next((n for n in cluster.remote if proto.name_key(n) == key), None)

    # -- records ----------------------------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        """Every ban, mute and topic as plain dicts (JSON-ready), for a store to keep."""
        return [
            *(ban.to_dict() for ban in self.bans()),
            *(mute.to_dict() for mute in self.mutes.values()),
            *(topic.to_dict() for topic in self._topics.values()),
        ]

    def restore(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Load records made by :meth:`records` (expired bans are skipped); return how many.

        Raises:
            ValueError: A record that is not one :meth:`records` makes; nothing is loaded
                after it.
        """
        now = self._wall()
        count = 0
        for obj in records:
            try:
                record = parse_record(obj)
            except (ValueError, AttributeError) as exc:
                raise ValueError(f"not a moderation record: {exc}") from None
            if isinstance(record, BanRecord):
                if record.expired(now):
                    continue
                if len(self._by_name) + len(self._by_address) >= MAX_BANS:
                    raise ValueError(f"more than {MAX_BANS} bans")
                self._add(record)
            elif isinstance(record, MuteRecord):
                if len(self.mutes) >= MAX_MUTES:
                    raise ValueError(f"more than {MAX_MUTES} mutes")
                self.mutes[(record.room, proto.name_key(record.name))] = record
            else:
                if len(self._topics) >= MAX_TOPICS:
                    raise ValueError(f"more than {MAX_TOPICS} topics")
                self._topics[record.room] = record
            count += 1
        return count

    # -- internals --------------------------------------------------------------------------

    def _add(self, ban: BanRecord) -> None:
        if ban.name is not None:
            self._by_name[proto.name_key(ban.name)] = ban
        if ban.address is not None:
            self._by_address[ban.address] = ban

    def _drop(self, ban: BanRecord) -> None:
        if ban.name is not None and self._by_name.get(proto.name_key(ban.name)) is ban:
            del self._by_name[proto.name_key(ban.name)]
        if ban.address is not None and self._by_address.get(ban.address) is ban:
            del self._by_address[ban.address]

    def _purge(self, now: float) -> None:
        for ban in [b for b in (*self._by_name.values(), *self._by_address.values())]:
            if ban.expired(now):
                self._drop(ban)

    def _own_address(self, peer: Peer) -> str | None:
        """``peer``'s address, if it is its own: not loopback (every user of the server's
        own machine has it) and no other member connected from it (a NAT, a shared host)."""
        ip = _peer_ip(peer)
        try:
            address = normalize_address(ip)
        except InvalidFrame:
            return None
        if ipaddress.ip_address(address).is_loopback:
            return None
        for other in self._host.peers:
            if other is not peer and not other.closing and _peer_ip(other) == ip:
                return None
        return address

    def _matches(self, ban: BanRecord, peer: Peer) -> bool:
        if (
            ban.name is not None
            and peer.name
            and proto.name_key(peer.name) == proto.name_key(ban.name)
        ):
            return True
        if ban.address is None:
            return False
        try:
            return normalize_address(_peer_ip(peer)) == ban.address
        except InvalidFrame:
            return False

    def _remove(self, peer: Peer, reason: str) -> None:
        """Disconnect ``peer``, telling it (and its room, as the leave reason) why; it may
        not resume its session (#11)."""
        self._host.end_session(peer)
        self._host.disconnect(peer, Message(reason, kind=ERROR), leave_reason=reason)

    def _event(self, message: Message, line: str) -> None:
        """An action was taken: an event, and a log line (who did what to whom)."""
        if message.timestamp is None:
            message = Message(
                message.text,
                sender=message.sender,
                kind=message.kind,
                room=message.room,
                to=message.to,
                timestamp=self._host.now(),
            )
        log.info("moderation: %s", line)
        self._host.rooms.publish(message)
