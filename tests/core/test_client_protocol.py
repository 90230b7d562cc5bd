"""Tier 1: the client's sans-I/O protocol, driven by plain method calls: no loop, no socket."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatcast._core.client import AUTH_REASONS, Answer, ClientProtocol
from chatcast._core.wire import (
    CLOSING,
    ERROR,
    INFO,
    JOIN,
    MESSAGE,
    NICK,
    Message,
    decode_message,
    dump_frame,
)
from chatcast.exceptions import (
    AuthenticationError,
    ChannelClosed,
    ConnectionClosed,
    InvalidFrame,
    MessageTooLong,
)

BANNER = b"Selamat datang di Server...\n"


def frame(**obj: Any) -> bytes:
    """One server frame; ``from`` is spelt ``sender`` here (a keyword)."""
    if "sender" in obj:
        obj["from"] = obj.pop("sender")
    return dump_frame(obj)


def welcome(name: str = "alice", room: str = "lobby", heartbeat: float = 30.0) -> bytes:
    return frame(
        type="welcome", name=name, room=room, text="hi there", version=1, heartbeat=heartbeat
    )


def chat(text: str = "hello", sender: str = "bob", ts: float = 1764000000.5) -> bytes:
    """A chat frame exactly as the server's relay encodes it."""
    return (
        '{"type":"message","from":' + json.dumps(sender) + ',"text":' + json.dumps(text)
        + ',"room":"lobby","ts":' + repr(ts) + "}\n"
    ).encode()  # fmt: skip


def opened(**options: Any) -> ClientProtocol:
    """A protocol past its hello, as alice in lobby."""
    protocol = ClientProtocol(name="alice", **options)
    protocol.connect()
    assert protocol.receive_data(BANNER + welcome()) == []
    assert protocol.open
    return protocol


# -- hello and welcome ----------------------------------------------------------------------


def test_hello_carries_name_room_and_token() -> None:
    """The hello names what was asked for, the token included, and the protocol version."""
    protocol = ClientProtocol(name="alice", room="den", token="s3cret")
    hello = json.loads(protocol.connect())
    assert hello == {"type": "hello", "version": 2, "name": "alice", "room": "den",
                     "token": "s3cret"}  # fmt: skip


def test_hello_without_name_room_or_token() -> None:
    """Without a name, room or token the hello leaves them out: the server picks."""
    assert json.loads(ClientProtocol().connect()) == {"type": "hello", "version": 2}


def test_welcome_sets_name_room_text_and_heartbeat() -> None:
    """The welcome stamps the name and room, and gives the welcome text and heartbeat."""
    protocol = ClientProtocol()
    protocol.connect()
    assert protocol.receive_data(BANNER) == []
    assert protocol.welcome == "Selamat datang di Server..."
    assert not protocol.open
    assert protocol.receive_data(welcome("guest7", "lobby", heartbeat=2.5)) == []
    assert (protocol.name, protocol.room, protocol.welcome) == ("guest7", "lobby", "hi there")
    assert protocol.heartbeat == 2.5
    assert protocol.open


def test_frames_read_with_the_welcome_are_delivered() -> None:
    """Messages that arrive in the same read as the welcome are returned, not lost."""
    protocol = ClientProtocol(name="alice")
    protocol.connect()
    got = protocol.receive_data(BANNER + welcome() + frame(type="join", sender="alice",
                                room="lobby", ts=1.0) + chat())  # fmt: skip
    assert [m.kind for m in got] == [JOIN, MESSAGE]


@pytest.mark.parametrize("reason", sorted(AUTH_REASONS))
def test_token_refusals_raise_authentication_error(reason: str) -> None:
    """A refused token during the hello is an AuthenticationError with the server's words."""
    protocol = ClientProtocol(token="wrong")
    protocol.connect()
    with pytest.raises(AuthenticationError, match=reason):
        protocol.receive_data(BANNER + frame(type="error", text=reason, reason=reason))
    assert not protocol.open


