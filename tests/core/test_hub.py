"""The hub with no event loop: fake peers, a fake clock, plain method calls.

Everything here runs synchronously; time passes only when a test says so
(:meth:`FakeClock.advance`), and each peer's transport records what it was given.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest

from chatcast._core.config import ServerConfig
from chatcast._core.hub import Hub
from chatcast._core.peer import Peer
from chatcast._core.rooms import NOTICE_DELAY
from chatcast.message import ANNOUNCEMENT, CLOSING, Message


class FakeTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Monotonic time that moves only in :meth:`advance`, firing due timers in order."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._timers: list[tuple[float, int, FakeTimer, Callable[..., object], tuple[Any, ...]]]
        self._timers = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> FakeTimer:
        timer = FakeTimer()
        heapq.heappush(self._timers, (self.now + delay, next(self._order), timer, callback, args))
        return timer

    def call_soon(self, callback: Callable[..., object], *args: Any) -> FakeTimer:
        return self.call_later(0.0, callback, *args)

    def advance(self, seconds: float) -> None:
        until = self.now + seconds
        while self._timers and self._timers[0][0] <= until:
            when, _, timer, callback, args = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not timer.cancelled:
                callback(*args)
        self.now = until


class FakeTransport:
    """Records writes; can be told to push back (``paused``) like a full socket buffer."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.eof = False
        self.closed = False
        self.aborted = False
        self.reading = True
        self.high: int | None = None

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = high

    def get_write_buffer_size(self) -> int:
        return 0

    def text(self) -> str:
        return b"".join(self.chunks).decode()

    def lines(self) -> list[str]:
        return self.text().splitlines()

    def frames(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines() if line.startswith("{")]


class Chat:
    """A hub and helpers to connect fake peers to it."""

    def __init__(self, **settings: Any) -> None:
        self.clock = FakeClock()
        self.released: list[Peer] = []
        self.config = ServerConfig(port=0, **settings)
        self.hub = Hub(
            self.config, self.clock, release=self.released.append, wall=lambda: 1700000000.0
        )
        self._ports = itertools.count(40000)

    def accept(self) -> tuple[Peer, FakeTransport]:
        """A peer counted as connected, not greeted yet (as before TLS or a refusal)."""
        peer = Peer(self.config.max_line_bytes)
        transport = FakeTransport()
        peer.attach(transport, f"127.0.0.1:{next(self._ports)}")
        self.hub.add(peer)
        return peer, transport

    def connect(self) -> tuple[Peer, FakeTransport]:
        peer, transport = self.accept()
        self.hub.greet(peer)
        return peer, transport

    def text_peer(self, name: str) -> tuple[Peer, FakeTransport]:
        """A text-mode peer (nc) renamed to ``name`` and announced in the lobby."""
        peer, transport = self.connect()
        self.hub.receive(peer, f"/nick {name}\n".encode())
        transport.chunks.clear()
        return peer, transport

    def json_peer(self, name: str, room: str | None = None) -> tuple[Peer, FakeTransport]:
        peer, transport = self.connect()
        hello: dict[str, Any] = {"type": "hello", "name": name}
        if room is not None:
            hello["room"] = room
        self.hub.receive(peer, (json.dumps(hello) + "\n").encode())
        self.clock.advance(NOTICE_DELAY)
        transport.chunks.clear()
        return peer, transport


def test_welcome_line_then_a_guest_in_the_default_room() -> None:
    chat = Chat()
    peer, transport = chat.connect()
    assert transport.lines() == ["Selamat datang di Server..."]
    assert peer.name.startswith("guest")
    assert chat.hub.who("lobby") == [peer.name]
    assert transport.high == chat.config.max_buffer_bytes  # disconnect mode: a high-water mark


def test_text_chat_reaches_the_room_but_not_the_sender() -> None:
    chat = Chat()
    alice, alice_out = chat.text_peer("alice")
    _bob, bob_out = chat.text_peer("bob")
    chat.clock.advance(1)
    alice_out.chunks.clear()
    bob_out.chunks.clear()
    chat.hub.receive(alice, b"hai\nsemua\n")
    assert bob_out.lines() == ["alice: hai", "alice: semua"]
    assert len(bob_out.chunks) == 1  # one read, one write per recipient
    assert alice_out.chunks == []
    assert chat.hub.messages_in == 2
    assert chat.hub.rooms.messages_out == 2


