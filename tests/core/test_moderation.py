"""Moderation in the hub with no event loop: operators, kicks, bans, mutes, topics (#14)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from chatcast._core import commands as proto
from chatcast._core.moderation import (
    MAX_OP_FAILURES,
    BanRecord,
    UnknownTarget,
    format_duration,
    normalize_address,
)
from chatcast._core.peer import Peer
from chatcast.exceptions import InvalidFrame
from chatcast.message import BAN, KICK, MUTE, OP, TOPIC, UNBAN, UNMUTE, Message
from tests.core.test_hub import Chat, FakeTransport

TOKEN = "op-secret-1"


class Wall:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def make_chat(**settings: Any) -> tuple[Chat, Wall, list[Message]]:
    """A chat with an operator token, a movable wall clock and a recorded event stream."""
    settings.setdefault("op_token", TOKEN)
    chat = Chat(**settings)
    wall = Wall()
    chat.hub._wall = wall
    chat.hub.moderation._wall = wall
    events: list[Message] = []

    def sink(event: Message) -> bool:
        events.append(event)
        return True

    chat.hub.rooms.subscribe(sink)
    return chat, wall, events


def json_peer(chat: Chat, hello: dict[str, Any]) -> tuple[Peer, FakeTransport]:
    peer, transport = chat.connect()
    chat.hub.receive(peer, (json.dumps({"type": "hello", **hello}) + "\n").encode())
    return peer, transport


def operator(chat: Chat, name: str = "teacher") -> tuple[Peer, FakeTransport]:
    peer, transport = chat.text_peer(name)
    chat.hub.receive(peer, f"/op {TOKEN}\n".encode())
    assert transport.lines()[-1] == "* you are now an operator"
    transport.chunks.clear()
    return peer, transport


def from_address(chat: Chat, ip: str, name: str) -> tuple[Peer, FakeTransport]:
    """A text peer connected from ``ip``."""
    peer, transport = chat.accept()
    peer.address = f"{ip}:5000"
    chat.hub.greet(peer)
    chat.hub.receive(peer, f"/nick {name}\n".encode())
    transport.chunks.clear()
    return peer, transport


def test_op_token_in_text_mode_makes_an_operator_marked_in_who() -> None:
    """/op with the token makes an operator: an event, and '(op)' after its name in /who."""
    chat, _, events = make_chat()
    teacher, _ = operator(chat)
    student, transport = chat.text_peer("student")
    chat.hub.receive(student, b"/who\n")
    assert transport.lines() == ["* in lobby: student, teacher (op)"]
    assert [(e.kind, e.sender) for e in events if e.kind == OP] == [(OP, "teacher")]
    assert chat.hub.moderation.is_operator(teacher)


def test_op_in_the_json_hello_and_who_lists_operators() -> None:
    """A hello with the right "op" is welcomed with "op": true; who answers list operators."""
    chat, _, _ = make_chat()
    peer, transport = json_peer(chat, {"name": "teacher", "op": TOKEN})
    welcome = transport.frames()[0]
    assert welcome["type"] == "welcome"
    assert welcome["op"] is True
    chat.hub.receive(peer, b'{"type":"who"}\n')
    assert transport.frames()[-1] == {
        "type": "who",
        "room": "lobby",
        "names": ["teacher"],
        "operators": ["teacher"],
    }


def test_a_wrong_op_token_in_the_hello_closes_the_connection() -> None:
    """A hello with a wrong "op" is an authentication failure: error, closed, counted."""
    chat, _, _ = make_chat()
    peer, transport = json_peer(chat, {"name": "eve", "op": "guess"})
    assert transport.frames()[-1]["text"] == "operator authentication failed"
    assert peer.closing
    assert chat.hub.auth_failures == 1


def test_failed_op_is_refused_counted_never_logged_and_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong /op is refused and counted; the token never reaches the log; the third
    failure on one connection disconnects it."""
    caplog.set_level(logging.DEBUG, logger="chatcast")
    chat, _, _ = make_chat()
    peer, transport = chat.text_peer("eve")
    for attempt in range(MAX_OP_FAILURES):
        chat.hub.receive(peer, f"/op guess-{attempt}-xyzzy\n".encode())
    lines = transport.lines()
    assert lines[:2] == ["! operator authentication failed"] * 2
    assert lines[-1] == "! too many failed operator attempts"
    assert peer.closing
    assert chat.hub.auth_failures == MAX_OP_FAILURES
    assert "xyzzy" not in caplog.text
    assert "operator authentication failure from eve" in caplog.text
    # The right token is not logged either.
    operator(chat)
    assert TOKEN not in caplog.text