def test_other_refusals_raise_connection_closed() -> None:
    """A taken name is ConnectionClosed with the server's reason (not an auth error)."""
    protocol = ClientProtocol(name="alice")
    protocol.connect()
    with pytest.raises(ConnectionClosed) as info:
        protocol.receive_data(frame(type="error", text="name 'alice' is taken"))
    assert not isinstance(info.value, AuthenticationError)
    assert info.value.reason == "name 'alice' is taken"


def test_text_refusal_then_eof() -> None:
    """A full server's '! reason' line, then its close, give ConnectionClosed(reason)."""
    protocol = ClientProtocol()
    protocol.connect()
    assert protocol.receive_data(b"! server full (1 clients)\n") == []
    with pytest.raises(ConnectionClosed, match=r"^server full \(1 clients\)$"):
        protocol.receive_eof()


@pytest.mark.parametrize(("tls", "hint"), [(False, True), (True, False)])
def test_silent_close_during_hello(tls: bool, hint: bool) -> None:
    """A server that closes without a word hints at TLS only to a plain client."""
    protocol = ClientProtocol(tls=tls)
    protocol.connect()
    with pytest.raises(ConnectionClosed) as info:
        protocol.receive_eof()
    assert ("does it expect TLS?" in info.value.reason) is hint


def test_broken_frame_during_hello() -> None:
    """A frame over the limit before the welcome ends the hello with a clear reason."""
    protocol = ClientProtocol(max_line_bytes=64)
    protocol.connect()
    with pytest.raises(ConnectionClosed, match="bad frame from server: line longer than 64"):
        protocol.receive_data(b"x" * 100 + b"\n")


def test_junk_before_the_welcome_is_skipped() -> None:
    """Text lines and JSON that is not a welcome or error do not end the hello."""
    protocol = ClientProtocol()
    protocol.connect()
    assert protocol.receive_data(b"* guest1 joined lobby\n{not json\n[1]\n") == []
    assert protocol.receive_data(welcome()) == []
    assert protocol.open


def test_odd_heartbeats_and_a_late_welcome() -> None:
    """A heartbeat that is not a positive number is ignored; a second welcome updates."""
    protocol = ClientProtocol()
    protocol.connect()
    protocol.receive_data(welcome(heartbeat=-1))
    assert protocol.heartbeat == 30.0
    protocol.receive_data(frame(type="welcome", name="bob", heartbeat=True))
    assert (protocol.name, protocol.room, protocol.heartbeat) == ("bob", "lobby", 30.0)


# -- requests and answers -------------------------------------------------------------------


def test_answers_match_requests_in_order() -> None:
    """who and rooms answers go to their requests, oldest first."""
    protocol = opened()
    who = protocol.expect_answer("who")
    rooms = protocol.expect_answer("rooms")
    protocol.receive_data(frame(type="who", room="lobby", names=["alice", "bob"]))
    protocol.receive_data(frame(type="rooms", rooms={"lobby": 2}))
    assert protocol.answers_received() == [
        Answer(who, ["alice", "bob"]),
        Answer(rooms, {"lobby": 2}),
    ]
    assert protocol.answers_received() == []


def test_cancelled_request_does_not_take_the_next_answer() -> None:
    """An answer to a request given up on is dropped; the next answer goes to the next one."""
    protocol = opened()
    first = protocol.expect_answer("who")
    second = protocol.expect_answer("who")
    protocol.cancel(first)
    protocol.receive_data(frame(type="who", room="lobby", names=["first"]))
    assert protocol.answers_received() == []
    protocol.receive_data(frame(type="who", room="den", names=["second"]))
    assert protocol.answers_received() == [Answer(second, ["second"])]


def test_unexpected_and_malformed_answers() -> None:
    """An answer nobody asked for is counted and dropped; a malformed one is an error value."""
    protocol = opened()
    protocol.receive_data(frame(type="rooms", rooms={}))
    assert protocol.answers_received() == []
    assert protocol.bad_frames == 1
    who, rooms = protocol.expect_answer("who"), protocol.expect_answer("rooms")
    protocol.receive_data(frame(type="who", names=[1, 2]) + frame(type="rooms", rooms=[]))
    answers = protocol.answers_received()
    assert [answer.ticket for answer in answers] == [who, rooms]
    assert all(isinstance(answer.value, InvalidFrame) for answer in answers)
    assert protocol.bad_frames == 3