@pytest.mark.parametrize("cut", range(1, 12))
def test_a_line_split_anywhere_is_one_message(cut: int) -> None:
    chat = Chat()
    alice, _ = chat.text_peer("alice")
    _, bob_out = chat.text_peer("bob")
    data = b"halo dunia\n"
    chat.hub.receive(alice, data[:cut])
    chat.hub.receive(alice, data[cut:])
    chat.clock.advance(1)
    assert [line for line in bob_out.lines() if line.startswith("alice:")] == ["alice: halo dunia"]


def test_a_partial_line_followed_by_silence_is_a_message() -> None:
    """The lab's clients send() without LF: line_timeout of silence ends the line."""
    chat = Chat()
    alice, _ = chat.text_peer("alice")
    _, bob_out = chat.text_peer("bob")
    chat.clock.advance(1)
    bob_out.chunks.clear()
    chat.hub.receive(alice, b"no newline")
    chat.clock.advance(chat.config.line_timeout / 2)
    assert bob_out.chunks == []
    chat.clock.advance(chat.config.line_timeout)
    assert bob_out.lines() == ["alice: no newline"]


def test_names_are_unique_without_case() -> None:
    chat = Chat()
    chat.text_peer("alice")
    bob, bob_out = chat.text_peer("bob")
    chat.hub.receive(bob, b"/nick ALICE\n")
    assert bob_out.lines() == ["! name 'ALICE' is taken"]
    assert chat.hub.errors == 1
    assert bob.name == "bob"


def test_a_json_name_taken_is_refused_and_closed() -> None:
    chat = Chat()
    chat.json_peer("alice")
    peer, transport = chat.connect()
    chat.hub.receive(peer, b'{"type":"hello","name":"Alice"}\n')
    assert transport.frames()[-1]["reason"] == "name 'Alice' is taken"
    assert transport.eof
    assert peer.closing
    assert chat.released == [peer]


def test_join_leave_and_nick_notices() -> None:
    chat = Chat()
    _, watcher_out = chat.text_peer("watcher")
    alice, _ = chat.json_peer("alice")
    chat.clock.advance(NOTICE_DELAY)
    chat.hub.receive(alice, b'{"type":"nick","name":"alicia"}\n')
    chat.hub.receive(alice, b'{"type":"join","room":"den"}\n')
    chat.clock.advance(NOTICE_DELAY)
    assert watcher_out.lines() == [
        "* alice joined lobby",
        "* alice is now alicia",
        "* alicia left lobby (joined den)",
    ]


def test_a_storm_of_joins_is_one_write_per_member() -> None:
    """Joins within NOTICE_DELAY reach each member in one write, in order, each member told
    about the others but not about itself."""
    chat = Chat()
    watcher, watcher_out = chat.text_peer("watcher")
    chat.hub.receive(watcher, b"/join den\n")
    chat.clock.advance(NOTICE_DELAY)
    first, first_out = chat.json_peer("j0")
    joiners = [first] + [chat.json_peer(f"j{n}")[0] for n in range(1, 20)]
    watcher_out.chunks.clear()
    first_out.chunks.clear()
    for peer in joiners:
        chat.hub.join(peer, "den")  # as if all their /join frames came at once
    assert watcher_out.chunks == []  # waiting NOTICE_DELAY to go together
    chat.clock.advance(NOTICE_DELAY)
    assert len(watcher_out.chunks) == 1
    assert watcher_out.lines() == [f"* j{n} joined den" for n in range(20)]
    # j0 (JSON mode): its own join confirmed at once, then the 19 others in one write.
    assert len(first_out.chunks) == 2
    notices = [json.loads(line) for line in first_out.chunks[-1].splitlines()]
    assert [n["from"] for n in notices] == [f"j{n}" for n in range(1, 20)]