def test_failed_op_counts_against_flood_control() -> None:
    """With a rate, a couple of failed /op attempts drive a client into being a flooder."""
    chat, _, _ = make_chat(rate=1.0, burst=2.0)
    peer, transport = chat.text_peer("eve")
    chat.clock.advance(10)
    chat.hub.receive(peer, b"/op a\n")
    chat.hub.receive(peer, b"/op b\n")
    assert peer.closing
    assert "flooding" in transport.text()


def test_op_without_a_server_token_is_refused_and_the_token_must_differ() -> None:
    """/op on a server with no operator token says so; op_token equal to token is refused."""
    chat, _, _ = make_chat(op_token=None)
    peer, transport = chat.text_peer("eve")
    chat.hub.receive(peer, b"/op anything\n")
    assert transport.lines() == ["! this server has no operator token"]
    with pytest.raises(ValueError, match="op_token"):
        Chat(token="same", op_token="same")


@pytest.mark.parametrize(
    "line",
    ["/kick bob", "/ban bob", "/unban bob", "/bans", "/mute bob", "/unmute bob", "/topic x y"],
)
def test_non_operators_are_refused(line: str) -> None:
    """Every operator command from a non-operator gets a clear refusal and does nothing."""
    chat, _, events = make_chat()
    bob, _ = chat.text_peer("bob")
    peer, transport = chat.text_peer("eve")
    chat.hub.receive(peer, (line + "\n").encode())
    word = line.split()[0][1:]
    assert transport.lines() == [f"! /{word} is for operators (see /op)"]
    assert not bob.closing
    assert not [e for e in events if e.kind in (KICK, BAN, UNBAN, MUTE, UNMUTE, TOPIC)]


def test_kick_tells_the_member_and_the_room_why() -> None:
    """/kick: the member gets the reason and is closed; the room sees it leave with it."""
    chat, _, events = make_chat()
    _, op_transport = operator(chat)
    bob, bob_transport = chat.text_peer("bob")
    _, carol = chat.text_peer("carol")
    chat.clock.advance(1)
    op_transport.chunks.clear()
    chat.hub.receive(chat.hub.peer_named("teacher") or bob, b"/kick bob spamming links\n")
    chat.clock.advance(1)
    assert bob_transport.lines()[-1] == "! kicked by teacher: spamming links"
    assert bob.closing
    assert "* bob left lobby (kicked by teacher: spamming links)" in carol.lines()
    assert op_transport.lines()[0] == "* kicked bob"
    kick = [e for e in events if e.kind == KICK]
    assert [(e.sender, e.to, e.text) for e in kick] == [("teacher", "bob", "spamming links")]


def test_kick_of_nobody_says_so() -> None:
    """/kick of an unknown name is an error naming it."""
    chat, _, _ = make_chat()
    _, transport = operator(chat)
    chat.hub.receive(chat.hub.peer_named("teacher") or Peer(64), b"/kick ghost\n")
    assert transport.lines() == ["! no such user: ghost"]


