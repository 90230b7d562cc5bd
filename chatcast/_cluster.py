"""The glue between a :class:`~chatcast.server.BroadcastServer` and its backplane.

The server calls in here only when it has a backplane. Outgoing, each room batch, notice,
announcement and remote private message becomes one :class:`~chatcast.backplane.Envelope`.
Incoming, an envelope from another server is fanned out to this server's own members, encoded
once per wire form, exactly as a local batch is.

Who is where on the other servers is kept as a local replica (``remote``: name to room),
updated by the join, leave and nick envelopes and refreshed from the backplane every few
seconds, so ``/who``, private-message routing and the taken-name check stay synchronous. A
refresh that no longer finds a name (its server died, or its leave was lost while Redis was
away) tells the name's room here that it left.
Only *claiming* a name asks the backplane (Redis decides who gets it); while that answer is on
its way the connection's reading is paused and any frames already read wait their turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ._core import envelope as bp
from ._core.commands import name_key
from ._core.history import Entry, entry, room_entries
from ._core.hub import Hub
from ._core.peer import Peer
from ._core.sessions import digest_of
from .backplane import Backplane
from .exceptions import InvalidFrame
from .message import ANNOUNCEMENT, GAP, INFO, JOIN, LEAVE, NICK, PRIVATE, Message

__all__ = ["Cluster"]

log = logging.getLogger("chatcast.server")

_NOTICES = {JOIN: bp.JOIN, LEAVE: bp.LEAVE, NICK: bp.NICK}


class Cluster:
    """A server's view of the other servers on its backplane (the hub's
    :class:`~chatcast._core.ports.ClusterLink`).

    Made before the hub it links (the hub is given it); :meth:`serve` then names the hub that
    envelopes from the other servers are delivered to.
    """

    def __init__(self, backplane: Backplane) -> None:
        self.backplane = backplane
        self._hub: Hub | None = None
        self.origin = backplane.server_id
        #: Names on other servers, and their rooms (a replica; see the module docstring).
        self.remote: dict[str, str] = {}
        # When an envelope last told us about each remote name (loop time): a refresh whose
        # snapshot is older than that must not drop the name.
        self._heard: dict[str, float] = {}
        # Names being claimed on the backplane now, by name_key, with who claims them.
        self._claiming: dict[str, object] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        # The senders of our batches in the log, by sequence number, until they come back
        # from it (they are not sent their own messages).
        self._senders: dict[int, Peer] = {}
        backplane.attach(self._deliver, self._state_changed)

    def serve(self, hub: Hub) -> None:
        """Deliver what the other servers send to ``hub``'s members."""
        self._hub = hub
        hub.moderation.share = self.moderation  # bans, kicks, mutes, topics cross (#14)

    @property
    def hub(self) -> Hub:
        assert self._hub is not None, "Cluster.serve() was not called"
        return self._hub

    async def start(self) -> None:
        await self.backplane.start()
        await self._refresh()
        self._spawn(self._refresh_forever())

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        await self.backplane.close()

    # -- the log (#12) ----------------------------------------------------------------------

    @property
    def sequenced(self) -> bool:
        return self.backplane.sequenced

    @property
    def logged(self) -> bool:
        return self.backplane.logged

    def append(
        self,
        sender: Peer,
        room: str,
        texts: list[str],
        timestamp: float,
        refs: list[tuple[int, str]] | None,
    ) -> None:
        """Put a batch in the log; it is delivered from there (here too, but to ``sender``),
        and its refs are acknowledged once it is in. If the log cannot take it, it is
        delivered here only, without ids."""
        hub = self.hub
        seq = 0

        def done(first: int | None) -> None:
            if first is None:
                self._senders.pop(seq, None)
                hub.deliver_unlogged(sender, room, texts, timestamp, refs)
            else:
                hub.acked(sender, refs, first)

        envelope = bp.Envelope(self.origin, bp.BATCH, room, sender.name, tuple(texts), ts=timestamp)
        seq = self.backplane.publish(envelope, done) or 0
        if seq:
            senders = self._senders
            senders[seq] = sender
            if len(senders) > 100_000:  # batches of rooms we stopped reading never came back
                for old in list(senders)[:50_000]:
                    del senders[old]

    def private_logged(self, sender: Peer, message: Message, ref: str | None) -> None:
        """Put a private message in the log; the server of its recipient delivers it."""
        hub = self.hub
        to = message.to or ""

        def done(first: int | None) -> None:
            refs = [(0, ref)] if ref is not None else None
            if first is not None:
                hub.acked(sender, refs, first)
                return
            target = hub.peer_named(to)
            if target is not None and not target.closing:
                hub.rooms.deliver_private(target, message)  # unnumbered: ids are the log's
                hub.acked(sender, refs, 0)
            else:
                hub.refused(sender, refs, f"{to} is on another server, which cannot be reached now")

        self.backplane.publish(self._private_envelope(message, to), done)

    def private_to_away(self, message: Message) -> bool:
        """Put a private message from the server to a member of ours who is away (it may
        resume, here or on another server) in the log, which numbers it and replays it on
        the resume; False if the log is not up, or nobody here is away under that name."""
        session = self.hub.sessions.holder(name_key(message.to or ""))
        if session is None or session.peer is not None or not self.backplane.sequenced:
            return False
        self.backplane.publish(
            bp.Envelope(
                self.origin,
                bp.PRIVATE,
                None,
                message.sender,
                (message.text,),
                to=session.name,
                ts=message.timestamp,
            )
        )
        return True

    def find_session(self, token: str, then: Callable[[dict[str, str] | None], None]) -> None:
        digest = digest_of(token)
        if digest is None:
            then(None)
            return

        async def run() -> None:
            try:
                record = await self.backplane.find_session(digest.hex())
            except Exception as exc:
                log.warning("session lookup failed: %s", exc or "timeout")
                record = None
            then(record)

        self._spawn(run())

    def session_saved(self, digest: bytes, record: dict[str, str], ttl: float) -> None:
        # The server that saved it: the one a ghost connection of the session may be on.
        self.backplane.save_session(digest.hex(), {**record, "server": self.origin}, ttl)

    def session_dropped(self, digest: bytes) -> None:
        self.backplane.drop_session(digest.hex())

    def take(self, name: str, room: str) -> None:
        self.remote.pop(name, None)
        self.backplane.take(name, room)
        self.backplane.follow(room)

    def resumed(self, name: str) -> None:
        """Tell the other servers that ``name`` resumed here."""
        self.backplane.publish(bp.Envelope(self.origin, bp.RESUMED, None, name))

    def replay(
        self,
        room: str,
        names: frozenset[str],
        last: int,
        then: Callable[[list[Entry], Message | None], None],
    ) -> None:
        # What is delivered live from now on is held for the member: the replay stops there
        # (for a room this server starts to read: where its history stops).
        reading = self.backplane.reading(room)
        upto_room = self.backplane.cutoff(room)
        upto_all = self.backplane.position(room)[1]

        async def run() -> None:
            try:
                until = upto_room if reading else await self.backplane.following(room)
                envelopes, short = await self.backplane.missed(room, names, last, (until, upto_all))
            except Exception as exc:
                log.warning("replay from the log failed: %s", exc or "timeout")
                then([], Message("", kind=GAP, room=room, missed=1))
                return
            items: list[Entry] = []
            for envelope in envelopes:
                items.extend(_entries(envelope))
            if items and items[0][0] <= last:
                # A batch partly had: the connection ended in its middle.
                items = [item for item in items if item[0] > last]
            then(items, Message("", kind=GAP, room=room, missed=1) if short else None)

        self._spawn(run())

    def reading(self, room: str) -> bool:
        return self.backplane.reading(room)

    def cutoff(self, room: str) -> int:
        return self.backplane.cutoff(room)

    def history(
        self,
        room: str,
        before: int | None,
        after: int | None,
        limit: int,
        then: Callable[[list[Entry]], None],
    ) -> None:
        async def run() -> None:
            try:
                envelopes = await self.backplane.recent(room)
            except Exception as exc:
                log.warning("history from the log failed: %s", exc or "timeout")
                envelopes = []
            items = [item for envelope in envelopes for item in _entries(envelope)]
            if before is not None:
                items = [item for item in items if item[0] < before]
            if after is not None:
                items = [item for item in items if item[0] > after][:limit]
            else:
                items = items[-limit:]
            then(items)

        self._spawn(run())

    def after_following(self, room: str, then: Callable[[int], None]) -> None:
        if self.backplane.reading(room):
            then(self.backplane.cutoff(room))
            return

        async def run() -> None:
            cutoff = 0
            with contextlib.suppress(Exception):
                cutoff = await self.backplane.following(room)
            then(cutoff)

        self._spawn(run())

    def _unfollow_empty_rooms(self) -> None:
        hub = self.hub
        for room in self.backplane.followed():
            if room not in hub.rooms:
                self.backplane.unfollow(room)

    # -- outgoing ---------------------------------------------------------------------------

    def batch(self, sender: str, room: str, texts: list[str], timestamp: float) -> None:
        self.backplane.publish(
            bp.Envelope(self.origin, bp.BATCH, room, sender, tuple(texts), ts=timestamp)
        )

    def notice(self, message: Message) -> None:
        """Publish a join, leave or nick notice (other kinds are not notices)."""
        kind = _NOTICES.get(message.kind)
        if kind is not None:
            self.backplane.publish(
                bp.Envelope(
                    self.origin,
                    kind,
                    message.room,
                    message.sender,
                    (message.text,),
                    ts=message.timestamp,
                )
            )

    def announcement(self, message: Message) -> bool:
        """Send an announcement to the other servers; True if it goes through the log, which
        then delivers it here too."""
        envelope = bp.Envelope(
            self.origin, bp.ANNOUNCEMENT, message.room, "server", (message.text,),
            ts=message.timestamp,
        )  # fmt: skip
        if not self.backplane.sequenced:
            self.backplane.publish(envelope)
            return False
        hub = self.hub

        def done(first: int | None) -> None:
            if first is None:
                hub.rooms.announce(message)  # here only, unnumbered

        self.backplane.publish(envelope, done)
        return True

    def private(self, message: Message) -> bool:
        """Send a private message to a name on another server; False if nobody has it.

        Raises:
            InvalidFrame: The name is on another server, but the backplane is down.
        """
        to = self.remote_name(message.to or "")
        if to is None:
            return False
        if not self.backplane.statistics().connected:
            raise InvalidFrame(f"{to} is on another server, which cannot be reached now")
        self.backplane.publish(self._private_envelope(message, to))
        return True

    def _private_envelope(self, message: Message, to: str) -> bp.Envelope:
        return bp.Envelope(
            self.origin, bp.PRIVATE, None, message.sender, (message.text,), to=to,
            ts=message.timestamp,
        )  # fmt: skip

    def moderation(self, action: dict[str, Any]) -> None:
        """Publish a moderation action taken here (#14)."""
        text = json.dumps(action, ensure_ascii=False, separators=(",", ":"))
        self.backplane.publish(
            bp.Envelope(self.origin, bp.MODERATION, None, str(action.get("by")), (text,))
        )

    def remote_name(self, name: str) -> str | None:
        """The name on another server that is ``name`` (``Alice`` for ``alice``), or None."""
        if name in self.remote:
            return name
        key = name_key(name)
        return next((n for n in self.remote if name_key(n) == key), None)

    def moved(self, name: str, room: str) -> None:
        self.backplane.moved(name, room)
        self.backplane.follow(room)

    def release(self, name: str) -> None:
        self.backplane.release(name)

    def guest_suffix(self) -> str:
        """Guest names carry part of the server id, so two servers never hand out the same."""
        return "-" + self.origin[:6]

    # -- asynchronous name claims -----------------------------------------------------------

    def claim(self, claimant: object, name: str, room: str, then: Callable[[bool], None]) -> None:
        """Claim ``name`` cluster-wide for ``claimant``, then call ``then(claimed)``.

        ``then`` runs at once when the name is known to be held (elsewhere, or being
        claimed right now by another of our clients); otherwise once Redis has answered.
        """
        key = name_key(name)
        # Held elsewhere (Redis compares case-insensitively itself; the replica is scanned
        # only when Redis cannot say), or claimed right now by another of our clients.
        held = name in self.remote or (
            not self.backplane.statistics().connected and self.remote_name(name) is not None
        )
        if held or self._claiming.get(key, claimant) is not claimant:
            then(False)
            return
        self._claiming[key] = claimant

        async def run() -> None:
            try:
                claimed = await self.backplane.claim(name, room)
            except Exception as exc:  # the backplane decides locally when Redis is away
                log.warning("name claim for %r failed: %s", name, exc)
                claimed = False
            finally:
                del self._claiming[key]
            then(claimed)

        self._spawn(run())

    # -- incoming ---------------------------------------------------------------------------

    def _deliver(self, envelope: bp.Envelope) -> None:
        hub = self.hub
        kind = envelope.kind
        ident = envelope.id
        if not envelope.origin:  # history from the log, for a room we start to follow
            if ident is None or envelope.room is None:
                return
            if kind == bp.BATCH and envelope.sender is not None:
                hub.keep_remote(
                    envelope.room, envelope.sender, list(envelope.texts), envelope.ts or 0.0, ident
                )
            elif kind == bp.ANNOUNCEMENT and envelope.texts:
                hub.keep_announcement(_announcement(envelope))
            return
        own = envelope.origin == self.origin
        if kind == bp.BATCH:
            if envelope.room is not None and envelope.sender is not None:
                exclude = self._senders.pop(envelope.seq or 0, None) if own else None
                hub.relay_remote(
                    envelope.sender,
                    envelope.room,
                    list(envelope.texts),
                    envelope.ts or 0.0,
                    ident,
                    exclude,
                )
            return
        if ident is not None and kind in (bp.PRIVATE, bp.ANNOUNCEMENT):
            hub.history.seen(ident)
        elif own:
            return  # our own notice, action or resume: done here already
        if kind == bp.RESUMED:
            self.backplane.disowned(envelope.sender or "")
            hub.resumed_elsewhere(envelope.sender or "")
            return
        text = envelope.texts[0] if envelope.texts else ""
        if kind == bp.MODERATION:
            try:
                action = json.loads(text)
                if not isinstance(action, dict):
                    raise ValueError("not an object")
                hub.moderation.apply(action)
            except ValueError as exc:
                log.warning("bad moderation envelope from %s: %s", envelope.origin, exc)
            return
        if kind == bp.PRIVATE:
            target = hub.peer_named(envelope.to or "")
            message = Message(
                text,
                sender=envelope.sender,
                kind=PRIVATE,
                to=envelope.to,
                timestamp=envelope.ts,
                id=ident,
            )
            if target is not None and not target.closing:
                hub.deliver_private(target, message)
            else:
                hub.keep_for_away(message)  # a member of ours who is away may resume
            return
        if kind == bp.ANNOUNCEMENT:
            hub.announce(_announcement(envelope))
            return
        # A notice: keep the replica of who is where, then tell the room here.
        sender = envelope.sender or ""
        room = envelope.room or ""
        if kind != bp.NICK and hub.peer_named(sender) is not None:
            return  # the name is ours now (resumed here): old news from its old server
        self._heard[sender] = asyncio.get_running_loop().time()
        if kind == bp.JOIN:
            if self.remote.get(sender) == room:
                return  # shown here already (it resumed on another server)
            self.remote[sender] = room
            message = Message("", sender=sender, kind=JOIN, room=room, timestamp=envelope.ts)
        elif kind == bp.LEAVE:
            if self.remote.get(sender) == room:
                del self.remote[sender]
            message = Message(text, sender=sender, kind=LEAVE, room=room, timestamp=envelope.ts)
        else:
            self.remote.pop(sender, None)
            self.remote[text] = room
            self._heard[text] = self._heard[sender]
            message = Message(text, sender=sender, kind=NICK, room=room, timestamp=envelope.ts)
        hub.notify_room(room, message, None, remote=True)

    def _state_changed(self, state: str, detail: str) -> None:
        text = (
            "backplane reconnected and resynced" if state == "up" else f"backplane down: {detail}"
        )
        self.hub.rooms.publish(Message(text, sender="backplane", kind=INFO))
        if state == "up":
            self._spawn(self._refresh())

    async def _refresh(self) -> None:
        """Replace the replica with what the backplane says now.

        A name the backplane no longer has (its server died, or its leave was lost while
        Redis was away) has left: its room here is told. A name an envelope told us about
        after the snapshot was taken is kept.
        """
        loop = asyncio.get_running_loop()
        asked = loop.time()
        try:
            presence = await self.backplane.presence()
        except Exception as exc:  # down: keep what we knew until it is back
            log.debug("presence refresh failed: %s", exc)
            return
        hub = self.hub
        fresh = {
            name: room
            for name, (server, room) in presence.items()
            if server != self.origin and hub.peer_named(name) is None
        }
        gone = []
        for name, room in self.remote.items():
            if name in fresh:
                continue
            if self._heard.get(name, 0.0) > asked:
                fresh[name] = room  # news newer than the snapshot
            else:
                gone.append((name, room))
        self.remote = fresh
        self._heard = {n: t for n, t in self._heard.items() if n in fresh}
        now = round(time.time(), 3)
        for name, room in gone:
            hub.notify_room(
                room,
                Message("connection lost", sender=name, kind=LEAVE, room=room, timestamp=now),
                None,
                remote=True,
            )

    async def _refresh_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.backplane.heartbeat)
            self._unfollow_empty_rooms()
            await self._refresh()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cluster task failed", exc_info=task.exception())


def _announcement(envelope: bp.Envelope) -> Message:
    return Message(
        envelope.texts[0] if envelope.texts else "",
        sender="server",
        kind=ANNOUNCEMENT,
        room=envelope.room,
        timestamp=envelope.ts,
        id=envelope.id,
    )


def _entries(envelope: bp.Envelope) -> list[Entry]:
    """The history entries of an envelope from the log (what a resume replays)."""
    ident = envelope.id or 0
    if envelope.kind == bp.BATCH and envelope.room is not None:
        return room_entries(
            ident, envelope.ts or 0.0, envelope.sender or "", envelope.room, list(envelope.texts)
        )
    if envelope.kind == bp.ANNOUNCEMENT:
        return [entry(_announcement(envelope))]
    message = Message(
        envelope.texts[0] if envelope.texts else "",
        sender=envelope.sender,
        kind=PRIVATE,
        to=envelope.to,
        timestamp=envelope.ts,
        id=ident,
    )
    return [entry(message)]