def test_notices_stop_past_notice_limit() -> None:
    chat = Chat(notice_limit=3)
    outs = [chat.text_peer(f"p{n}")[1] for n in range(3)]
    chat.clock.advance(NOTICE_DELAY)
    for out in outs:
        out.chunks.clear()
    chat.text_peer("p3")  # the room now has 4 > 3 members
    chat.clock.advance(NOTICE_DELAY)
    assert all(out.chunks == [] for out in outs)


def test_a_notice_goes_out_before_the_chat_that_follows_it() -> None:
    chat = Chat()
    _, watcher_out = chat.text_peer("watcher")
    chat.clock.advance(NOTICE_DELAY)
    watcher_out.chunks.clear()
    alice, _ = chat.connect()
    chat.hub.receive(alice, b"/nick alice\nhalo\n")  # its join waits NOTICE_DELAY...
    assert watcher_out.lines() == ["* alice joined lobby", "alice: halo"]  # ...but not chat


def test_flood_control_drops_then_disconnects() -> None:
    chat = Chat(rate=1.0, burst=2.0)
    alice, alice_out = chat.text_peer("alice")
    _, bob_out = chat.text_peer("bob")
    chat.clock.advance(NOTICE_DELAY)
    bob_out.chunks.clear()
    alice_out.chunks.clear()
    chat.hub.receive(alice, b"1\n2\n3\n")  # the /nick took one token: one left, then refused
    assert [line for line in bob_out.lines() if line.startswith("alice:")] == ["alice: 1"]
    assert alice_out.lines() == ["! rate limit (1/s) exceeded: message dropped"]  # once
    chat.clock.advance(1.0)  # one token back
    chat.hub.receive(alice, b"4\n")
    assert bob_out.lines()[-1] == "alice: 4"
    chat.hub.receive(alice, b"x\n" * 20)  # persistent flooding fills the violation bucket
    assert alice.closing
    assert alice_out.lines()[-1] == "! flooding: too many messages over the rate limit"
    assert chat.hub.rate_limited >= 10


def test_slow_consumer_is_disconnected_without_stalling_the_room() -> None:
    chat = Chat()
    alice, _ = chat.text_peer("alice")
    slow, slow_out = chat.text_peer("slow")
    _, fast_out = chat.text_peer("fast")
    chat.hub.paused(slow)  # its transport passed max_buffer_bytes
    chat.hub.receive(alice, b"still flowing\n")
    assert fast_out.lines()[-1] == "alice: still flowing"
    assert "alice: still flowing" not in slow_out.lines()  # its writer was swapped out
    assert chat.hub.slow_consumers == 1
    assert not slow.closing  # not inside the fan-out...
    chat.clock.advance(0)  # ...but on the next turn
    assert slow.closing
    assert slow_out.eof
    assert slow_out.lines()[-1].startswith("! slow consumer: more than")


def test_drop_oldest_keeps_a_bounded_backlog_and_says_how_many() -> None:
    chat = Chat(slow_consumer="drop-oldest", max_buffer_bytes=64 * 1024)
    alice, _ = chat.text_peer("alice")
    slow, slow_out = chat.text_peer("slow")
    chat.hub.paused(slow)
    for n in range(5000):
        chat.hub.receive(alice, f"message {n:05d}\n".encode())
    assert slow.backlog is not None
    assert slow.backlog.size <= 64 * 1024
    assert chat.hub.dropped > 0
    assert chat.hub.slow_consumers == 1  # one episode of falling behind, however long
    slow_out.chunks.clear()
    chat.hub.resumed(slow)
    lines = slow_out.lines()
    assert lines[0] == f"! {chat.hub.dropped} messages dropped: you were reading too slowly"
    assert lines[-1] == "alice: message 04999"  # the newest kept, in order
    numbers = [int(line.rsplit(" ", 1)[1]) for line in lines[1:]]
    assert numbers == sorted(numbers)