def test_ban_by_name_refuses_the_hello_and_the_nick_until_it_expires() -> None:
    """A timed name ban: the member is dropped; the name (any case) is refused at hello and
    at /nick; after the duration it is free again."""
    chat, wall, events = make_chat()
    moderation = chat.hub.moderation
    bob, bob_transport = chat.text_peer("bob")
    _, _ = chat.text_peer("alice")  # shares the address: the ban stays on the name only
    ban = moderation.ban("bob", duration=600, reason="spam", by="teacher")
    assert ban.address is None
    assert bob.closing
    assert bob_transport.lines()[-1] == "! banned by teacher (10m left): spam"
    chat.hub.lost(bob, None)
    peer, transport = json_peer(chat, {"name": "BOB"})
    assert transport.frames()[-1]["text"] == "banned by teacher (10m left): spam"
    assert peer.closing
    guest, guest_transport = chat.text_peer("guesty")
    chat.hub.receive(guest, b"/nick Bob\n")
    assert guest_transport.lines() == ["! name 'Bob' is banned"]
    wall.now += 601
    chat.hub.receive(guest, b"/nick Bob\n")
    assert guest.name == "Bob"
    assert [(e.kind, e.to) for e in events if e.kind == BAN] == [(BAN, "bob")]


def test_a_name_ban_covers_the_members_own_address_so_a_new_name_does_not_help() -> None:
    """Banning a member alone on its address bans the address too: a reconnect under another
    name is refused at the accept."""
    chat, _, _ = make_chat()
    from_address(chat, "10.0.0.7", "bob")
    ban = chat.hub.moderation.ban("bob", by="teacher")
    assert ban.address == "10.0.0.7"
    assert chat.hub.moderation.address_refusal("10.0.0.7:6000") == "banned by teacher"
    assert chat.hub.moderation.address_refusal("10.0.0.8:6000") is None


def test_ban_by_address_drops_everyone_there_and_unban_lifts_it() -> None:
    """/ban @IP drops every member from that address; /unban @IP lifts it; /bans lists."""
    chat, _, events = make_chat()
    teacher, transport = operator(chat)
    a, _ = from_address(chat, "10.0.0.5", "a")
    b, _ = from_address(chat, "10.0.0.5", "b")
    c, _ = from_address(chat, "10.0.0.6", "c")
    chat.hub.receive(teacher, b"/ban @10.0.0.5 2h bots\n")
    assert a.closing
    assert b.closing
    assert not c.closing
    assert transport.lines() == ["* banned @10.0.0.5, 2h, by teacher: bots"]
    transport.chunks.clear()
    chat.hub.receive(teacher, b"/bans\n")
    assert transport.lines() == ["* bans:", "* @10.0.0.5, 2h, by teacher: bots"]
    transport.chunks.clear()
    chat.hub.receive(teacher, b"/unban @10.0.0.5\n")
    assert transport.lines() == ["* unbanned @10.0.0.5"]
    assert chat.hub.moderation.address_refusal("10.0.0.5:1") is None
    assert [e.kind for e in events if e.kind in (BAN, UNBAN)] == [BAN, UNBAN]


def test_unban_of_nothing_and_bad_addresses_are_errors() -> None:
    """Unbanning what is not banned, and banning a non-address, say what is wrong."""
    chat, _, _ = make_chat()
    with pytest.raises(UnknownTarget, match="no ban on bob"):
        chat.hub.moderation.unban("bob")
    with pytest.raises(InvalidFrame, match="not an IP address"):
        chat.hub.moderation.ban(address="not-an-ip")
    with pytest.raises(InvalidFrame, match="give a name or an address"):
        chat.hub.moderation.ban()


def test_mute_stops_room_messages_only_and_follows_a_rename() -> None:
    """A muted member's room messages are refused (privates are not); it keeps being muted
    under a new name; /unmute lets it speak."""
    chat, _, events = make_chat()
    teacher, _ = operator(chat)
    bob, bob_transport = chat.text_peer("bob")
    _, carol = chat.text_peer("carol")
    chat.clock.advance(1)
    carol.chunks.clear()
    chat.hub.receive(teacher, b"/mute bob too loud\n")
    assert bob_transport.lines()[-1] == "* you are muted in lobby by teacher: too loud"
    chat.hub.receive(bob, b"hello\n/msg carol psst\n/nick robert\nstill here\n")
    assert "bob: hello" not in carol.lines()
    assert "robert: still here" not in carol.lines()
    assert "[private] bob: psst" in carol.lines()
    assert bob_transport.lines().count("! you are muted in lobby") == 2
    chat.hub.receive(teacher, b"/unmute robert\n")
    chat.hub.receive(bob, b"free again\n")
    assert "robert: free again" in carol.lines()
    assert [(e.kind, e.to) for e in events if e.kind in (MUTE, UNMUTE)] == [
        (MUTE, "bob"),
        (UNMUTE, "robert"),
    ]


