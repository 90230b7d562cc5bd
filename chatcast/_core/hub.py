"""The chat hub, sans I/O: peers, rooms, names, notices, flood control, fan-out, commands.

:class:`Hub` holds everything a chat server knows and decides, driven by plain method calls:
a shell hands it each peer (:meth:`Hub.greet`), the bytes each peer sends
(:meth:`Hub.receive`), the ends of connections (:meth:`Hub.lost`), back-pressure
(:meth:`Hub.paused`, :meth:`Hub.resumed`) and the passing of time (:meth:`Hub.tick`). It answers
by calling each peer's ``write`` with bytes, never awaiting, and by closing transports. Time and
timers come from an injected :class:`~chatcast._core.ports.Clock`, so a test drives it with a
fake clock and fake transports.

The hot path stays one plain call per recipient: every batch of messages decoded from one read
is encoded once per wire form (:func:`~chatcast._core.wire.text_batch`,
:func:`~chatcast._core.wire.json_batch`) and handed to each member's ``write``. ``write`` is the
transport's own while the peer keeps up; under back-pressure it is swapped for a bounded backlog
(``drop-oldest``) or a discard (``disconnect``), so nobody else notices a slow peer.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from ..exceptions import InvalidFrame, ProtocolError
from . import commands as proto
from .backlog import Backlog
from .config import ServerConfig
from .flood import Bucket
from .history import (
    ANNOUNCEMENTS,
    Entry,
    History,
    batch_cost,
    entry,
    room_entries,
    to_message,
)
from .moderation import Moderation
from .peer import Peer, discard
from .ports import Clock, ClusterLink, Recorder
from .rooms import Rooms
from .sessions import Session, Sessions, digest_of
from .textpath import plain_chat, plain_lines
from .wire import (
    CLOSING,
    ERROR,
    GAP,
    INFO,
    JOIN,
    LEAVE,
    NICK,
    PING_FRAME,
    PONG_FRAME,
    PRIVATE,
    Message,
    dump_frame,
    encode,
    encode_str,
    parse_frame,
)

__all__ = ["Hub"]

log = logging.getLogger("chatcast.server")


def _frame_ref(frame: str) -> str | None:
    """The ``ref`` of a JSON frame that failed to parse as a command, if it has one."""
    if '"ref"' not in frame:
        return None
    try:
        return proto.ref_of(parse_frame(frame))
    except InvalidFrame:
        return None


def _shown(name: str) -> str:
    """A name as quoted back in an error: no longer than any name can be (a 64 KiB "name"
    must not come back whole)."""
    limit = proto.MAX_NAME_LENGTH
    return name if len(name) <= limit else name[:limit] + "..."


# Frames flood control lets through: heartbeats, and leaving.
_UNMETERED: Final = (proto.Ping, proto.Pong, proto.Quit)

#: Messages replayed to a resuming client per turn of the loop: a long replay is spread over
#: turns, so the other clients' messages keep flowing meanwhile.
REPLAY_CHUNK: Final = 256
#: Private messages kept per session, for its owner to resume.
PRIVATE_HISTORY: Final = 1000
# The state of a peer's replay while it is only held, waiting for the cluster (Hub._hold).
_HOLD: Final = -1
# How long the cluster keeps the record of a connected member's session (seconds).
_ATTACHED_TTL: Final = 86400.0
# How often the age limits of the history are applied (seconds).
_EXPIRE_EVERY: Final = 5.0


class Hub:
    """The chat: who is connected, under which name, in which room, and what they say.

    Args:
        config: The validated settings.
        clock: Monotonic time and timers (the event loop).
        cluster: The other servers, or ``None`` for a lone server.
        release: Called once per peer when it stops counting against the server's limits
            (it is closing); the shell keeps those counts.
        wall: Wall-clock seconds, for message timestamps.
        recorder: Where numbered room messages and announcements are handed to be kept on
            disk (a store), or ``None``.
        history: The ids and history to start from (a store's), or ``None`` for new ones.
        token: Makes session tokens (tests pass a predictable one).
    """

    def __init__(
        self,
        config: ServerConfig,
        clock: Clock,
        *,
        cluster: ClusterLink | None = None,
        release: Callable[[Peer], None] = lambda peer: None,
        wall: Callable[[], float] = time.time,
        recorder: Recorder | None = None,
        history: History | None = None,
        token: Callable[[], str] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.cluster = cluster
        self._on_release = release
        self._wall = wall
        self._token = config.token.encode() if config.token is not None else None
        self._welcome_line = (config.welcome + "\n").encode()
        self._bucket = config.bucket
        #: Every peer with an open connection.
        self.peers: set[Peer] = set()
        #: Rooms, their members, delivery to them, and events.
        self.rooms = Rooms(clock, config.notice_limit)
        self._names: dict[str, Peer] = {}  # by name_key(): one "alice" or "Alice"
        self._guest_counter = 0
        self.closing = False
        #: Message ids and the bounded history of rooms, announcements and conversations.
        self.history = history if history is not None else History(config.history)
        self.recorder = recorder
        #: Resumable sessions of JSON clients.
        self.sessions = Sessions(config.max_sessions, token)
        self._expired_at = 0.0
        # Counters (ServerStatistics).
        self.messages_in = 0
        self.bytes_in = 0
        self.slow_consumers = 0
        self.dropped = 0
        self.errors = 0
        self.auth_failures = 0
        self.rate_limited = 0
        self.timeouts = 0
        self.resumes = 0
        self.resume_failures = 0
        self.replayed = 0
        #: Operators, bans, mutes, topics (#14).
        self.moderation = Moderation(self, config.op_token, wall=wall)

    # -- what the server asks ---------------------------------------------------------------

    def now(self) -> float:
        """Wall-clock seconds to the millisecond: the timestamp of a message made now."""
        return round(self._wall(), 3)

    def peer_named(self, name: str) -> Peer | None:
        """The local peer holding ``name`` (whatever its case), or None."""
        return self._names.get(proto.name_key(name))

    def who(self, room: str | None = None) -> list[str]:
        """Names in ``room`` (or everyone), sorted; with a cluster, the other servers' too."""
        # Everyone who can read the room is listed, including a text-mode guest whose join
        # notice is still waiting for its first line or the join grace.
        if room is None:
            names = {peer.name for peer in self._names.values() if not peer.closing}
        else:
            names = self.rooms.names(room)
        if self.cluster is not None:
            names.update(n for n, r in self.cluster.remote.items() if room is None or r == room)
        return sorted(names)

    def room_counts(self) -> dict[str, int]:
        """Each room with members, and how many (on every server, with a cluster)."""
        counts = self.rooms.counts()
        if self.cluster is not None:
            for room in self.cluster.remote.values():
                counts[room] = counts.get(room, 0) + 1
        return dict(sorted(counts.items()))

    # -- connections ------------------------------------------------------------------------

    def add(self, peer: Peer) -> None:
        """Count ``peer`` as connected (from its accept, before any TLS handshake)."""
        self.peers.add(peer)
        now = self.clock.time()
        peer.last_rx = peer.admitted_at = now
        if self.config.rate is not None:
            peer.bucket = Bucket(self.config.rate, self._bucket, now)

    def greet(self, peer: Peer) -> None:
        """Send the welcome line to a peer that may stay (after TLS, if any)."""
        assert peer.transport is not None
        peer.greeted = True
        peer.last_rx = peer.admitted_at = self.clock.time()
        if self.config.slow_consumer == "disconnect":
            peer.transport.set_write_buffer_limits(high=self.config.max_buffer_bytes)
        self.rooms.write(peer, self._welcome_line)
        if self._token is None:
            self._enter_text_mode(peer)
        log.debug("connection from %s", peer.address)

    def refuse(self, peer: Peer, reason: str, *, say: bool = True, quiet: bool = False) -> None:
        """Turn ``peer`` away with ``reason`` (or silently: no TLS session to say it in);
        ``quiet``: logged at debug level only (a banned address, logged by moderation)."""
        (log.debug if quiet else log.info)("refused %s: %s", peer.address, reason)
        assert peer.transport is not None
        if not say:
            self.release(peer)
            peer.write = discard
            peer.transport.close()
            return
        peer.transport.write(f"! {reason}\n".encode())
        self._close_gently(peer)

    def release(self, peer: Peer) -> None:
        """Mark ``peer`` closing and stop counting it against the limits. Once only."""
        if peer.closing:
            return
        peer.closing = True
        self._on_release(peer)

    def lost(self, peer: Peer, exc: Exception | None) -> None:
        """The connection of ``peer`` ended (``exc`` if it broke): it leaves, names go free."""
        peer.detach()
        peer.replay = None
        self.peers.discard(peer)
        self.release(peer)
        session = peer.session
        held = False
        if session is not None and session.peer is peer:
            peer.session = None
            cluster = self.cluster
            if self.config.resume_window > 0 and (
                not self.closing or (cluster is not None and cluster.logged)
            ):
                # The name waits for its owner to come back with the token: here, or (a
                # cluster with a log) on another server, even when this one is closing.
                held = True
                now = self.clock.time()
                for pushed in self.sessions.detach(session, now + self.config.resume_window):
                    self._end_session(pushed)
                self._session_saved(session)
            else:
                self._end_session(session, release=False)
        self.moderation.forget(peer)  # moderation (#14)
        if peer.room:
            self._leave_room(peer, "connection lost" if exc is not None else "quit")
        key = proto.name_key(peer.name)
        if peer.name and self._names.get(key) is peer:
            del self._names[key]
            if self.cluster is not None and not held:
                self.cluster.release(peer.name)
        log.debug("connection from %s closed (%s)", peer.address, exc or "clean")

    def disconnect(self, peer: Peer, notice: Message | None, leave_reason: str = "") -> None:
        """Tell ``peer`` why (if ``notice``), leave its room, and close it. Idempotent."""
        if peer.closing or peer.transport is None:
            return
        if not peer.greeted:  # a TLS handshake in progress: nothing can be said yet
            self.release(peer)
            peer.transport.abort()
            return
        transport = peer.transport
        if notice is not None:
            # Written even when the writer is swapped out: it is the last thing it gets.
            transport.write(encode(notice, peer.json))
            if notice.kind == ERROR:
                log.info(
                    "dropping %s (%s): %s", peer.name or peer.address, peer.address, notice.text
                )
        if peer.room:
            if not leave_reason and notice is not None:
                leave_reason = notice.text
            self._leave_room(peer, leave_reason)
        self._close_gently(peer)

    def close(self, notice: Message) -> None:
        """Closing: joins and leaves still waiting go out, then everyone gets ``notice``."""
        self.closing = True
        self.rooms.flush_notices()
        for peer in list(self.peers):
            self.disconnect(peer, notice, leave_reason=notice.text)

    def _close_gently(self, peer: Peer) -> None:
        """Close so that the peer reads everything we wrote, the reason included.

        Closing a socket with unread input makes the kernel send RST, and an RST can make
        the peer's kernel throw away data it has not read yet: our reason. So: send FIN after
        the pending output (``write_eof``), discard what the peer still sends, and close when
        it closes or after a short linger (Apache's "lingering close"). A peer that never
        reads is aborted after ``close_timeout``, so its buffer is given back.
        """
        transport = peer.transport
        assert transport is not None
        self.release(peer)
        peer.write = discard
        close_timeout = self.config.close_timeout
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError as exc:  # the peer is already gone (ENOTCONN after a reset)
                log.debug("closing %s: %s", peer.address, exc)
                transport.abort()
                return
            self.clock.call_later(min(2.0, close_timeout), transport.close)
        else:
            transport.close()  # TLS: close_notify, then close
        self.clock.call_later(close_timeout, transport.abort)

    # -- back-pressure ----------------------------------------------------------------------

    def paused(self, peer: Peer) -> None:
        """The transport of ``peer`` holds ``max_buffer_bytes`` unsent: a slow consumer.

        Called from inside ``transport.write()``, possibly in the middle of a fan-out loop:
        it only swaps the peer's writer, and drops it (disconnect mode) on a later turn.
        """
        if peer.closing or peer.replay is not None:
            return  # a replay in progress checks the buffer itself when it ends
        if self.config.slow_consumer == "drop-oldest":
            if peer.backlog is None:
                backlog = peer.backlog = Backlog()
                limit = self.config.max_buffer_bytes
                peer.write = lambda data: self._enqueue(backlog, data, limit)
            return
        peer.write = discard
        self.slow_consumers += 1
        limit = self.config.max_buffer_bytes
        self.clock.call_soon(
            self.disconnect,
            peer,
            Message(f"slow consumer: more than {limit} bytes unread", kind=ERROR),
        )

    def _enqueue(self, backlog: Backlog, data: bytes, limit: int) -> None:
        """Writer of a paused peer in drop-oldest mode: a backlog of bounded size."""
        first = not backlog.dropped
        lines = backlog.append(data, limit)
        if lines:
            self.dropped += lines
            if first:
                self.slow_consumers += 1  # once per episode of falling behind

    def resumed(self, peer: Peer) -> None:
        """The transport of ``peer`` drained: write its backlog (and what was dropped)."""
        backlog = peer.backlog
        transport = peer.transport
        if peer.replay is not None and peer.replay[2][1]:
            peer.replay[2][1] = False  # a replay waited for this: it goes on
            self.clock.call_soon(self._replay_chunk, peer)
            return
        if backlog is None or transport is None or peer.closing or peer.replay is not None:
            return
        peer.backlog = None
        peer.write = transport.write
        if backlog.dropped:
            notice = Message(
                f"{backlog.dropped} messages dropped: you were reading too slowly", kind=ERROR
            )
            transport.write(encode(notice, peer.json))
        transport.write(backlog.drain())

    # -- time -------------------------------------------------------------------------------

    def tick(self) -> None:
        """Heartbeats, idle and authentication timeouts; call every ``sweep_interval``."""
        config = self.config
        now = self.clock.time()
        for session in self.sessions.expired(now):
            self._end_session(session)
        if now - self._expired_at >= _EXPIRE_EVERY:
            self._expired_at = now
            self.history.expire(self._wall())
        for peer in list(self.peers):
            if peer.closing or not peer.greeted:  # a handshake has its own timeout
                continue
            idle = now - peer.last_rx
            if not peer.authenticated:
                # From the welcome, not from the last byte: a connection that keeps
                # sending something without ever authenticating still times out.
                if now - peer.admitted_at > config.auth_timeout:
                    self._auth_failed(peer, "authentication timeout")
            elif peer.json:
                if peer.pinged_at is not None:
                    if now - peer.pinged_at > config.heartbeat_timeout:
                        self.timeouts += 1
                        self.disconnect(peer, Message("heartbeat timeout", kind=ERROR))
                elif idle > config.heartbeat_interval:
                    peer.pinged_at = now
                    peer.write(PING_FRAME)
            elif config.idle_timeout is not None and idle > config.idle_timeout:
                self.timeouts += 1
                self.disconnect(peer, Message("idle timeout", kind=ERROR))

    # -- input ------------------------------------------------------------------------------

    def receive(self, peer: Peer, data: bytes) -> None:
        """Handle the bytes ``peer`` sent: frames, commands, chat; never waits."""
        self.bytes_in += len(data)
        if peer.closing:
            return  # lingering close: what the peer still sends is discarded
        if not peer.json:
            # Text mode: any byte is a sign of life (nc cannot answer pings), and the time
            # of the last one tells when a line without LF is complete.
            peer.last_rx = self.clock.time()
        if not self._receive_text(peer, data):
            frames = peer.decoder.feed(data)
            if frames:
                if peer.json:
                    # JSON mode: only whole frames count, or a client trickling a frame that
                    # never ends (one byte a second) would never be pinged or dropped.
                    peer.last_rx = self.clock.time()
                    peer.pinged_at = None
                self.handle_frames(peer, frames)
        decoder = peer.decoder
        if (
            not peer.json
            and (decoder.pending or decoder.discarding)
            and peer.flush_timer is None
            and not peer.closing
        ):
            # Text mode: a partial line followed by a silence is a message (the lab's
            # clients send() without a newline), and the silence also ends an over-long
            # line being discarded, or a client that never sends LF would be mute for good.
            peer.flush_timer = self.clock.call_later(
                self.config.line_timeout, self._flush_partial, peer
            )

    def end_of_input(self, peer: Peer) -> None:
        """``peer`` shut down its sending side: an unterminated last line still counts."""
        frame = peer.decoder.flush()
        if frame is not None and not peer.closing:
            self.handle_frames(peer, [frame])

    def _flush_partial(self, peer: Peer) -> None:
        peer.flush_timer = None
        decoder = peer.decoder
        if peer.closing or peer.json or not (decoder.pending or decoder.discarding):
            return
        wait = peer.last_rx + self.config.line_timeout - self.clock.time()
        if wait > 0.001:
            peer.flush_timer = self.clock.call_later(wait, self._flush_partial, peer)
            return
        frame = decoder.flush(hold_incomplete=True)  # also ends a discard
        if frame is not None:
            self.handle_frames(peer, [frame])

    def _receive_text(self, peer: Peer, data: bytes) -> bool:
        """Relay a text-mode read that holds only chat lines in bulk; False if it may not.

        It applies to an authenticated text-mode peer without flood control, and only when
        every complete line of the read is plain chat (:func:`~.textpath.plain_lines`);
        what is relayed, and the order, are the same as through :meth:`handle_frames`.
        Anything else returns False having consumed nothing except, when it has to, the end
        of a line the decoder was holding, which it then handles itself.
        """
        decoder = peer.decoder
        if (
            self.config.rate is not None
            or peer.json
            or peer.first_frame
            or not peer.authenticated
            or decoder.discarding
            or peer.deferred is not None  # frames wait for an asynchronous step: keep order
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
            if not isinstance(frame, str) or not plain_chat(frame):
                self.handle_frames(peer, head + decoder.feed(data[start:]))
                return True
            held = frame
        lines = plain_lines(data, start, end, self.config.max_line_bytes) if end >= start else []
        if lines is None:
            frames: list[str | ProtocolError] = [] if held is None else [held]
            frames += decoder.feed(data[start:])
            self.handle_frames(peer, frames)
            return True
        if held is not None:
            lines.insert(0, held)
        tail = decoder.feed(data[end + 1 :]) if end + 1 < len(data) else None
        self._flush_batch(peer, lines)
        if tail:
            self.handle_frames(peer, tail)  # an over-long unfinished line: its error
        return True

    def handle_frames(self, peer: Peer, frames: list[str | ProtocolError]) -> None:
        """Handle every frame decoded from one read, batching consecutive room messages."""
        if peer.deferred is not None:  # an asynchronous step is pending: keep the order
            peer.deferred.extend(frames)
            return
        batch: list[str] = []
        refs: list[tuple[int, str]] = []  # (index in batch, ref) of messages to acknowledge
        for index, frame in enumerate(frames):
            if peer.closing:
                break
            if type(frame) is not str:
                self._flush_batch(peer, batch, refs)
                self._error(peer, str(frame))
                continue
            assert isinstance(frame, str)
            try:
                if peer.first_frame:
                    peer.first_frame = False
                    if frame.startswith("{") and self._maybe_hello(peer, frame):
                        if peer.deferred is not None:
                            peer.deferred.extend(frames[index + 1 :])
                            return
                        continue
                if peer.json:
                    command = proto.parse_json(frame)
                elif not frame:
                    continue  # text mode: an empty line (Enter pressed) is ignored
                elif frame[0] != "/":
                    command = proto.Say(proto.check_text(frame))
                else:
                    command = proto.parse_text(frame)
            except InvalidFrame as exc:
                self._flush_batch(peer, batch, refs)
                self._error(peer, str(exc), _frame_ref(frame) if peer.json else None)
                continue
            if not peer.authenticated:
                self._flush_batch(peer, batch, refs)
                self._unauthenticated(peer, command)
                continue
            if type(command) is proto.Say and command.to is None:
                if self._admit(peer, command.ref):
                    if command.ref is not None:
                        refs.append((len(batch), command.ref))
                    batch.append(command.text)
                elif self._flooding(peer):
                    break  # relay what was accepted before this, then drop the flooder
                continue
            self._flush_batch(peer, batch, refs)
            self._command(peer, command)
            if peer.deferred is not None:
                peer.deferred.extend(frames[index + 1 :])
                return
            if not peer.announced and peer.room and not peer.closing:
                self._announce(peer)  # any first command ends the silent join grace
        self._flush_batch(peer, batch, refs)
        if self._flooding(peer) and not peer.closing:
            self._drop_flooder(peer)

    # -- hello and authentication -----------------------------------------------------------

    def _enter_text_mode(self, peer: Peer) -> None:
        """Authenticated text-mode peer: in the default room under a guest name, receiving
        at once; its join is announced after ``join_grace`` or its first line."""
        peer.authenticated = True
        self._set_name(peer, self._guest_name())
        self._add_to_room(peer, self.config.default_room, announce=False)
        self.clock.call_later(self.config.join_grace, self._announce, peer)

    def _announce(self, peer: Peer) -> None:
        if peer.announced or peer.closing or not peer.room:
            return
        peer.announced = True
        message = Message("", sender=peer.name, kind=JOIN, room=peer.room, timestamp=self.now())
        if peer.json:
            peer.send(message)  # confirms the join (and the room) to a JSON client
        self.notify_room(peer.room, message, peer)

    def _maybe_hello(self, peer: Peer, frame: str) -> bool:
        try:
            obj = parse_frame(frame)  # refuses lone surrogates, which str.encode() cannot take
        except InvalidFrame:
            return False
        if obj["type"] != "hello":
            return False
        try:
            command = proto.parse_json(obj)
            assert isinstance(command, proto.Hello)
            self._hello(peer, command)
        except InvalidFrame as exc:
            peer.json = True
            self.disconnect(peer, Message(str(exc), kind=ERROR))
            self.errors += 1
        return True

    def _hello(self, peer: Peer, hello: proto.Hello) -> None:
        peer.json = True
        peer.version = hello.version
        if peer.flush_timer is not None:
            peer.flush_timer.cancel()
            peer.flush_timer = None
        if self._token is not None and not peer.authenticated:
            if hello.token is None:
                self._auth_failed(peer, "authentication required")
                return
            if not hmac.compare_digest(hello.token.encode(), self._token):
                self._auth_failed(peer, "authentication failed")
                return
            peer.authenticated = True
        # -- moderation (#14): the operator token, and a banned name -------------------------
        if hello.op is not None:
            if not self.moderation.check_op_token(hello.op):
                self._auth_failed(peer, "operator authentication failed")
                return
            self.moderation.operators.add(peer)
        banned = self.moderation.name_refusal(hello.name) if hello.name else None
        if banned is not None:
            self.disconnect(peer, Message(banned, kind=ERROR))
            return
        # -- end of moderation ----------------------------------------------------------------
        room = proto.check_name(hello.room, "room") if hello.room else self.config.default_room
        resumed: bool | None = None
        if hello.session is not None:
            session = self.sessions.find(hello.session)
            cluster = self.cluster
            if session is None and cluster is not None and cluster.sequenced and not peer.asked:
                # Perhaps opened on another server of the cluster (which may have died).
                peer.asked = True
                token = hello.session
                self._wait(
                    peer,
                    lambda then: cluster.find_session(token, then),
                    lambda record: self._adopt(peer, hello, record),
                )
                return
            if session is not None:
                banned = self.moderation.name_refusal(session.name)  # moderation (#14)
                if banned is not None:
                    self._end_session(session)
                    self.disconnect(peer, Message(banned, kind=ERROR))
                    return
                self._resume(peer, session, hello.last)
                return
            # Unknown, expired or forged: a new session (the welcome says it did not resume,
            # so the client knows it may have missed messages). The token is never logged.
            resumed = False
            self.resume_failures += 1
            log.info("resume refused for %s: unknown or expired session", peer.address)
        name = hello.name
        if name is not None:
            proto.check_name(name)
            self._check_free(peer, name)
            if self.cluster is not None:
                self._claim(
                    peer,
                    name,
                    room,
                    lambda claimed: self._welcome(peer, name, room, claimed, resumed),
                )
                return
        self._welcome(peer, name, room, True, resumed)

    def _adopt(self, peer: Peer, hello: proto.Hello, record: dict[str, str] | None) -> None:
        """Finish a hello whose session another server opened: resume it here, with the
        name, the room and what was missed (from the cluster's log); or, if the record is
        gone or bad, go on as a new session."""
        digest = digest_of(hello.session or "")
        try:
            if record is None or digest is None:
                raise ValueError("no such session")
            name, room = record["name"], record["room"]
            names = tuple(record["names"].split("\n"))
            floor = int(record["floor"])
            proto.check_name(name)
            proto.check_name(room, "room")
        except (KeyError, ValueError, InvalidFrame):
            self._hello(peer, hello)  # asked already: a new session now
            return
        banned = self.moderation.name_refusal(name)  # moderation (#14): bans hold here too
        if banned is not None:
            if self.cluster is not None:
                self.cluster.session_dropped(digest)
            self.disconnect(peer, Message(banned, kind=ERROR))
            return
        key = proto.name_key(name)
        holder = self._names.get(key)
        if (holder is not None and holder is not peer) or self.sessions.holder(key) is not None:
            self._hello(peer, hello)  # the name is someone else's here now
            return
        assert self.cluster is not None
        session = self.sessions.adopt(digest, key, name, names, room, floor)
        shown = self.cluster.remote.get(name) == room  # the room here never saw it leave
        self.cluster.take(name, room)  # ours now, whoever held it
        self.cluster.resumed(name)  # a server still holding it for a ghost lets go
        log.info("%s resumed from %s (a session of another server)", name, peer.address)
        self._resume(peer, session, hello.last, shown=shown)

    def resumed_elsewhere(self, name: str) -> None:
        """Another server resumed the session of ``name``: a ghost connection of ours that
        still holds it is closed, and the session ends here (the name is not released: it
        is the other server's now)."""
        key = proto.name_key(name)
        session = self.sessions.holder(key)
        if session is not None:
            self.sessions.end(session, proto.name_key)
            self.history.drop(session.key)
            ghost = session.peer
            if ghost is not None:
                ghost.session = None
        holder = self._names.get(key)
        if holder is not None:
            del self._names[key]
            holder.session = None
            self._leave_silently(holder)  # the member is in the room, on the other server
            self.disconnect(holder, Message("resumed from another connection", kind=CLOSING))

    def _leave_silently(self, peer: Peer) -> None:
        """Take ``peer`` out of its room without a leave notice (its member is there on
        another connection)."""
        if peer.room:
            self.rooms.discard(peer.room, peer)
            peer.room = ""
            peer.announced = False

    def _wait(
        self,
        peer: Peer,
        ask: Callable[[Callable[[Any], None]], None],
        then: Callable[[Any], None],
        gone: Callable[[Any], None] = lambda answer: None,
    ) -> None:
        """Ask the cluster something (``ask(done)``), then ``then(answer)``; reading from
        ``peer`` is paused meanwhile and frames already decoded wait in ``deferred``, to be
        handled in order after ``then``. If ``peer`` closed meanwhile: ``gone(answer)``."""
        peer.deferred = []
        if peer.transport is not None:
            peer.transport.pause_reading()

        def done(answer: Any) -> None:
            deferred, peer.deferred = peer.deferred or [], None
            if peer.closing:
                gone(answer)
                return
            if peer.transport is not None:
                peer.transport.resume_reading()
            then(answer)
            if deferred and not peer.closing:
                self.handle_frames(peer, deferred)

        ask(done)

    def _check_free(self, peer: Peer, name: str) -> None:
        """Raise unless ``name`` is free for ``peer``: nobody has it, nor holds it to resume."""
        key = proto.name_key(name)
        holder = self._names.get(key)
        if holder is not None and holder is not peer:
            raise InvalidFrame(f"name {name!r} is taken")
        session = self.sessions.holder(key)
        if session is not None and session.peer is not peer:
            raise InvalidFrame(f"name {name!r} is taken")

    def _welcome(
        self, peer: Peer, name: str | None, room: str, claimed: bool, resumed: bool | None = None
    ) -> None:
        """Finish a hello: take the name and room, or refuse a name taken elsewhere."""
        if not claimed:
            self.errors += 1
            self.disconnect(peer, Message(f"name {name!r} is taken", kind=ERROR))
            return
        self._drop_guest(peer)
        self._set_name(peer, name or (peer.name or self._guest_name()))
        token = None
        if peer.version >= 2 and self.config.resume_window > 0:
            # Only a client that can resume gets a session (and holds its memory).
            session, token = self.sessions.open(peer, proto.name_key(peer.name), room)
            session.floor = self.history.latest_id
            peer.session = session
            self._session_saved(session)
        self._send_welcome(peer, room, token, resumed)
        self.moderation.welcomed(peer)  # moderation (#14)
        self._add_to_room(peer, room, announce=True)
        self._history_on_join(peer, room)

    def _drop_guest(self, peer: Peer) -> None:
        """Give up the text-mode guest identity held since connecting: silently while its
        join was not announced yet (the usual case), with a leave notice otherwise."""
        if peer.room:
            if peer.announced:
                self._leave_room(peer, "switched to JSON mode")
            else:
                self.rooms.discard(peer.room, peer)
                peer.room = ""

    def _send_welcome(self, peer: Peer, room: str, token: str | None, resumed: bool | None) -> None:
        welcome: dict[str, object] = {
            "type": "welcome",
            "name": peer.name,
            "room": room,
            "text": self.config.welcome,
            "version": proto.PROTOCOL_VERSION,
            "heartbeat": float(self.config.heartbeat_interval),
            "last": self.history.latest_id,
            "max_bytes": self.config.max_line_bytes,
        }
        if token is not None:
            welcome["session"] = token
        if self.moderation.is_operator(peer):  # moderation (#14)
            welcome["op"] = True
        if resumed is not None:
            welcome["resumed"] = resumed
        peer.write(dump_frame(welcome))

    # -- resume -----------------------------------------------------------------------------

    def _resume(
        self, peer: Peer, session: Session, last: int | None, *, shown: bool = False
    ) -> None:
        """Give ``peer`` the name, room and missed messages of ``session``.

        A ghost connection still holding the session (the server did not notice its link
        die) is closed with a reason, and ``peer`` steps into its place without leave or
        join notices; a session that was waiting gets a join notice. ``shown``: the room
        here still shows the member (a session of another server): the join notice goes to
        the other servers only.
        """
        self.resumes += 1
        ghost = session.peer
        room = session.room  # kept up to date by every join, even of a closing ghost
        seamless = shown
        if ghost is not None and ghost is not peer:
            seamless = ghost.announced and ghost.room == room
            ghost.session = None
            self._leave_silently(ghost)
            key = proto.name_key(ghost.name)
            if self._names.get(key) is ghost:
                del self._names[key]  # now the new connection's: the cluster keeps its claim
            log.info("%s resumed from %s: closing the old connection", session.name, peer.address)
            self.disconnect(ghost, Message("resumed from another connection", kind=CLOSING))
        else:
            log.info("%s resumed from %s", session.name, peer.address)
        self._drop_guest(peer)
        self._set_name(peer, session.name)
        self.sessions.attach(session, peer)
        peer.session = session
        old = session.digest
        token = self.sessions.renew(session)  # a token is good for one resume
        if self.cluster is not None:
            self.cluster.session_dropped(old)
        self._send_welcome(peer, room, token, True)
        # Notices still waiting are of before the resume (from another server: its leave
        # when the old one closed): out now, not to the member who is back.
        self.rooms.flush_notices()
        if seamless:
            peer.room = room
            peer.announced = True
            self.rooms.add(room, peer)
            if self.cluster is not None:
                self.cluster.moved(peer.name, room)
                if shown:  # the other servers may have seen it leave its old server
                    self.cluster.notice(
                        Message("", sender=peer.name, kind=JOIN, room=room, timestamp=self.now())
                    )
        else:
            self._add_to_room(peer, room, announce=True)
        if last is not None:
            # Nothing older than the session's first welcome, or than the last id of an
            # earlier resume: the client had those (what came before its welcome was history).
            last = session.floor = max(last, session.floor)
        self._session_saved(session)
        self._replay_missed(peer, session, room, last)

    def _replay_missed(self, peer: Peer, session: Session, room: str, last: int | None) -> None:
        """Send ``peer`` what it missed after id ``last``: its room's messages (not its own),
        announcements and its private messages, in id order; a gap first for what is gone."""
        latest = self.history.latest_id
        if last is None:
            return
        cluster = self.cluster
        if cluster is not None and cluster.sequenced:
            # From the cluster's log, which every server can read, up to what this server
            # delivers live from now on; live output waits.
            self._hold(peer)
            names = frozenset(proto.name_key(name) for name in session.names)
            cluster.replay(room, names, last, lambda items, gap: self._release(peer, items, gap))
            return
        if last > latest:
            self._error(peer, f"last id {last} is ahead of this server (latest {latest})")
            return
        items: list[Entry] = []
        missed = 0
        own = session.names  # what it said under any of its names is not news to it
        for key in (room, ANNOUNCEMENTS, session.key):
            stream = self.history.log(key)
            if stream is None:
                continue
            found = stream.after(last)
            if key == room:
                found = [item for item in found if item[3] not in own]
            items.extend(found)
            missed += stream.missed(last)
        items.sort(key=lambda item: item[0])
        gap = Message("", kind=GAP, room=room, missed=missed) if missed else None
        self._replay(peer, items, gap)

    def _hold(self, peer: Peer) -> bool:
        """Hold ``peer``'s live output until :meth:`_release` (a replay is being fetched);
        False if it is held already (by a replay: the one to release it)."""
        if peer.replay is not None or peer.transport is None:
            return False  # a replay holds it already
        held: list[bytes] = []
        # The writer to go back to: the socket's, or a slow consumer's backlog.
        peer.replay = (held, [], [_HOLD, False, peer.write])
        peer.write = held.append
        return True

    def _release(self, peer: Peer, items: list[Entry], gap: Message | None) -> None:
        """Replay ``items`` (after ``gap``) to ``peer``, then what was held meanwhile."""
        replay = peer.replay
        transport = peer.transport
        if transport is None or peer.closing:
            return
        if replay is None or replay[2][0] != _HOLD:
            self._replay(peer, items, gap)  # behind the replay that is running
            return
        held, queued, state = replay
        peer.replay = None
        peer.write = state[2]
        self._replay(peer, items, gap)
        if queued:  # replays that came meanwhile (a join's history)
            self.replayed -= sum(1 for item in queued if not isinstance(item, Message))
            self._replay(peer, queued)
        if held:
            peer.write(b"".join(held))
        if peer.replay is None and transport.get_write_buffer_size() > self.config.max_buffer_bytes:
            self.paused(peer)  # it fell behind while the hold ignored back-pressure

    def _replay(
        self, peer: Peer, items: list[Entry] | list[Entry | Message], gap: Message | None = None
    ) -> None:
        """Write ``items`` (as history) to ``peer``, after ``gap``; a long replay is spread
        over turns of the loop (:data:`REPLAY_CHUNK`), live output waiting behind it."""
        json = peer.json
        if peer.replay is not None:
            # A replay is running (a resume, then a join's history): this one goes behind it.
            if gap is not None:
                peer.replay[1].append(gap)
            peer.replay[1].extend(items)
            self.replayed += len(items)
            return
        if gap is not None:
            peer.write(encode(gap, json))
        if not items:
            return
        self.replayed += len(items)
        if len(items) <= REPLAY_CHUNK or peer.transport is None or peer.backlog is not None:
            # Short, or the peer is behind already (its writer is the backlog): in one go.
            peer.write(
                b"".join(
                    [
                        encode(item if isinstance(item, Message) else to_message(item), json)
                        for item in items
                    ]
                )
            )
            return
        held: list[bytes] = []
        queue: list[Entry | Message] = list(items)
        peer.replay = (held, queue, [0, False])
        peer.write = held.append
        self.clock.call_soon(self._replay_chunk, peer)

    def _replay_chunk(self, peer: Peer) -> None:
        replay = peer.replay
        transport = peer.transport
        if replay is None or transport is None or peer.closing:
            peer.replay = None
            return
        held, queue, state = replay
        if transport.get_write_buffer_size() >= self.config.max_buffer_bytes:
            state[1] = True  # the peer reads slower than we replay: go on when it drained
            return
        start = state[0]
        end = state[0] = start + REPLAY_CHUNK
        json = peer.json
        transport.write(
            b"".join(
                [
                    encode(item if isinstance(item, Message) else to_message(item), json)
                    for item in queue[start:end]
                ]
            )
        )
        if end < len(queue):
            self.clock.call_soon(self._replay_chunk, peer)
            return
        peer.replay = None
        peer.write = transport.write
        if held:
            transport.write(b"".join(held))
        if transport.get_write_buffer_size() > self.config.max_buffer_bytes:
            self.paused(peer)  # it fell behind while the replay ignored back-pressure

    def end_session(self, peer: Peer) -> None:
        """``peer`` may not resume (kicked, banned): its session ends now."""
        if peer.session is not None:
            self._end_session(peer.session, release=False)
            peer.session = None

    def _session_saved(self, session: Session) -> None:
        """Keep ``session`` where every server of the cluster finds it: a client may resume
        on another server (its own died). Kept a day while connected (a crashed server says
        nothing), ``resume_window`` once it waits."""
        cluster = self.cluster
        if cluster is None or not cluster.logged:
            return
        record = {
            "name": session.name,
            "room": session.room,
            "floor": str(session.floor),
            "names": "\n".join(session.names),
        }
        ttl = self.config.resume_window if session.peer is None else _ATTACHED_TTL
        cluster.session_saved(session.digest, record, ttl)

    def _end_session(self, session: Session, *, release: bool = True) -> None:
        """Forget ``session`` and its private messages; a name it held waiting goes free."""
        if self.cluster is not None:
            self.cluster.session_dropped(session.digest)
        waiting = session.peer is None
        self.sessions.end(session, proto.name_key)
        self.history.drop(session.key)
        if (
            release
            and waiting
            and self.cluster is not None
            and proto.name_key(session.name) not in self._names
        ):
            self.cluster.release(session.name)

    # -- history ----------------------------------------------------------------------------

    def _history_on_join(self, peer: Peer, room: str) -> None:
        """The room's last messages, marked as history, to a client that understands them."""
        count = self.config.history_on_join
        if not count or not peer.json or peer.version < 2 or peer.closing:
            return
        cluster = self.cluster
        if cluster is not None and cluster.sequenced:
            # What was delivered live to the room before now is history; what comes after
            # is live. A room nobody here was in is read from the cluster's log first, the
            # member's live output waiting meanwhile.
            # Only a hold placed here is released here (a resume's waits for its replay).
            held = not cluster.reading(room) and self._hold(peer)

            def ready(cutoff: int) -> None:
                stream = self.history.log(room)
                items = stream.before(cutoff + 1, count) if stream is not None else []
                items = items if peer.room == room else []
                if held:
                    self._release(peer, items, None)
                elif peer.transport is not None and not peer.closing:
                    self._replay(peer, items)  # behind a replay that is running, if one is

            cluster.after_following(room, ready)
            return
        stream = self.history.log(room)
        if stream is not None and len(stream):
            self._replay(peer, stream.before(None, count))

    def _history_request(self, peer: Peer, command: proto.History) -> None:
        room = proto.check_name(command.room, "room") if command.room else peer.room
        cluster = self.cluster
        if cluster is not None and cluster.sequenced:
            # Ids are the cluster's (this server may not have seen the newest), and a room
            # nobody here is in is read from the cluster's log.
            if not cluster.reading(room):
                before, after, limit = command.before, command.after, command.limit
                self._wait(
                    peer,
                    lambda done: cluster.history(room, before, after, limit, done),
                    lambda items: self._send_history(peer, command, room, items),
                )
                return
        else:
            latest = self.history.latest_id
            for bound in (command.before, command.after):
                if bound is not None and bound > latest + 1:
                    raise InvalidFrame(f"id {bound} is ahead of this server (latest {latest})")
        stream = self.history.log(room)
        items: list[Entry] = []
        if stream is not None:
            if command.after is not None:
                items = stream.after(command.after, command.limit)
                if command.before is not None:
                    items = [item for item in items if item[0] < command.before]
            else:
                items = stream.before(command.before, command.limit)
        self._send_history(peer, command, room, items)

    def _send_history(
        self, peer: Peer, command: proto.History, room: str, items: list[Entry]
    ) -> None:
        """Answer a ``history`` request with ``items`` (oldest first)."""
        newest_first = command.after is None
        # A reply fits in half the client's buffer: a request costs bounded memory.
        budget = self.config.max_buffer_bytes // 2
        json = peer.json
        frames: list[bytes] = []
        size = 0
        more = False
        for item in reversed(items) if newest_first else items:
            message = to_message(item)
            if json and command.ref is not None:
                data = dump_frame({**message.to_wire(), "ref": command.ref})
            else:
                data = encode(message, json)
            size += len(data)
            if size > budget and frames:
                more = True
                break
            frames.append(data)
        if newest_first:
            frames.reverse()
        if json:
            end: dict[str, object] = {"type": "history", "room": room, "count": len(frames)}
            if more:
                end["more"] = True
            if command.ref is not None:
                end["ref"] = command.ref
            frames.append(dump_frame(end))
        elif not frames:
            frames.append(encode(Message(f"no history in {room}", kind=INFO), False))
        else:
            head = f"last {len(frames)} message(s) in {room}:"
            frames.insert(0, encode(Message(head, kind=INFO), False))
        peer.write(b"".join(frames))

    def _unauthenticated(self, peer: Peer, command: proto.Command) -> None:
        if type(command) is proto.Auth:
            assert self._token is not None
            if hmac.compare_digest(command.token.encode(), self._token):
                peer.send(Message("authenticated", kind=INFO))
                self._enter_text_mode(peer)
            else:
                self._auth_failed(peer, "authentication failed")
            return
        if type(command) is proto.Quit:
            self.disconnect(peer, None)
            return
        self._error(peer, "authentication required: send /auth TOKEN first")

    def _auth_failed(self, peer: Peer, reason: str) -> None:
        self.auth_failures += 1
        log.info("authentication failure from %s: %s", peer.address, reason)
        self.disconnect(peer, Message(reason, kind=ERROR))

    def _claim(self, peer: Peer, name: str, room: str, then: Callable[[bool], None]) -> None:
        """Claim ``name`` cluster-wide, then ``then(claimed)``; ``peer`` waits meanwhile.

        Reading from ``peer`` is paused and frames already decoded wait in ``deferred``;
        they are handled, in order, after ``then``.
        """
        assert self.cluster is not None
        cluster = self.cluster

        def ours(claimed: bool) -> bool:
            holder = self._names.get(proto.name_key(name))
            # One of our own peers has it (Redis says "ours" for both)?
            return claimed and (holder is None or holder is peer)

        def gone(claimed: bool) -> None:
            if ours(claimed):
                cluster.release(name)

        self._wait(
            peer,
            lambda done: cluster.claim(peer, name, room, done),
            lambda claimed: then(ours(claimed)),
            gone,
        )

    # -- flood control ----------------------------------------------------------------------

    def _admit(self, peer: Peer, ref: str | None = None) -> bool:
        """Flood control (:class:`~.flood.Bucket`): take a token, or refuse the message.

        One error per run of refused messages, not one per message: a flood must not turn
        into a flood of error frames. A message with a ``ref`` is always answered: its sender
        waits for the answer (and a flooder is dropped soon anyway).
        """
        bucket = peer.bucket
        if bucket is None:
            return True
        first = not bucket.refusing
        if bucket.take(self.clock.time()):
            return True
        self.rate_limited += 1
        if ref is not None or (first and not bucket.flooding):
            reason = f"rate limit ({self.config.rate:g}/s) exceeded: message dropped"
            self._error(peer, reason, ref)
        return False

    def _flooding(self, peer: Peer) -> bool:
        """True once ``peer`` floods persistently (see :class:`~.flood.Bucket`)."""
        return peer.bucket is not None and peer.bucket.flooding

    def _drop_flooder(self, peer: Peer) -> None:
        self.disconnect(
            peer, Message("flooding: too many messages over the rate limit", kind=ERROR)
        )

    # -- commands ---------------------------------------------------------------------------

    def _command(self, peer: Peer, command: proto.Command) -> None:
        ref = command.ref if type(command) is proto.Say or type(command) is proto.History else None
        if type(command) not in _UNMETERED and not self._admit(peer, ref):
            # Every command takes a token, not only chat: /nick and /join make notices for a
            # whole room, and a flood of them is a flood.
            if self._flooding(peer):
                self._drop_flooder(peer)
            return
        try:
            if type(command) is proto.Say:
                ident = self._private(peer, command.text, command.to, command.ref)
                if ident is not None and command.ref is not None and peer.json:
                    peer.write(dump_frame({"type": "ack", "ref": command.ref, "id": ident}))
            elif type(command) is proto.History:
                self._history_request(peer, command)
            elif type(command) is proto.Join:
                self.join(peer, proto.check_name(command.room, "room"))
            elif type(command) is proto.Nick:
                self._nick(peer, proto.check_name(command.name))
            elif type(command) is proto.Who:
                room = command.room or peer.room
                names = self.who(room)
                ops = self.moderation.operator_names(names)  # moderation (#14): marked
                if peer.json:
                    answer: dict[str, object] = {"type": "who", "room": room, "names": names}
                    if ops:
                        answer["operators"] = ops
                    peer.write(dump_frame(answer))
                else:
                    shown = [f"{n} (op)" if n in ops else n for n in names]
                    peer.send(Message(f"in {room}: {', '.join(shown) or '(nobody)'}", kind=INFO))
            elif type(command) is proto.Rooms:
                rooms = self.room_counts()
                if peer.json:
                    peer.write(dump_frame({"type": "rooms", "rooms": rooms}))
                else:
                    listing = ", ".join(f"{r} ({n})" for r, n in rooms.items())
                    peer.send(Message(f"rooms: {listing}", kind=INFO))
            elif type(command) is proto.Help:
                peer.send(Message(proto.HELP_TEXT, kind=INFO))
            elif type(command) is proto.Quit:
                if peer.session is not None:  # leaving on purpose: nothing to resume
                    self._end_session(peer.session, release=False)
                    peer.session = None
                self.disconnect(peer, None, leave_reason=command.reason or "quit")
            elif type(command) is proto.Ping:
                peer.write(PONG_FRAME)
            elif type(command) is proto.Pong:
                pass
            elif isinstance(command, proto.MODERATION_TYPES):  # moderation (#14)
                self.moderation.command(peer, command)
            elif type(command) is proto.Hello:
                raise InvalidFrame("hello must be the first frame")
            elif type(command) is proto.Auth:
                raise InvalidFrame("already authenticated")
        except InvalidFrame as exc:
            self._error(peer, str(exc), ref)

    def _error(self, peer: Peer, reason: str, ref: str | None = None) -> None:
        """Tell ``peer`` of an error; with a ``ref`` (JSON mode), the frame carries it."""
        self.errors += 1
        log.debug("error for %s: %s", peer.name or peer.address, reason)
        if ref is not None and peer.json:
            peer.write(dump_frame({"type": "error", "text": reason, "reason": reason, "ref": ref}))
        else:
            peer.send(Message(reason, kind=ERROR))

    # -- rooms and names --------------------------------------------------------------------

    def _guest_name(self) -> str:
        suffix = self.cluster.guest_suffix() if self.cluster is not None else ""
        while True:
            self._guest_counter += 1
            name = f"guest{self._guest_counter}{suffix}"
            if name not in self._names:  # guest names are their own key
                return name

    def _set_name(self, peer: Peer, name: str) -> None:
        if peer.name:
            key = proto.name_key(peer.name)
            if self._names.get(key) is peer:
                del self._names[key]
            if self.cluster is not None:
                self.cluster.release(peer.name)
        peer.name = name
        peer.name_json = encode_str(name)
        self._names[proto.name_key(name)] = peer
        if peer.room and self.cluster is not None:
            self.cluster.moved(name, peer.room)

    def _add_to_room(self, peer: Peer, room: str, *, announce: bool) -> None:
        peer.room = room
        if peer.session is not None:
            peer.session.room = room  # where a resume takes it back to
            self._session_saved(peer.session)
        self.rooms.add(room, peer)
        if self.cluster is not None:
            self.cluster.moved(peer.name, room)
        if announce:
            self._announce(peer)
        topic = self.moderation.topic_message(room)  # moderation (#14): shown on entering
        if topic is not None:
            peer.send(topic)

    def _leave_room(self, peer: Peer, reason: str) -> None:
        room = peer.room
        self.rooms.discard(room, peer)
        peer.room = ""
        if peer.announced:
            peer.announced = False
            message = Message(reason, sender=peer.name, kind=LEAVE, room=room, timestamp=self.now())
            if self.closing:
                # Everyone here is being told the server is closing: no n^2 leave notices.
                # The rooms on other servers still hear who left.
                if self.cluster is not None:
                    self.cluster.notice(message)
                return
            self.notify_room(room, message, peer)

    def join(self, peer: Peer, room: str) -> None:
        """Move ``peer`` to ``room`` (``/join``): a leave notice here, a join notice there."""
        if room == peer.room:
            peer.send(Message(f"you are already in {room}", kind=INFO))
            return
        self._leave_room(peer, f"joined {room}")
        self._add_to_room(peer, room, announce=True)
        if not peer.json:
            peer.send(Message(f"you are now in {room}", kind=INFO))
        self._history_on_join(peer, room)

    def _nick(self, peer: Peer, name: str) -> None:
        if name == peer.name:
            return
        self._check_free(peer, name)  # "Alice" may become "alice"
        if self.moderation.name_refusal(name) is not None:  # moderation (#14)
            raise InvalidFrame(f"name {name!r} is banned")
        if self.cluster is not None:
            self._claim(peer, name, peer.room, lambda claimed: self._renamed(peer, name, claimed))
            return
        self._renamed(peer, name, True)

    def _renamed(self, peer: Peer, name: str, claimed: bool) -> None:
        if not claimed:
            self._error(peer, f"name {name!r} is taken")
            return
        old = peer.name
        self._set_name(peer, name)
        if peer.session is not None:
            self.sessions.rename(peer.session, proto.name_key(old), proto.name_key(name), name)
            self._session_saved(peer.session)
        self.moderation.renamed(old, name)  # moderation (#14): mutes follow the member
        message = Message(name, sender=old, kind=NICK, room=peer.room, timestamp=self.now())
        if peer.announced:
            self.notify_room(peer.room, message, peer)
        # The author is always told (a big room gets no notices); the room is not when it
        # has not heard of the old name yet (a text guest's first command): it will see
        # the join under the new one.
        peer.send(message)

    def _private(self, peer: Peer, text: str, to: str | None, ref: str | None = None) -> int | None:
        """Deliver a private message; return its id (None: the cluster's log answers
        ``ref`` later).

        Raises:
            InvalidFrame: Nobody has that name, here or (with a cluster) elsewhere.
        """
        assert to is not None
        target = self._names.get(proto.name_key(to))
        cluster = self.cluster
        if cluster is not None and cluster.sequenced:
            key = proto.name_key(to)
            if target is not None:
                to = target.name
            elif self.sessions.holder(key) is None:
                remote = cluster.remote_name(to)
                if remote is None:
                    raise InvalidFrame(f"no such user: {_shown(to)}")
                to = remote
            message = Message(text, peer.name, PRIVATE, None, self.now(), to)
            self.messages_in += 1
            cluster.private_logged(peer, message, ref)
            self.rooms.publish(message)
            return None
        # Ids are a cluster log's, which cannot be reached now: the message goes without
        # (acknowledged with id 0); one numbered here would reuse an id the log gives later.
        ident = 0 if cluster is not None and cluster.logged else self.history.take_ids(1)
        message = Message(text, peer.name, PRIVATE, None, self.now(), to, None, ident or None)
        if target is not None and not target.closing and target.authenticated:
            self.messages_in += 1
            self.deliver_private(target, message)
            return ident
        # Away but resumable here, or on another server: accepted all the same.
        if not self.keep_for_away(message) and (
            self.cluster is None or not self.cluster.private(message)
        ):
            raise InvalidFrame(f"no such user: {_shown(to)}")
        self.messages_in += 1
        self.rooms.publish(message)
        return ident

    def keep_for_away(self, message: Message) -> bool:
        """Keep a private message (numbered) for a member who is away but may resume: its
        connection ended, or is closing, within the resume window. False if ``message.to``
        is nobody's session."""
        session = self.sessions.holder(proto.name_key(message.to or ""))
        if session is None or (session.peer is not None and not session.peer.closing):
            return False
        message = self._numbered(message)
        if message.id is None:
            return False  # no id to replay it by: the cluster's log cannot be reached now
        # For the owner only: the stream goes with the session.
        self.history.keep(session.key, [entry(message)], per_stream=PRIVATE_HISTORY)
        return True

    def deliver_private(self, target: Peer, message: Message) -> None:
        """Deliver a private message (numbered here if it is not) to a local ``target``; its
        session keeps it, for a resume."""
        message = self._numbered(message)
        self.rooms.deliver_private(target, message)
        if target.session is not None and message.id is not None:
            self.history.keep(target.session.key, [entry(message)], per_stream=PRIVATE_HISTORY)

    def _numbered(self, message: Message) -> Message:
        """``message`` with an id of its own (the next one), unless it has one, or ids are
        a cluster log's (which cannot be reached now: the message goes without)."""
        if message.id is not None or (self.cluster is not None and self.cluster.logged):
            return message
        return dataclasses.replace(message, id=self.history.take_ids(1))

    def audience(self, room: str | None) -> int:
        """How many members here an announcement to ``room`` (None: everyone) reaches."""
        counts = self.rooms.counts()
        return sum(counts.values()) if room is None else counts.get(room, 0)

    def announce(self, message: Message) -> int:
        """Number, keep and deliver an announcement to everyone (or its room); return how
        many it was handed to."""
        message = self._numbered(message)
        if message.id is not None:
            self.history.seen(message.id)
            key = message.room if message.room is not None else ANNOUNCEMENTS
            self._keep(key, [entry(message)])
        return self.rooms.announce(message)

    def relay_remote(
        self,
        sender: str,
        room: str,
        batch: list[str],
        timestamp: float,
        first: int | None = None,
        exclude: Peer | None = None,
    ) -> None:
        """Keep and relay a batch a member sent to ``room``: a member of another server, or
        (from the cluster's log, numbered from ``first``) of any server but ``exclude``.
        Numbered here if ``first`` is None."""
        if first is None:
            first = self.history.take_ids(len(batch))
        else:
            self.history.seen(first + len(batch) - 1)
        if room in self.rooms:
            self.rooms.fan_out(room, exclude, sender, encode_str(sender), batch, timestamp, first)
        self._keep(
            room, room_entries(first, timestamp, sender, room, batch), batch_cost(sender, batch)
        )

    # -- the cluster's log (#12) ------------------------------------------------------------

    def keep_remote(self, room: str, sender: str, batch: list[str], ts: float, first: int) -> None:
        """Keep a batch read from the cluster's log as history only (a room this server
        starts to follow): not delivered, and not kept twice."""
        items = room_entries(first, ts, sender, room, batch)
        self._keep_from_log(room, items, batch_cost(sender, batch))

    def keep_announcement(self, message: Message) -> None:
        """Keep a room's announcement read from the cluster's log as history only."""
        assert message.room is not None
        self._keep_from_log(message.room, [entry(message)])

    def _keep_from_log(self, room: str, items: list[Entry], size: int | None = None) -> None:
        self.history.seen(items[-1][0])
        stream = self.history.log(room)
        if stream is None or items[0][0] > stream.last_id:  # not kept already
            self._keep(room, items, size)

    def deliver_unlogged(
        self,
        peer: Peer,
        room: str,
        batch: list[str],
        timestamp: float,
        refs: list[tuple[int, str]] | None,
    ) -> None:
        """Deliver here only, without ids, a batch the cluster's log could not take."""
        self.rooms.fan_out(room, peer, peer.name, peer.name_json, batch, timestamp)
        self.acked(peer, refs, 0)

    def acked(self, peer: Peer, refs: list[tuple[int, str]] | None, first: int) -> None:
        """Acknowledge the messages in ``refs`` (offsets in a batch numbered from ``first``;
        0: accepted but not numbered, the cluster's log being out of reach)."""
        if not refs or peer.closing:
            return
        peer.write(
            b"".join(
                [
                    b'{"type":"ack","ref":%s,"id":%d}\n'
                    % (encode_str(ref).encode(), first + i if first else 0)
                    for i, ref in refs
                ]
            )
        )
        refs.clear()

    def refused(self, peer: Peer, refs: list[tuple[int, str]] | None, reason: str) -> None:
        """Refuse each message in ``refs`` with ``reason``."""
        if peer.closing:
            return
        for _, ref in refs or ():
            self._error(peer, reason, ref)

    def _keep(self, key: str, items: list[Entry], size: int | None = None) -> None:
        # With history off the ids are still noted: a resume is told how many it missed.
        self.history.keep(key, items, size)
        if self.recorder is not None:
            self.recorder.record(items)

    # -- delivery ---------------------------------------------------------------------------

    def notify_room(
        self, room: str, message: Message, exclude: Peer | None, *, remote: bool = False
    ) -> None:
        """Tell ``room`` (but ``exclude``) of a join, leave or nick; one that happened here
        (not ``remote``) also crosses to the other servers."""
        if self.cluster is not None and not remote:
            self.cluster.notice(message)
        self.rooms.notify(room, message, exclude)

    def _flush_batch(
        self, peer: Peer, batch: list[str], refs: list[tuple[int, str]] | None = None
    ) -> None:
        """Relay the room messages in ``batch`` from ``peer`` to the rest of its room,
        numbered and kept; acknowledge those in ``refs``.

        With a cluster the batch also crosses to the other servers, once per batch.
        """
        if not batch or not peer.room:
            batch.clear()
            if refs:
                for _, ref in refs:
                    self._error(peer, "not in a room: message dropped", ref)
                refs.clear()
            return
        if self.moderation.mutes and self.moderation.muted(peer):  # moderation (#14)
            batch.clear()
            reason = f"you are muted in {peer.room}"
            if refs:  # each message its sender waits for is refused, by its ref
                for _, ref in refs:
                    self._error(peer, reason, ref)
                refs.clear()
            else:
                self._error(peer, reason)
            return
        if not peer.announced:
            self._announce(peer)
        count = len(batch)
        self.messages_in += count
        timestamp = self.now()
        room = peer.room
        cluster = self.cluster
        if cluster is not None and cluster.sequenced:
            # The cluster's log numbers the batch, and every server delivers it from there,
            # this one included: one order per room, the same ids everywhere.
            cluster.append(peer, room, batch[:], timestamp, refs[:] if refs else None)
            batch.clear()
            if refs:
                refs.clear()
            return
        if cluster is not None and cluster.logged:
            # The log cannot be reached: local delivery, without ids (ids are the log's).
            self.deliver_unlogged(peer, room, batch, timestamp, refs)
            cluster.batch(peer.name, room, batch, timestamp)  # counted as lost there
            batch.clear()
            return
        first = self.history.take_ids(count)
        self.rooms.fan_out(room, peer, peer.name, peer.name_json, batch, timestamp, first)
        entries = room_entries(first, timestamp, peer.name, room, batch)
        self._keep(room, entries, batch_cost(peer.name, batch))
        if cluster is not None:
            cluster.batch(peer.name, room, batch, timestamp)
        self.acked(peer, refs, first)
        batch.clear()