def test_heartbeat_ping_then_timeout() -> None:
    chat = Chat(heartbeat_interval=30.0, heartbeat_timeout=10.0)
    alice, out = chat.json_peer("alice")
    chat.clock.advance(29)
    chat.hub.tick()
    assert out.chunks == []  # not idle long enough
    chat.clock.advance(2)
    chat.hub.tick()
    assert out.frames() == [{"type": "ping"}]
    chat.hub.receive(alice, b'{"type":"pong"}\n')  # answered: no timeout, no second ping yet
    chat.clock.advance(11)
    chat.hub.tick()
    assert not alice.closing
    assert out.frames() == [{"type": "ping"}]
    chat.clock.advance(20)
    chat.hub.tick()
    assert out.frames() == [{"type": "ping"}, {"type": "ping"}]  # idle again: pinged again
    chat.clock.advance(11)
    chat.hub.tick()
    assert alice.closing
    assert out.frames()[-1]["reason"] == "heartbeat timeout"
    assert chat.hub.timeouts == 1


def test_authentication_timeout_counts_from_the_welcome() -> None:
    chat = Chat(token="sekret", auth_timeout=5.0)
    peer, transport = chat.connect()
    for _ in range(10):  # a peer that keeps talking without authenticating
        chat.clock.advance(1)
        chat.hub.receive(peer, b"hello?\n")
        chat.hub.tick()
    assert peer.closing
    assert transport.lines()[-1] == "! authentication timeout"
    assert chat.hub.auth_failures == 1


def test_text_auth_then_chat() -> None:
    chat = Chat(token="sekret")
    peer, transport = chat.connect()
    chat.hub.receive(peer, b"/auth wrong\n")
    assert transport.lines()[-1] == "! authentication failed"
    assert peer.closing
    peer, transport = chat.connect()
    chat.hub.receive(peer, b"/auth sekret\n")
    assert transport.lines()[-1] == "* authenticated"
    assert peer.authenticated
    assert peer.room == "lobby"
    other, other_out = chat.connect()
    chat.hub.receive(other, b"/auth sekret\n/nick budi\n")
    chat.clock.advance(NOTICE_DELAY)
    other_out.chunks.clear()
    chat.hub.receive(peer, b"halo\n")
    assert other_out.lines()[-1] == f"{peer.name}: halo"


def test_private_messages_and_unknown_names() -> None:
    chat = Chat()
    alice, alice_out = chat.text_peer("alice")
    _, bob_out = chat.json_peer("bob")
    chat.hub.receive(alice, b"/msg BOB psst\n/msg ghost hello\n")
    (frame,) = bob_out.frames()
    assert (frame["type"], frame["from"], frame["text"], frame["to"]) == (
        "private",
        "alice",
        "psst",
        "BOB",
    )
    assert alice_out.lines()[-1] == "! no such user: ghost"


def test_who_rooms_ping_and_bad_frames_in_json() -> None:
    chat = Chat()
    alice, out = chat.json_peer("alice")
    chat.text_peer("bob")
    chat.clock.advance(NOTICE_DELAY)
    out.chunks.clear()
    for frame in ('{"type":"who"}', '{"type":"rooms"}', '{"type":"nope"}', '{"type":"ping"}'):
        chat.hub.receive(alice, (frame + "\n").encode())
    who, rooms, error, pong = out.frames()
    assert who == {"type": "who", "room": "lobby", "names": ["alice", "bob"]}
    assert rooms == {"type": "rooms", "rooms": {"lobby": 2}}
    assert error["type"] == "error"
    assert error["reason"] == "unknown frame type 'nope'"
    assert pong == {"type": "pong"}
    assert not alice.closing  # a bad frame is an error, not a disconnect


def test_shutdown_flushes_notices_first_and_tells_everyone() -> None:
    chat = Chat()
    _, watcher_out = chat.text_peer("watcher")
    chat.clock.advance(NOTICE_DELAY)
    watcher_out.chunks.clear()
    alice, alice_out = chat.connect()
    chat.hub.receive(alice, b"/nick alice\n")  # a join notice waiting NOTICE_DELAY
    chat.hub.close(Message("bye", kind=CLOSING))
    assert watcher_out.lines() == ["* alice joined lobby", "! bye"]
    assert alice_out.lines()[-1] == "! bye"
    assert not any("left" in line for line in watcher_out.lines())  # no n^2 leave notices
    assert all(peer.closing for peer in chat.hub.peers)