def test_topic_is_shown_to_the_room_and_on_joining() -> None:
    """/topic ROOM TEXT reaches the room's members at once and whoever enters it later;
    anyone can ask for it; '-' clears it."""
    chat, _, events = make_chat()
    teacher, teacher_transport = operator(chat)
    _, student = chat.text_peer("student")
    chat.hub.receive(teacher, b"/topic lobby Quiz at 10\n")
    assert student.lines()[-1] == "* topic of lobby: Quiz at 10 (set by teacher)"
    late, late_transport = chat.connect()
    assert "* topic of lobby: Quiz at 10 (set by teacher)" in late_transport.lines()
    _, json_transport = json_peer(chat, {"name": "jay"})
    topic = [f for f in json_transport.frames() if f["type"] == "topic"]
    assert topic[0]["text"] == "Quiz at 10"
    assert topic[0]["room"] == "lobby"
    chat.hub.receive(late, b"/topic\n")
    assert late_transport.lines()[-1] == "* topic of lobby: Quiz at 10 (set by teacher)"
    chat.hub.receive(teacher, b"/topic kelas-b Essays due\n")
    assert teacher_transport.lines()[-1] == "* topic of kelas-b set"
    assert "Essays" not in late_transport.text()  # another room's topic
    chat.hub.receive(teacher, b"/topic lobby -\n")
    chat.hub.receive(late, b"/topic\n")
    assert late_transport.lines()[-1] == "* no topic in lobby"
    assert [e.text for e in events if e.kind == TOPIC] == ["Quiz at 10", "Essays due", ""]


def test_json_moderation_frames() -> None:
    """The JSON frames do what the slash commands do; a bad one gets an error."""
    chat, _, _ = make_chat()
    op, transport = json_peer(chat, {"name": "teacher", "op": TOKEN})
    bob, _ = chat.text_peer("bob")
    frames = [
        {"type": "mute", "name": "bob"},
        {"type": "topic", "room": "lobby", "text": "hi"},
        {"type": "ban", "address": "10.1.1.1", "duration": 60},
        {"type": "ban", "name": "x", "address": "10.1.1.2"},
        {"type": "ban", "name": "y", "duration": -1},
        {"type": "kick", "name": "bob", "reason": "bye"},
    ]
    for frame in frames:
        chat.hub.receive(op, (json.dumps(frame) + "\n").encode())
    texts = [f.get("text") for f in transport.frames() if f["type"] in ("info", "error")]
    assert texts[-4:] == [
        "banned @10.1.1.1, 1m, by teacher",
        '"ban" needs exactly one of "name" and "address"',
        '"duration" must be seconds, more than 0 and at most 10 years',
        "kicked bob",
    ]
    assert bob.closing


def test_records_round_trip_and_expired_bans_are_not_restored() -> None:
    """records() is plain data; restore() on another hub gives the same bans, mutes and
    topics, skipping expired bans and refusing junk."""
    chat, wall, _ = make_chat()
    moderation = chat.hub.moderation
    moderation.ban("bob", duration=60, by="t")
    moderation.ban(address="::ffff:10.0.0.9", by="t")
    moderation.mute("carol", "lobby", by="t")
    moderation.set_topic("lobby", "hello", by="t")
    records = json.loads(json.dumps(moderation.records()))
    assert {r["type"] for r in records} == {"ban", "mute", "topic"}
    other, other_wall, _ = make_chat()
    other_wall.now = wall.now + 120  # the timed ban is over by then
    assert other.hub.moderation.restore(records) == 3
    assert [b.target() for b in other.hub.moderation.bans()] == ["@10.0.0.9"]
    assert other.hub.moderation.topic("lobby") is not None
    with pytest.raises(ValueError, match="not a moderation record"):
        other.hub.moderation.restore([{"type": "ban", "nonsense": 1}])
    with pytest.raises(ValueError, match="unknown record type"):
        other.hub.moderation.restore([{"type": "wat"}])


