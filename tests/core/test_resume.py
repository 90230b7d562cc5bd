"""Ids, acks, history and resume in the hub, with fake peers and a fake clock."""

from __future__ import annotations

import itertools
import json
from typing import Any

from chatcast._core.history import History, HistoryLimits
from chatcast._core.hub import REPLAY_CHUNK
from chatcast._core.peer import Peer
from chatcast._core.rooms import NOTICE_DELAY
from chatcast._core.wire import ERROR, Message

from .test_hub import Chat, FakeTransport


class ResumeChat(Chat):
    """A chat whose session tokens are predictable: t1, t2, ..."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        tokens = (f"t{n}" for n in itertools.count(1))
        self.hub.sessions._token = lambda: next(tokens)

    def hello(self, **fields: Any) -> tuple[Peer, FakeTransport]:
        """A JSON client (protocol version 2 unless told) that sent ``fields`` in its hello."""
        peer, transport = self.connect()
        hello = {"type": "hello", "version": 2, **fields}
        self.hub.receive(peer, (json.dumps(hello) + "\n").encode())
        self.clock.advance(NOTICE_DELAY)
        return peer, transport

    def send(self, peer: Peer, **frame: Any) -> None:
        self.hub.receive(peer, (json.dumps(frame) + "\n").encode())
        self.clock.advance(NOTICE_DELAY)


def welcome(transport: FakeTransport) -> dict[str, Any]:
    return next(frame for frame in transport.frames() if frame["type"] == "welcome")


def texts(transport: FakeTransport, kind: str = "message") -> list[str]:
    return [frame["text"] for frame in transport.frames() if frame["type"] == kind]


def test_welcome_gives_a_session_and_messages_carry_increasing_ids() -> None:
    chat = ResumeChat()
    alice, alice_out = chat.hello(name="alice")
    bob, bob_out = chat.hello(name="bob")
    assert welcome(alice_out)["session"] == "t1"
    assert welcome(bob_out)["session"] == "t2"
    assert welcome(bob_out)["last"] == 0
    chat.send(alice, type="message", text="one")
    chat.hub.receive(alice, b'{"type":"message","text":"two"}\n{"type":"message","text":"3"}\n')
    chat.send(bob, type="message", text="private", to="alice")
    received = [f for f in bob_out.frames() if f["type"] == "message"]
    assert [(f["text"], f["id"]) for f in received] == [("one", 1), ("two", 2), ("3", 3)]
    private = [f for f in alice_out.frames() if f["type"] == "private"]
    assert private[0]["id"] == 4


def test_acks_carry_the_ref_and_the_id() -> None:
    chat = ResumeChat()
    alice, alice_out = chat.hello(name="alice")
    chat.hello(name="bob")
    alice_out.chunks.clear()
    chat.hub.receive(
        alice,
        b'{"type":"message","text":"a","ref":"r1"}\n'
        b'{"type":"message","text":"b"}\n'
        b'{"type":"message","text":"c","ref":"r3"}\n'
        b'{"type":"message","text":"d","to":"bob","ref":"r4"}\n',
    )
    acks = [f for f in alice_out.frames() if f["type"] == "ack"]
    assert acks == [
        {"type": "ack", "ref": "r1", "id": 1},
        {"type": "ack", "ref": "r3", "id": 3},
        {"type": "ack", "ref": "r4", "id": 4},
    ]


def test_refusals_carry_the_ref() -> None:
    chat = ResumeChat(rate=1, burst=1)
    alice, alice_out = chat.hello(name="alice")
    alice_out.chunks.clear()
    chat.hub.receive(
        alice,
        b'{"type":"message","text":"to nobody","to":"ghost","ref":"p"}\n'
        b'{"type":"message","text":"over the limit","ref":"q"}\n'
        b'{"type":"message","text":"bell \\u0007","ref":"r"}\n',
    )
    errors = {f["ref"]: f["reason"] for f in alice_out.frames() if f["type"] == "error"}
    assert errors == {
        "p": "no such user: ghost",
        "q": "rate limit (1/s) exceeded: message dropped",
        "r": "control character U+0007 is not allowed",
    }


def test_a_ref_that_is_too_long_is_refused() -> None:
    chat = ResumeChat()
    alice, alice_out = chat.hello(name="alice")
    chat.send(alice, type="message", text="x", ref="r" * 65)
    assert texts(alice_out, "error") == ['"ref" must be 1 to 64 characters']


def test_resume_closes_the_ghost_and_replays_what_was_missed_once() -> None:
    """The link died without a FIN: the server still holds the old connection. The client
    comes back with its token and last id: name back at once, the ghost closed with a
    reason, every missed message once, in order, then the live stream."""
    chat = ResumeChat()
    ghost, ghost_out = chat.hello(name="alice")
    bob, bob_out = chat.hello(name="bob")
    chat.send(bob, type="message", text="seen")
    last = max(f["id"] for f in ghost_out.frames() if "id" in f)
    bob_out.chunks.clear()
    for n in range(5):  # alice's link is dead: these reach the ghost's transport only
        chat.send(bob, type="message", text=f"missed {n}")
    alice, alice_out = chat.hello(name="alice", session="t1", last=last)
    assert ghost.closing
    assert ghost_out.frames()[-1] == {
        "type": "closing",
        "text": "resumed from another connection",
        "reason": "resumed from another connection",
    }
    hello = welcome(alice_out)
    assert hello["resumed"] is True
    assert hello["name"] == "alice"
    assert hello["session"] == "t3"  # a token is good for one resume
    replayed = [f for f in alice_out.frames() if f["type"] == "message"]
    assert [f["text"] for f in replayed] == [f"missed {n}" for n in range(5)]
    assert all(f["history"] is True for f in replayed)
    chat.send(bob, type="message", text="live")
    assert texts(alice_out)[-1] == "live"
    assert texts(alice_out).count("live") == 1
    chat.hub.lost(ghost, None)  # the ghost's end, when it comes, changes nothing
    assert chat.hub.peer_named("alice") is alice
    chat.clock.advance(1)
    assert [f for f in bob_out.frames() if f["type"] in ("join", "leave")] == []
    assert chat.hub.resumes == 1


def test_a_dropped_session_holds_its_name_and_private_messages() -> None:
    chat = ResumeChat(resume_window=60)
    alice, alice_out = chat.hello(name="alice")
    bob, bob_out = chat.hello(name="bob")
    last = welcome(alice_out)["last"]
    chat.hub.lost(alice, ConnectionResetError())
    chat.clock.advance(NOTICE_DELAY)
    assert [f["text"] for f in bob_out.frames() if f["type"] == "leave"] == ["connection lost"]
    _thief, thief_out = chat.hello(name="ALICE")
    assert thief_out.frames()[-1]["reason"] == "name 'ALICE' is taken"
    chat.send(bob, type="message", text="for your eyes", to="alice", ref="k")
    assert next(f for f in bob_out.frames() if f["type"] == "ack")["ref"] == "k"
    chat.send(bob, type="message", text="to the room")
    back, back_out = chat.hello(session="t1", last=last)
    assert back.name == "alice"
    frames = [f for f in back_out.frames() if f["type"] in ("private", "message")]
    assert [(f["type"], f["text"]) for f in frames] == [
        ("private", "for your eyes"),
        ("message", "to the room"),
    ]
    assert [f["from"] for f in bob_out.frames() if f["type"] == "join"][-1] == "alice"


def test_after_the_window_the_name_is_free_and_the_privates_are_gone() -> None:
    chat = ResumeChat(resume_window=60)
    alice, _ = chat.hello(name="alice")
    bob, _ = chat.hello(name="bob")
    chat.hub.lost(alice, None)
    chat.send(bob, type="message", text="secret", to="alice")
    chat.clock.advance(61)
    chat.hub.tick()
    assert chat.hub.sessions.waiting == 0
    newcomer, newcomer_out = chat.hello(name="alice", session="t1", last=0)
    hello = welcome(newcomer_out)
    assert hello["resumed"] is False  # expired: a new session, under the name now free
    assert newcomer.name == "alice"
    assert "secret" not in newcomer_out.text()
    assert chat.hub.resume_failures == 1


def test_a_gap_says_how_many_are_gone() -> None:
    chat = ResumeChat(history=HistoryLimits(messages=3))
    _ghost, ghost_out = chat.hello(name="alice")
    bob, _ = chat.hello(name="bob")
    last = welcome(ghost_out)["last"]
    for n in range(10):
        chat.send(bob, type="message", text=str(n))
    _, alice_out = chat.hello(session="t1", last=last)
    frames = [f for f in alice_out.frames() if f["type"] in ("gap", "message")]
    assert frames[0] == {"type": "gap", "text": "", "room": "lobby", "missed": 7}
    assert [f["text"] for f in frames[1:]] == ["7", "8", "9"]


def test_forged_and_replayed_tokens_get_nothing() -> None:
    chat = ResumeChat()
    _alice, _alice_out = chat.hello(name="alice")
    for token in ("t2", "x" * 5000, "", "t1\u0000"):
        _, out = chat.hello(name="mallory", session=token, last=0)
        if out.frames()[-1]["type"] == "error":
            assert out.frames()[-1]["reason"] == "name 'mallory' is taken"
            continue
        assert welcome(out)["resumed"] is False
        assert welcome(out)["name"] == "mallory"
        chat.hub.receive(chat.hub.peer_named("mallory"), b'{"type":"quit"}\n')  # type: ignore[arg-type]
    # The real token, twice at once: the second finds it already replaced.
    first, first_out = chat.hello(session="t1", last=0)
    second, second_out = chat.hello(session="t1", last=0)
    assert welcome(first_out)["resumed"] is True
    assert welcome(second_out)["resumed"] is False
    assert second.name != "alice"
    assert chat.hub.peer_named("alice") is first


def test_an_id_from_the_future_is_an_error_and_replays_nothing() -> None:
    chat = ResumeChat()
    chat.hello(name="alice")
    _, out = chat.hello(session="t1", last=10**12)
    assert welcome(out)["resumed"] is True
    assert texts(out, "error") == ["last id 1000000000000 is ahead of this server (latest 0)"]


def test_a_long_replay_is_spread_over_turns_and_live_output_waits_behind_it() -> None:
    chat = ResumeChat()
    _ghost, ghost_out = chat.hello(name="alice")
    bob, _ = chat.hello(name="bob")
    last = welcome(ghost_out)["last"]
    count = REPLAY_CHUNK * 3 + 7
    for n in range(count):
        chat.hub.receive(bob, f'{{"type":"message","text":"m{n}"}}\n'.encode())
    alice, alice_out = chat.connect()
    chat.hub.receive(alice, b'{"type":"hello","version":2,"session":"t1","last":%d}\n' % last)
    chat.hub.receive(bob, b'{"type":"message","text":"live"}\n')  # during the replay
    assert alice.replay is not None
    chat.clock.advance(1)
    assert alice.replay is None
    got = texts(alice_out)
    assert got == [f"m{n}" for n in range(count)] + ["live"]


def test_quit_ends_the_session_and_frees_the_name_at_once() -> None:
    chat = ResumeChat()
    alice, _ = chat.hello(name="alice")
    chat.send(alice, type="quit")
    chat.hub.lost(alice, None)
    again, _out = chat.hello(name="alice")
    assert again.name == "alice"
    _, forged = chat.hello(session="t1", last=0)
    assert welcome(forged)["resumed"] is False


def test_history_on_join_is_marked_and_only_for_version_2() -> None:
    chat = ResumeChat(history_on_join=2)
    bob, _ = chat.hello(name="bob")
    for text in ("a", "b", "c"):
        chat.send(bob, type="message", text=text)
    _, new_out = chat.hello(name="new")
    frames = [f for f in new_out.frames() if f["type"] == "message"]
    assert [(f["text"], f["history"]) for f in frames] == [("b", True), ("c", True)]
    _, old_out = chat.hello(name="old", version=1)
    assert texts(old_out) == []
    _, text_out = chat.text_peer("nc")
    assert "alice" not in text_out.text()
    assert [line for line in text_out.lines() if line.startswith("bob:")] == []


def test_history_requests() -> None:
    chat = ResumeChat()
    bob, bob_out = chat.hello(name="bob")
    for n in range(1, 11):
        chat.send(bob, type="message", text=f"m{n}")  # ids 1..10
    bob_out.chunks.clear()
    chat.send(bob, type="history", limit=3, ref="h")
    frames = bob_out.frames()
    assert [f["text"] for f in frames[:3]] == ["m8", "m9", "m10"]
    assert all(f["history"] and f["ref"] == "h" for f in frames[:3])
    assert frames[3] == {"type": "history", "room": "lobby", "count": 3, "ref": "h"}
    bob_out.chunks.clear()
    chat.send(bob, type="history", after=4, before=7)
    assert texts(bob_out) == ["m5", "m6"]
    bob_out.chunks.clear()
    for bad in ({"limit": 501}, {"limit": 0}, {"after": 99}, {"before": -1}, {"room": "../x"}):
        chat.send(bob, type="history", ref="e", **bad)
    reasons = [f["reason"] for f in bob_out.frames() if f["type"] == "error"]
    assert reasons == [
        '"limit" must be an integer from 1 to 500',
        '"limit" must be an integer from 1 to 500',
        "id 99 is ahead of this server (latest 10)",
        '"before" must be an integer from 0 to 2**63-1',
        "room may hold only letters, digits, '_', '.' and '-'",
    ]


def test_a_history_reply_is_bounded_in_bytes() -> None:
    chat = ResumeChat(max_buffer_bytes=200_000)
    bob, bob_out = chat.hello(name="bob")
    big = "x" * 20_000
    for _ in range(30):
        chat.send(bob, type="message", text=big)
    bob_out.chunks.clear()
    chat.send(bob, type="history", limit=30)
    end = bob_out.frames()[-1]
    assert end["more"] is True
    assert sum(len(chunk) for chunk in bob_out.chunks) <= 100_000 + 25_000


def test_text_mode_history_is_marked() -> None:
    chat = ResumeChat()
    alice, _ = chat.text_peer("alice")
    bob, bob_out = chat.text_peer("bob")
    chat.hub.receive(alice, b"one\ntwo\n")
    bob_out.chunks.clear()
    chat.hub.receive(bob, b"/history 5\n")
    assert bob_out.lines() == [
        "* last 2 message(s) in lobby:",
        "[history] alice: one",
        "[history] alice: two",
    ]
    chat.hub.receive(bob, b"/history 9999\n")
    assert bob_out.lines()[-1] == "! usage: /history [N], N from 1 to 500"


def test_announcements_are_numbered_kept_and_replayed() -> None:
    from chatcast.message import ANNOUNCEMENT, Message

    chat = ResumeChat()
    _, ghost_out = chat.hello(name="alice")
    last = welcome(ghost_out)["last"]
    chat.hub.announce(Message("server restarts at noon", "server", ANNOUNCEMENT, None, 1.0))
    announced = [f for f in ghost_out.frames() if f["type"] == "announcement"]
    assert announced[0]["id"] == 1
    _, out = chat.hello(session="t1", last=last)
    replayed = [f for f in out.frames() if f["type"] == "announcement"]
    assert [(f["text"], f["history"]) for f in replayed] == [("server restarts at noon", True)]


def test_a_resume_replays_nothing_from_before_the_session_began() -> None:
    """A client cannot make a resume replay what came before its own welcome (nor, once it
    resumed, before the id it resumed from): a chain of resumes "from id 0" replays only
    what came after the session began, never the room's whole history."""
    chat = ResumeChat()
    bob, _ = chat.hello(name="bob")
    for n in range(5):
        chat.send(bob, type="message", text=f"before {n}")
    chat.hello(name="alice")
    chat.send(bob, type="message", text="after")
    _, out = chat.hello(session="t2", last=0)
    assert texts(out) == ["after"]
    _, again = chat.hello(session="t3", last=0)
    assert texts(again) == ["after"]