def test_announcement_reaches_every_room_once() -> None:
    chat = Chat()
    alice, alice_out = chat.text_peer("alice")
    chat.hub.receive(alice, b"/join den\n")
    _, bob_out = chat.json_peer("bob")
    chat.clock.advance(NOTICE_DELAY)
    alice_out.chunks.clear()
    bob_out.chunks.clear()
    count = chat.hub.rooms.announce(Message("tutup jam 5", sender="server", kind=ANNOUNCEMENT))
    assert count == 2
    assert alice_out.lines() == ["[server] tutup jam 5"]
    assert bob_out.frames()[0]["text"] == "tutup jam 5"


def test_events_reach_subscribers_and_count_drops() -> None:
    chat = Chat()
    seen: list[Message] = []

    def keep(event: Message) -> bool:
        seen.append(event)
        return True

    chat.hub.rooms.subscribe(keep)
    chat.hub.rooms.subscribe(lambda event: False)  # a reader that is always full
    alice, _ = chat.text_peer("alice")
    chat.hub.receive(alice, b"halo\n")
    assert [(e.kind, e.sender, e.text) for e in seen][-1] == ("message", "alice", "halo")
    assert chat.hub.rooms.events_dropped == len(seen)


def test_lost_peer_leaves_and_frees_its_name() -> None:
    chat = Chat()
    alice, _ = chat.text_peer("alice")
    _, bob_out = chat.text_peer("bob")
    chat.clock.advance(1)
    bob_out.chunks.clear()
    chat.hub.lost(alice, ConnectionResetError())
    chat.clock.advance(NOTICE_DELAY)
    assert bob_out.lines() == ["* alice left lobby (connection lost)"]
    assert chat.hub.peer_named("alice") is None
    assert alice not in chat.hub.peers
    newcomer, _ = chat.text_peer("alice")
    assert newcomer.name == "alice"


def test_garbage_is_an_error_never_a_crash() -> None:
    chat = Chat()
    alice, out = chat.text_peer("alice")
    chat.hub.receive(alice, b"\xff\xfe\n\x1b[2J\n" + b"x" * 70000 + b"\n")
    errors = [line for line in out.lines() if line.startswith("!")]
    assert len(errors) == 3
    assert not alice.closing


def test_a_silent_guest_is_announced_after_the_join_grace() -> None:
    chat = Chat(join_grace=0.5)
    _, watcher_out = chat.text_peer("watcher")
    chat.clock.advance(1)
    watcher_out.chunks.clear()
    guest, _ = chat.connect()  # says nothing: it only listens, like the lab's receivers
    chat.clock.advance(0.4)
    assert watcher_out.chunks == []
    assert guest.name in chat.hub.who("lobby")  # listed (and receiving) from the start
    chat.clock.advance(0.1 + NOTICE_DELAY)
    assert watcher_out.lines() == [f"* {guest.name} joined lobby"]


def test_a_closed_peer_lingers_then_closes_then_aborts() -> None:
    """Lingering close: FIN after the output, close after 2 s, abort after close_timeout."""
    chat = Chat(close_timeout=5.0)
    alice, out = chat.text_peer("alice")
    chat.hub.receive(alice, b"/quit\n")
    assert out.eof
    assert not out.closed
    chat.clock.advance(2.0)
    assert out.closed
    assert not out.aborted
    chat.clock.advance(3.0)
    assert out.aborted  # a peer that never read is not kept for ever


def test_a_refusal_is_said_then_the_connection_closes() -> None:
    chat = Chat()
    peer, transport = chat.accept()
    chat.hub.refuse(peer, "server full (1 clients)")
    assert transport.lines() == ["! server full (1 clients)"]
    assert transport.eof
    assert chat.released == [peer]
    silent_peer, silent = chat.accept()
    chat.hub.refuse(silent_peer, "server full", say=False)  # no TLS session to say it in
    assert silent.chunks == []
    assert silent.closed