def test_missing_answer_fields_mean_empty() -> None:
    """A who without names is an empty list, rooms without rooms an empty dict."""
    protocol = opened()
    who, rooms = protocol.expect_answer("who"), protocol.expect_answer("rooms")
    protocol.receive_data(frame(type="who") + frame(type="rooms"))
    assert protocol.answers_received() == [Answer(who, []), Answer(rooms, {})]


def test_connection_lost_returns_unanswered_requests() -> None:
    """At the end of a connection the unanswered, uncancelled requests are handed back."""
    protocol = opened()
    kept = protocol.expect_answer("who")
    dropped = protocol.expect_answer("rooms")
    protocol.cancel(dropped)
    assert protocol.connection_lost() == [kept]
    assert not protocol.open
    assert protocol.connection_lost() == []


# -- heartbeat ------------------------------------------------------------------------------


def test_ping_is_answered_with_pong() -> None:
    """A server ping queues a pong; nothing reaches the application."""
    protocol = opened()
    assert protocol.receive_data(b'{"type":"ping"}\n{"type":"pong"}\n') == []
    assert protocol.data_to_send() == b'{"type":"pong"}\n'
    assert protocol.data_to_send() == b""


def test_silence_pings_then_gives_up() -> None:
    """After a heartbeat of silence a ping goes out; half a heartbeat more and it is over."""
    protocol = ClientProtocol()
    protocol.connect()
    protocol.receive_data(welcome(heartbeat=10.0))
    assert protocol.check_silence(4.0) == 6.0
    assert protocol.data_to_send() == b""
    assert protocol.check_silence(10.0) == 5.0
    assert protocol.data_to_send() == b'{"type":"ping"}\n'
    assert protocol.check_silence(12.0) == 3.0
    assert protocol.data_to_send() == b""  # one ping, not one per check
    assert protocol.check_silence(15.0) is None


def test_data_after_a_ping_resets_the_heartbeat() -> None:
    """Anything from the server after our ping proves it alive: the count starts again."""
    protocol = ClientProtocol()
    protocol.connect()
    protocol.receive_data(welcome(heartbeat=10.0))
    assert protocol.check_silence(10.0) == 5.0
    protocol.receive_data(b'{"type":"pong"}\n')
    assert protocol.check_silence(1.0) == 9.0


# -- messages -------------------------------------------------------------------------------


def test_messages_and_notices_become_messages() -> None:
    """Every message kind is returned in order; my own nick and join update name and room."""
    protocol = opened()
    got = protocol.receive_data(
        chat("one")
        + frame(type="nick", sender="alice", text="alicia", room="lobby", ts=2.0)
        + frame(type="join", sender="alicia", room="den", ts=3.0)
        + frame(type="info", text="for you")
        + frame(type="private", sender="bob", to="alicia", text="psst", ts=4.0)
    )
    assert [m.kind for m in got] == [MESSAGE, NICK, JOIN, INFO, "private"]
    assert got[0] == Message("one", "bob", MESSAGE, "lobby", 1764000000.5)
    assert got[4].to == "alicia"
    assert (protocol.name, protocol.room) == ("alicia", "den")


def test_others_nick_and_join_change_nothing() -> None:
    """Someone else's nick or join is only a notice."""
    protocol = opened()
    protocol.receive_data(
        frame(type="nick", sender="bob", text="rob", room="lobby", ts=1.0)
        + frame(type="join", sender="rob", room="den", ts=1.0)
    )
    assert (protocol.name, protocol.room) == ("alice", "lobby")


def test_error_and_closing_set_the_end_reason() -> None:
    """An error is counted and becomes the end reason; closing says the server closed."""
    protocol = opened()
    assert protocol.end_reason == "connection closed without a reason"
    protocol.receive_data(frame(type="error", text="slow consumer", reason="slow consumer"))
    assert (protocol.errors, protocol.end_reason) == (1, "slow consumer")
    assert not protocol.refused
    got = protocol.receive_data(frame(type="closing", text="bye", reason="bye"))
    assert [m.kind for m in got] == [CLOSING]
    assert protocol.receive_eof() == "closed by server: bye"