def test_history_is_only_for_those_who_may_join() -> None:
    """Before authenticating, a history request (text or JSON) gets nothing but a refusal."""
    chat = ResumeChat(token="s3cret")
    peer, out = chat.connect()
    chat.hub.receive(peer, b"/history 5\n")
    assert out.lines()[-1] == "! authentication required: send /auth TOKEN first"
    other, other_out = chat.connect()
    chat.hub.receive(other, b'{"type":"hello","version":2,"session":"t1","last":0}\n')
    assert other_out.frames()[-1]["reason"] == "authentication required"
    assert "welcome" not in other_out.text()


def test_a_flood_of_forged_resumes_costs_one_lookup_each() -> None:
    """A thousand guessed tokens: each a new session (no name, no history taken over), no
    session table growth beyond the connections themselves, each counted."""
    chat = ResumeChat()
    alice, _ = chat.hello(name="alice")
    for n in range(1000):
        peer, out = chat.hello(session=f"guess{n}", last=0)
        assert welcome(out)["resumed"] is False
        assert peer.name != "alice"
        chat.hub.receive(peer, b'{"type":"quit"}\n')
        chat.hub.lost(peer, None)
    assert chat.hub.resume_failures == 1000
    assert len(chat.hub.sessions) == 1  # alice's
    assert chat.hub.peer_named("alice") is alice