class FakeCluster:
    """A ClusterLink whose name claims are answered when the test says so."""

    def __init__(self) -> None:
        self.remote: dict[str, str] = {}
        self.claims: list[tuple[str, Callable[[bool], None]]] = []
        self.released: list[str] = []
        self.batches: list[tuple[str, str, list[str]]] = []

    def batch(self, sender: str, room: str, texts: list[str], timestamp: float) -> None:
        self.batches.append((sender, room, list(texts)))

    def notice(self, message: Message) -> None:
        pass

    def announcement(self, message: Message) -> None:
        pass

    def private(self, message: Message) -> bool:
        return False

    def moved(self, name: str, room: str) -> None:
        pass

    def release(self, name: str) -> None:
        self.released.append(name)

    sequenced = False  # a fire-and-forget backplane (no log)
    logged = False

    def guest_suffix(self) -> str:
        return "-abc"

    def claim(self, claimant: object, name: str, room: str, then: Callable[[bool], None]) -> None:
        self.claims.append((name, then))


def _cluster_chat() -> tuple[Chat, FakeCluster]:
    chat = Chat()
    cluster = FakeCluster()
    # A fire-and-forget cluster (no log): the log's methods are never called.
    chat.hub = Hub(chat.config, chat.clock, cluster=cluster, release=chat.released.append)  # type: ignore[arg-type]
    return chat, cluster


def test_a_name_claim_pauses_reading_and_keeps_frames_in_order() -> None:
    chat, cluster = _cluster_chat()
    _, bob_out = chat.json_peer("bob")  # bob's own claim is pending...
    ((_, answer),) = cluster.claims
    answer(True)  # ...and granted
    chat.clock.advance(NOTICE_DELAY)
    bob_out.chunks.clear()
    alice, alice_out = chat.connect()
    chat.hub.receive(alice, b'{"type":"hello","name":"alice"}\n{"type":"message","text":"1"}\n')
    assert alice.transport is not None
    transport = alice_out
    assert not transport.reading  # paused while Redis decides
    chat.hub.receive(alice, b'{"type":"message","text":"2"}\n')  # already read: it waits too
    assert cluster.batches == []
    name, answer = cluster.claims[-1]
    assert name == "alice"
    answer(True)
    assert transport.reading
    assert alice.name == "alice"
    sent = [text for _, _, texts in cluster.batches for text in texts]
    assert sent == ["1", "2"]  # in order, after the claim
    chat.clock.advance(NOTICE_DELAY)
    assert [f["text"] for f in bob_out.frames() if f["type"] == "message"] == ["1", "2"]


def test_a_name_taken_elsewhere_is_refused_and_a_late_grant_released() -> None:
    chat, cluster = _cluster_chat()
    alice, out = chat.connect()
    chat.hub.receive(alice, b'{"type":"hello","name":"alice"}\n')
    _, answer = cluster.claims[-1]
    answer(False)
    assert out.frames()[-1]["reason"] == "name 'alice' is taken"
    assert alice.closing
    late, _ = chat.connect()
    chat.hub.receive(late, b'{"type":"hello","name":"carol"}\n')
    _, answer = cluster.claims[-1]
    chat.hub.lost(late, ConnectionResetError())  # gone before Redis answered
    answer(True)
    assert cluster.released[-1] == "carol"  # the name it was granted goes back at once


def test_closing_a_peer_that_is_already_gone_aborts_quietly() -> None:
    """write_eof() on a reset connection raises ENOTCONN: the hub aborts, nothing escapes."""
    chat = Chat()
    alice, out = chat.text_peer("alice")

    def gone() -> None:
        raise OSError(107, "Transport endpoint is not connected")

    out.write_eof = gone  # type: ignore[method-assign]
    chat.hub.disconnect(alice, None)
    assert out.aborted
    assert alice.closing


def test_errors_quote_no_more_than_a_name() -> None:
    """An unknown recipient of 5,000 characters is not echoed back whole; deep JSON nesting
    is reported in the protocol's words."""
    chat = Chat()
    alice, out = chat.text_peer("alice")
    chat.hub.receive(alice, b"/msg " + b"z" * 5000 + b" hi\n")
    assert out.lines()[-1] == "! no such user: " + "z" * 32 + "..."
    bob, bob_out = chat.json_peer("bob")
    chat.hub.receive(bob, b"[" * 30000 + b"]" * 30000 + b"\n")
    assert bob_out.frames()[-1]["reason"] == "not a JSON frame: nested too deeply"