def test_auth_error_after_welcome_marks_refused() -> None:
    """An authentication error after the welcome is reported, and no retry would help."""
    protocol = opened()
    got = protocol.receive_data(frame(type="error", text="authentication timeout"))
    assert [m.kind for m in got] == [ERROR]
    assert protocol.refused


STREAM = (
    BANNER
    + welcome()
    + chat("first")
    + b'{"type":"ping"}\n'
    + frame(type="who", room="lobby", names=["alice", "bob"])
    + frame(type="nick", sender="alice", text="alicia", room="lobby", ts=2.0)
    + chat("caf\u00e9 \u2615 line\nbreak")
    + b"stray text line\r\n"
    + chat("x" * 300)
    + frame(type="closing", text="bye", reason="bye")
)


def run(chunks: list[bytes]) -> tuple[list[Message], list[Answer], bytes, str | None]:
    """Feed ``chunks`` to a protocol with one who request on the wire; return what it made."""
    protocol = ClientProtocol(name="alice", max_line_bytes=512)
    protocol.connect()
    ticket = protocol.expect_answer("who")
    assert ticket == 1
    messages: list[Message] = []
    answers: list[Answer] = []
    out = b""
    for chunk in chunks:
        messages += protocol.receive_data(chunk)
        answers += protocol.answers_received()
        out += protocol.data_to_send()
    return messages, answers, out, protocol.name


def test_stream_split_at_every_offset() -> None:
    """Cut in two at every byte offset, or fed a byte at a time, the stream means the same."""
    whole = run([STREAM])
    assert [m.text for m in whole[0]] == [
        "first", "alicia", "caf\u00e9 \u2615 line\nbreak", "x" * 300, "bye",
    ]  # fmt: skip
    assert whole[1:] == ([Answer(1, ["alice", "bob"])], b'{"type":"pong"}\n', "alicia")
    for cut in range(len(STREAM) + 1):
        assert run([STREAM[:cut], STREAM[cut:]]) == whole, cut
    assert run([STREAM[i : i + 1] for i in range(len(STREAM))]) == whole


BAD_FRAMES = [
    pytest.param(b"\xff\xfe not utf-8", id="invalid-utf8"),
    pytest.param(b"y" * 600, id="too-long"),
    pytest.param(b'{"type":"message","from":"bob"', id="truncated-json"),
    pytest.param(b'{"type":"message",' + b"[" * 100_000, id="deep-nesting"),
    pytest.param(b'{"type":5,"text":"x"}', id="int-type"),
    pytest.param(b'{"type":"teleport","text":"x"}', id="unknown-type"),
    pytest.param(b'{"type":"message","from":"b","text":5,"room":"l","ts":1.0}', id="int-text"),
    pytest.param(b'{"type":"message","from":7,"text":"x","room":"lobby","ts":1.0}', id="int-from"),
    pytest.param(b'{"type":"message","from":"b","text":"x","room":"l","ts":NaN}', id="nan-ts"),
    pytest.param(b'{"type":"message","from":"b","text":"x","room":"l","ts":1e999}', id="inf-ts"),
    pytest.param(b'{"type":"message","from":"b","text":"x","room":"l","ts":true}', id="bool-ts"),
    pytest.param(b'{"type":"message","from":"b","text":"\\ud800","room":"l","ts":1.0}',
                 id="lone-surrogate"),
    pytest.param(b'{"type":"message","from":"b","text":"x","room":"l","seq":"1"}', id="str-seq"),
    pytest.param(b'{"type":"message","from":"b","text":"x","room":"l","ts":1.0,"type":"x"}',
                 id="second-type"),
]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_FRAMES)
def test_bad_frames_are_counted_and_skipped(bad: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """A broken frame is logged and counted, never raised; the next frame still arrives."""
    protocol = opened(max_line_bytes=512)
    with caplog.at_level(logging.WARNING, logger="chatcast.client"):
        got = protocol.receive_data(chat("before") + bad + b"\n" + chat("after"))
    assert [m.text for m in got] == ["before", "after"]
    assert protocol.bad_frames == 1
    assert "from server" in caplog.text


def test_stray_text_lines_are_ignored() -> None:
    """Lines that are not JSON objects (text mode's) are not for a JSON client: skipped."""
    protocol = opened()
    assert protocol.receive_data(b"* bob joined lobby\n[1, 2]\n") == []
    assert protocol.bad_frames == 0


_names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)