# -- found in review ------------------------------------------------------------------


def test_session_room_follows_join_when_the_server_drops_the_peer() -> None:
    """alice /joins den, then the server drops her (heartbeat timeout): disconnect() empties
    peer.room before lost(), so the session keeps 'lobby'; the resume puts her back in the
    lobby and replays lobby, not den: the den message she missed is lost silently."""
    chat = ResumeChat()
    alice, _alice_out = chat.hello(name="alice")
    bob, _ = chat.hello(name="bob", room="den")
    chat.send(alice, type="join", room="den")
    last = chat.hub.history.latest_id
    chat.hub.disconnect(alice, Message("heartbeat timeout", kind=ERROR))  # as tick() does
    chat.clock.advance(NOTICE_DELAY)
    chat.hub.lost(alice, None)
    chat.send(bob, type="message", text="missed in den")
    back, back_out = chat.hello(session="t1", last=last)
    assert texts(back_out) == ["missed in den"]
    assert back.room == "den"


def test_resume_while_the_dropped_ghost_lingers() -> None:
    """Same, but the client resumes before lost() (lingering close of up to 2 s)."""
    chat = ResumeChat()
    alice, _ = chat.hello(name="alice")
    bob, _ = chat.hello(name="bob", room="den")
    chat.send(alice, type="join", room="den")
    last = chat.hub.history.latest_id
    chat.hub.disconnect(alice, None)  # e.g. slow consumer / heartbeat timeout
    chat.send(bob, type="message", text="missed in den")
    back, _back_out = chat.hello(session="t1", last=last)
    assert back.room == "den"