def test_a_banned_address_costs_a_lookup_and_one_log_line_per_doubling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1000 refusals of one banned address: each a dict lookup, and ~10 log lines, not 1000."""
    caplog.set_level(logging.INFO, logger="chatcast")
    chat, _, _ = make_chat()
    chat.hub.moderation.ban(address="10.0.0.5")
    for _ in range(1000):
        assert chat.hub.moderation.address_refusal("10.0.0.5:4242") is not None
    assert chat.hub.moderation.refused == 1000
    assert 5 <= caplog.text.count("refused 10.0.0.5") <= 11


def test_parsing_and_helpers() -> None:
    """Durations, targets, addresses and the shown durations."""
    assert proto.parse_duration("1h30m") == 5400
    assert proto.parse_duration("spam") is None
    with pytest.raises(InvalidFrame):
        proto.parse_duration("0s")
    assert proto.parse_text("/ban @10.0.0.5 1d bots") == proto.Ban(None, "10.0.0.5", 86400, "bots")
    assert proto.parse_text("/ban bob rude words") == proto.Ban("bob", None, None, "rude words")
    assert "TOKEN" not in repr(proto.parse_text("/op TOKEN"))
    assert normalize_address("::ffff:10.0.0.5") == "10.0.0.5"
    moderation = make_chat()[0].hub.moderation
    moderation.ban(address="::1")
    assert moderation.address_refusal("::1:5000") == "banned by server"
    assert moderation.address_refusal("::2:5000") is None
    assert format_duration(5400) == "1h30m"
    assert format_duration(0.2) == "1s"
    ban = BanRecord("bob", None, None, "", "t", 0.0)
    assert ban.refusal(1.0) == "banned by t"
    assert ban.describe(1.0) == "bob, until lifted, by t"


def test_actions_shared_with_another_server_are_applied_there_once() -> None:
    """What one hub shares (share -> apply) bans, mutes, topics and unbans on the other,
    and the other does not share it back."""
    one, _, _ = make_chat()
    two, _, events = make_chat()
    sent: list[dict[str, Any]] = []
    echoed: list[dict[str, Any]] = []

    def share(action: dict[str, Any]) -> None:
        sent.append(action)
        two.hub.moderation.apply(json.loads(json.dumps(action)))  # as over the wire

    one.hub.moderation.share = share
    two.hub.moderation.share = echoed.append
    bob, bob_transport = two.text_peer("bob")
    one.hub.moderation.ban("bob", duration=60, reason="spam", by="teacher")
    assert bob.closing
    assert bob_transport.lines()[-1] == "! banned by teacher (1m left): spam"
    one.hub.moderation.mute("carol", "lobby", by="teacher")
    one.hub.moderation.set_topic("lobby", "hi", by="teacher")
    one.hub.moderation.unban("bob", by="teacher")
    assert [a["action"] for a in sent] == ["ban", "mute", "topic", "unban"]
    assert echoed == []
    assert two.hub.moderation.bans() == []
    assert ("lobby", "carol") in two.hub.moderation.mutes
    assert two.hub.moderation.topic("lobby") is not None
    assert [e.kind for e in events if e.kind in (BAN, UNBAN, MUTE, TOPIC)] == [
        BAN,
        MUTE,
        TOPIC,
        UNBAN,
    ]
    with pytest.raises(ValueError, match="unknown moderation action"):
        two.hub.moderation.apply({"action": "explode", "by": "x"})