@given(
    text=st.text(st.characters(codec="utf-8"), max_size=40),
    sender=_names,
    room=_names,
    ts=st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**20), 10**20),
    ascii_only=st.booleans(),
)
def test_fast_path_decodes_like_decode_message(
    text: str, sender: str, room: str, ts: float, ascii_only: bool
) -> None:
    """Whatever a chat frame holds, the receive path gives what decode_message gives."""
    raw = json.dumps(
        {"type": "message", "from": sender, "text": text, "room": room, "ts": ts},
        ensure_ascii=ascii_only, separators=(",", ":"),
    ).encode() + b"\n"  # fmt: skip
    protocol = opened()
    (got,) = protocol.receive_data(raw)
    expected = decode_message(raw[:-1].decode())
    assert got == expected
    assert (got.to, got.seq, got.kind) == (None, None, MESSAGE)


# -- sending and closing --------------------------------------------------------------------


def test_outgoing_frames_are_checked() -> None:
    """Bad text or names are ValueError, frames over the limit MessageTooLong."""
    protocol = ClientProtocol(max_line_bytes=100)
    assert json.loads(protocol.message("hi", to="bob")) == {"type": "message", "text": "hi",
                                                            "to": "bob"}  # fmt: skip
    assert json.loads(protocol.join("den")) == {"type": "join", "room": "den"}
    assert json.loads(protocol.nick("al")) == {"type": "nick", "name": "al"}
    assert json.loads(protocol.who("den")) == {"type": "who", "room": "den"}
    assert json.loads(protocol.rooms()) == {"type": "rooms"}
    with pytest.raises(ValueError, match="empty"):
        protocol.message("")
    with pytest.raises(ValueError, match="recipient"):
        protocol.message("hi", to="not a name")
    with pytest.raises(ValueError, match="room"):
        protocol.join("no spaces")
    with pytest.raises(MessageTooLong) as info:
        protocol.message("x" * 200)
    assert info.value.limit == 100


def test_close_is_for_good() -> None:
    """close() gives the goodbye; afterwards frames and new connections are refused."""
    protocol = opened()
    assert json.loads(protocol.close("done")) == {"type": "quit", "reason": "done"}
    assert protocol.closed
    assert json.loads(protocol.close()) == {"type": "quit"}
    with pytest.raises(ValueError, match="empty"):
        protocol.message("")  # argument errors still come first
    with pytest.raises(ChannelClosed):
        protocol.message("hi")
    with pytest.raises(ChannelClosed):
        protocol.connect()
    protocol.connection_lost()
    assert protocol.closed


def test_reconnect_starts_afresh() -> None:
    """A new connection forgets the old one's partial frame and requests, keeps the name."""
    protocol = opened()
    protocol.receive_data(b'{"type":"message","from":"bob"')  # cut short by the network
    protocol.expect_answer("who")
    protocol.connection_lost()
    protocol.connect()
    assert not protocol.open
    assert protocol.receive_data(welcome("alice") + chat("again")) == [
        Message("again", "bob", MESSAGE, "lobby", 1764000000.5)
    ]
    assert protocol.bad_frames == 0


def test_a_frame_with_leading_blanks_is_still_json() -> None:
    """JSON allows whitespace before the object; such a frame is delivered, not dropped."""
    protocol = opened()
    (message,) = protocol.receive_data(b"  " + chat("spaced"))
    assert (message.sender, message.text) == ("bob", "spaced")
    assert protocol.receive_data(b"* a stray text line\n") == []