def test_muted_message_is_acked_after_a_join() -> None:
    """A muted member's message with a ref is dropped, but its ref stays in ``refs``; after
    /join in the same read, the next accepted message acks BOTH refs with the same id."""
    chat = ResumeChat(op_token="sesame")
    op, _ = chat.hello(name="teacher", op="sesame")
    alice, alice_out = chat.hello(name="alice")
    chat.send(op, type="mute", name="alice")
    alice_out.chunks.clear()
    chat.hub.receive(
        alice,
        b'{"type":"message","text":"dropped","ref":"r1"}\n'
        b'{"type":"join","room":"den"}\n'
        b'{"type":"message","text":"kept","ref":"r2"}\n',
    )
    acks = [f for f in alice_out.frames() if f["type"] == "ack"]
    errors = [f for f in alice_out.frames() if f["type"] == "error"]
    assert [a["ref"] for a in acks] == ["r2"]
    assert errors
    assert errors[0].get("ref") == "r1"


def test_resume_with_history_off_gets_no_gap() -> None:
    """HistoryLimits(messages=0): room messages are not kept, so a resume replays nothing and
    the 'exact gap' is 0: the client loses the missed messages with no gap frame at all."""
    chat = ResumeChat(history=HistoryLimits(messages=0))
    _ghost, ghost_out = chat.hello(name="alice")
    bob, _ = chat.hello(name="bob")
    last = welcome(ghost_out)["last"]
    for n in range(3):
        chat.send(bob, type="message", text=f"missed {n}")
    _, alice_out = chat.hello(session="t1", last=last)
    assert welcome(alice_out)["resumed"] is True
    kinds = [f["type"] for f in alice_out.frames()]
    assert "gap" in kinds or "missed 0" in texts(alice_out)


def test_two_chunked_replays_lose_the_second_ones_tail() -> None:
    """history_on_join may be up to 500 (> REPLAY_CHUNK): a join pipelined behind the hello
    starts a second chunked replay while the first runs; the first one's end sets
    peer.replay = None and the second stops after its first chunk."""
    chat = ResumeChat(history_on_join=500)
    bob, _ = chat.hello(name="bob")
    carol, _ = chat.hello(name="carol", room="den")
    for n in range(500):
        chat.send(bob, type="message", text=f"lobby {n}")
        chat.send(carol, type="message", text=f"den {n}")
    peer, out = chat.connect()
    chat.hub.receive(
        peer,
        b'{"type":"hello","version":2,"name":"alice"}\n{"type":"join","room":"den"}\n',
    )
    chat.clock.advance(1)
    den = [t for t in texts(out) if t.startswith("den")]
    assert len(den) == 500


def test_renamed_session_gets_its_own_messages_back() -> None:
    """Own messages are filtered by the session's current name: after /nick, what it said
    under its old name after `last` is replayed to it as someone else's."""
    chat = ResumeChat()
    alice, _alice_out = chat.hello(name="alice")
    _bob, _ = chat.hello(name="bob")
    last = chat.hub.history.latest_id
    chat.send(alice, type="message", text="mine")
    chat.send(alice, type="nick", name="alicia")
    chat.hub.lost(alice, ConnectionResetError())
    _, back_out = chat.hello(session="t1", last=last)
    assert "mine" not in texts(back_out)