# -- version 2: ids, resume, acks, history --------------------------------------------------


def welcome2(session: str = "tok", last: int = 10, **extra: Any) -> bytes:
    return frame(
        type="welcome", name="alice", room="lobby", text="hi", version=2, heartbeat=30.0,
        session=session, last=last, **extra,
    )  # fmt: skip


def chat2(text: str, ident: int, **extra: Any) -> bytes:
    return frame(type="message", sender="bob", text=text, room="lobby", ts=1.5, id=ident, **extra)


def test_the_next_hello_resumes_with_the_token_and_the_last_id() -> None:
    protocol = ClientProtocol(name="alice")
    protocol.connect()
    protocol.receive_data(welcome2(session="s1", last=10))
    assert (protocol.session, protocol.last_id) == ("s1", 10)
    got = protocol.receive_data(chat2("a", 11) + chat2("b", 12))
    assert [(m.text, m.id) for m in got] == [("a", 11), ("b", 12)]
    protocol.connection_lost()
    hello = json.loads(protocol.connect())
    assert (hello["session"], hello["last"]) == ("s1", 12)
    # The replay (history) raises last_id; a live duplicate is dropped and counted.
    replay = chat2("c", 13, history=True)
    got = protocol.receive_data(welcome2(session="s2", last=99, resumed=True) + replay)
    assert [(m.text, m.history) for m in got] == [("c", True)]
    assert (protocol.session, protocol.last_id) == ("s2", 13)
    assert protocol.receive_data(chat2("c", 13)) == []
    assert protocol.duplicates == 1


def test_a_refused_resume_is_a_gap_to_the_application() -> None:
    protocol = ClientProtocol(name="alice")
    protocol.connect()
    protocol.receive_data(welcome2(session="s1", last=3))
    protocol.connection_lost()
    protocol.connect()
    got = protocol.receive_data(welcome2(session="s9", last=50, resumed=False))
    assert [m.kind for m in got] == ["gap"]
    assert protocol.last_id == 50


def test_history_on_join_does_not_move_the_last_id() -> None:
    protocol = ClientProtocol(name="alice")
    protocol.connect()
    got = protocol.receive_data(welcome2(last=10) + chat2("old", 4, history=True))
    assert [(m.text, m.history) for m in got] == [("old", True)]
    assert protocol.last_id == 10


def test_acks_refusals_and_history_answers_go_to_their_refs() -> None:
    protocol = opened()
    first, second, third = protocol.new_ref(), protocol.new_ref(), protocol.new_ref()
    assert json.loads(protocol.message("hi", ref=first))["ref"] == first
    request = json.loads(protocol.history(third, room="den", limit=2, before=9))
    assert request == {"type": "history", "limit": 2, "ref": third, "room": "den", "before": 9}
    data = (
        frame(type="ack", ref=first, id=7)
        + frame(type="error", text="no such user: carol", reason="no such user: carol", ref=second)
        + chat2("h1", 3, history=True, ref=third)
        + chat2("h2", 4, history=True, ref=third)
        + frame(type="history", room="den", count=2, ref=third)
    )
    assert protocol.receive_data(data) == []  # none of it is for the application's queue
    replies = protocol.replies_received()
    assert [reply.ref for reply in replies] == [first, second, third]
    assert replies[0].value == 7
    assert str(replies[1].value) == "no such user: carol"
    history = replies[2].value
    assert isinstance(history, list)
    assert [(m.text, m.history) for m in history] == [("h1", True), ("h2", True)]


@pytest.mark.parametrize("limit", [0, 501])
def test_a_history_request_out_of_range_is_refused_before_sending(limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        opened().history("1", limit=limit)


def test_a_frame_over_the_server_s_limit_is_refused_before_sending() -> None:
    """The welcome's max_bytes: a longer message is MessageTooLong here, not a frame the
    server would refuse without its ref."""
    protocol = ClientProtocol(name="alice")
    protocol.connect()
    protocol.receive_data(welcome2(max_bytes=100))
    protocol.message("x" * 50)
    with pytest.raises(MessageTooLong):
        protocol.message("x" * 100)