def test_private_to_a_session_whose_connection_is_closing_is_refused() -> None:
    """The server dropped alice (heartbeat timeout, slow consumer): for the ~2 s lingering
    close her session still points at the closing peer, so a private to her is refused
    'no such user' instead of being kept for her resume."""
    chat = ResumeChat()
    alice, _ = chat.hello(name="alice")
    bob, bob_out = chat.hello(name="bob")
    chat.hub.disconnect(alice, Message("heartbeat timeout", kind=ERROR))
    bob_out.chunks.clear()
    chat.send(bob, type="message", text="psst", to="alice", ref="p")
    assert [f["type"] for f in bob_out.frames() if f.get("ref") == "p"] == ["ack"]


def test_ended_sessions_leave_nothing_behind_in_the_history() -> None:
    """Sessions that got a private and quit: their streams are dropped and hold nothing, and
    the heap of oldest streams stays bounded by the streams that exist."""
    chat = ResumeChat()
    bob, _ = chat.hello(name="bob")
    for n in range(200):
        peer, _ = chat.hello(name=f"u{n}")
        chat.send(bob, type="message", text="x" * 1000, to=f"u{n}")
        chat.send(peer, type="quit")
        chat.hub.lost(peer, None)
    history = chat.hub.history
    assert history.total_messages == 0
    assert len(history._oldest) <= 70  # not one per session that ever was
    assert all(len(entry[2]) == 0 and entry[2].remembered == 0 for entry in history._oldest)


def test_streams_of_dead_rooms_are_forgotten() -> None:
    """A room that held something and then nothing for an hour is forgotten, remembered ids
    and all: 5000 rooms used once do not stay for good."""
    history = History(HistoryLimits(total_messages=10, age=60.0))
    for n in range(5000):
        first = history.take_ids(1)
        history.keep(f"room{n}", [(first, 0.0, "message", "m", "hi", f"room{n}", None)])
    history.expire(10_000.0)  # everything is past its age: empty from now
    assert history.total_messages == 0
    history.expire(10_000.0 + 3601)
    assert len(history._logs) == 0


def test_a_long_replay_waits_for_a_slow_reader() -> None:
    """A replay does not push more than max_buffer_bytes into a transport the client is not
    draining: it waits for the drain (resume_writing), then goes on, live output behind it."""
    chat = ResumeChat()
    _, ghost_out = chat.hello(name="alice")
    bob, _ = chat.hello(name="bob")
    last = welcome(ghost_out)["last"]
    for n in range(REPLAY_CHUNK * 3):
        chat.hub.receive(bob, f'{{"type":"message","text":"m{n}"}}\n'.encode())
    alice, alice_out = chat.connect()
    full = {"size": chat.config.max_buffer_bytes}  # the client is not reading
    alice_out.get_write_buffer_size = lambda: full["size"]  # type: ignore[method-assign]
    chat.hub.receive(alice, b'{"type":"hello","version":2,"session":"t1","last":%d}\n' % last)
    chat.clock.advance(1)
    assert texts(alice_out) == []
    chat.hub.receive(bob, b'{"type":"message","text":"live"}\n')
    assert alice.replay is not None  # waiting, not dropped as a slow consumer
    assert not alice.closing
    full["size"] = 0
    chat.hub.resumed(alice)  # the transport drained
    chat.clock.advance(1)
    assert texts(alice_out) == [f"m{n}" for n in range(REPLAY_CHUNK * 3)] + ["live"]


class LogCluster:
    """A ClusterLink with a log (#12) that answers at once, but for replays: the test
    answers those (a fetch from the log takes a while)."""

    sequenced = True
    logged = True

    def __init__(self) -> None:
        self.remote: dict[str, str] = {}
        self.replays: list[Any] = []
        self.read: set[str] = {"lobby", "x"}  # rooms read here already
        self.following: list[Any] = []  # rooms being started: the test says when they are

    def guest_suffix(self) -> str:
        return "-abc"

    def claim(self, claimant: object, name: str, room: str, then: Any) -> None:
        then(True)

    def notice(self, message: Message) -> None:
        pass

    def moved(self, name: str, room: str) -> None:
        pass

    def release(self, name: str) -> None:
        pass

    def session_saved(self, digest: bytes, record: dict[str, str], ttl: float) -> None:
        pass

    def session_dropped(self, digest: bytes) -> None:
        pass

    def replay(self, room: str, names: frozenset[str], last: int, then: Any) -> None:
        self.replays.append(then)

    def reading(self, room: str) -> bool:
        return room in self.read

    def cutoff(self, room: str) -> int:
        return 0

    def after_following(self, room: str, then: Any) -> None:
        if room in self.read:
            then(0)
        else:
            self.following.append(then)


def test_a_join_during_a_resume_does_not_let_live_output_pass_the_replay() -> None:
    """A client resumes and joins another room at once: the join's history does not end the
    hold of its live output while the missed messages are fetched from the cluster's log."""
    from chatcast._core.history import room_entries
    from chatcast._core.hub import Hub

    chat = ResumeChat()
    cluster = LogCluster()
    chat.hub = Hub(chat.config, chat.clock, cluster=cluster, release=chat.released.append)  # type: ignore[arg-type]
    tokens = (f"t{n}" for n in itertools.count(1))
    chat.hub.sessions._token = lambda: next(tokens)
    ghost, _ = chat.hello(name="alice")
    chat.hello(name="carol", room="x")
    chat.hub.lost(ghost, None)  # alice is away; her session waits
    alice, alice_out = chat.connect()
    chat.hub.receive(
        alice,
        b'{"type":"hello","version":2,"session":"t1","last":0}\n{"type":"join","room":"x"}\n',
    )
    assert welcome(alice_out)["resumed"] is True
    chat.hub.relay_remote("carol", "x", ["live"], 1.0, 10, None)  # from the log, live
    (then,) = cluster.replays
    then(room_entries(5, 1.0, "bob", "lobby", ["missed"]), None)
    assert texts(alice_out) == ["missed", "live"]


def test_a_slow_member_joining_a_room_not_read_yet_keeps_its_backlog() -> None:
    """A member reading too slowly (drop-oldest: its output goes to a bounded backlog) joins
    a room this server starts to read: once the room's history is in, its output goes to the
    backlog again, not past it to the socket (which would reorder, and be unbounded)."""
    from chatcast._core.hub import Hub

    chat = ResumeChat(slow_consumer="drop-oldest")
    cluster = LogCluster()
    chat.hub = Hub(chat.config, chat.clock, cluster=cluster, release=chat.released.append)  # type: ignore[arg-type]
    alice, alice_out = chat.hello(name="alice")
    chat.hub.paused(alice)  # her socket is full
    chat.hub.relay_remote("carol", "lobby", ["old"], 1.0, 5, None)  # into her backlog
    chat.send(alice, type="join", room="new")  # nobody here was in it
    (ready,) = cluster.following
    cluster.read.add("new")
    ready(0)
    chat.hub.relay_remote("carol", "new", ["newer"], 1.0, 6, None)
    assert "newer" not in texts(alice_out)  # behind the backlog
    chat.hub.resumed(alice)  # her socket drained
    assert texts(alice_out) == ["old", "newer"]


def test_a_member_that_fell_behind_during_a_hold_is_a_slow_consumer_after_it() -> None:
    """The socket of a member whose output is held (a room's history being fetched) fills
    up meanwhile: once the hold ends, it is treated as the slow consumer it is, not left
    to grow without bound (the transport says so only once)."""
    from chatcast._core.hub import Hub

    chat = ResumeChat()
    cluster = LogCluster()
    chat.hub = Hub(chat.config, chat.clock, cluster=cluster, release=chat.released.append)  # type: ignore[arg-type]
    alice, alice_out = chat.hello(name="alice")
    chat.send(alice, type="join", room="new")  # nobody here was in it: its history is read
    (ready,) = cluster.following
    alice_out.get_write_buffer_size = lambda: 10**9  # type: ignore[method-assign]
    chat.hub.paused(alice)  # the transport's word, while the hold ignores it
    cluster.read.add("new")
    ready(0)
    assert chat.hub.slow_consumers == 1
