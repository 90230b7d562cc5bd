"""Tier 1: the Message type, its JSON wire form and its text form."""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatcast._core.framing import LineDecoder
from chatcast.exceptions import InvalidFrame
from chatcast.message import (
    ANNOUNCEMENT,
    CLOSING,
    ERROR,
    GAP,
    INFO,
    JOIN,
    KINDS,
    LEAVE,
    MESSAGE,
    NICK,
    PRIVATE,
    Message,
    decode_message,
    dump_frame,
    encode_message,
    parse_frame,
    render_text,
    sanitize,
)

#: Any Unicode text that UTF-8 can carry (no lone surrogates), newlines and controls included.
_TEXT = st.text(st.characters(codec="utf-8"))
_NAME = st.none() | _TEXT

MESSAGES = st.builds(
    Message,
    text=_TEXT,
    sender=_NAME,
    kind=st.sampled_from(sorted(KINDS)),
    room=_NAME,
    timestamp=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    to=_NAME,
    seq=st.none() | st.integers(-(2**63), 2**64),
)


def _is_unsafe(char: str) -> bool:
    """A character that can drive a terminal: C0 (tab aside), DEL or C1."""
    return char != "\t" and unicodedata.category(char) == "Cc"


# -- the type --------------------------------------------------------------------------------


def test_message_is_frozen_with_slots() -> None:
    """Message is a frozen dataclass with __slots__: no field can change, none can be added."""
    message = Message("hi", sender="alice")
    assert dataclasses.is_dataclass(Message)
    assert "__slots__" in vars(Message)
    assert not hasattr(message, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.text = "changed"  # type: ignore[misc]
    with pytest.raises((dataclasses.FrozenInstanceError, AttributeError, TypeError)):
        message.extra = 1  # type: ignore[attr-defined]
    assert message.text == "hi"


def test_message_defaults_equality_and_hash() -> None:
    """A bare Message is an ordinary chat message with no optional fields; equal ones hash equal."""
    message = Message("hi")
    assert (message.kind, message.sender, message.room) == (MESSAGE, None, None)
    assert (message.timestamp, message.to, message.seq) == (None, None, None)
    assert message == Message("hi")
    assert hash(message) == hash(Message("hi"))
    assert message != Message("hi", sender="alice")


def test_kinds() -> None:
    """KINDS is exactly the ten documented kinds and the seven of moderation."""
    base = {MESSAGE, PRIVATE, JOIN, LEAVE, ANNOUNCEMENT, NICK, INFO, ERROR, CLOSING, GAP}
    assert base | {"kick", "ban", "unban", "mute", "unmute", "topic", "op"} == KINDS
    assert len(KINDS) == 17


def test_ids_history_and_gaps_round_trip() -> None:
    """id, history and missed survive the JSON form; a gap reads as a count in text."""
    live = Message("hi", "alice", MESSAGE, "lobby", 1.0, id=7)
    old = Message("hi", "alice", MESSAGE, "lobby", 1.0, id=7, history=True)
    gap = Message("", None, GAP, "lobby", id=9, missed=12)
    for message in (live, old, gap):
        assert decode_message(encode_message(message).decode().rstrip("\n")) == message
    assert '"history"' not in encode_message(live).decode()
    assert render_text(gap) == "* 12 message(s) missed in lobby (no longer available)"


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"message","text":"x","id":-1}',
        '{"type":"message","text":"x","id":"7"}',
        '{"type":"message","text":"x","id":true}',
        '{"type":"gap","text":"","missed":1.5}',
        '{"type":"message","text":"x","history":"yes"}',
    ],
)
def test_bad_ids_are_refused(frame: str) -> None:
    """A malformed id, count or history flag is a clear InvalidFrame."""
    with pytest.raises(InvalidFrame):
        decode_message(frame)


# -- JSON form -------------------------------------------------------------------------------


@settings(deadline=None)
@given(MESSAGES)
def test_json_round_trip(message: Message) -> None:
    """encode_message then decode_message gives back an equal Message."""
    frame = encode_message(message)
    assert decode_message(frame[:-1].decode("utf-8")) == message


@settings(deadline=None)
@given(MESSAGES)
def test_encoded_frame_is_one_line(message: Message) -> None:
    """The JSON form is one line ending in exactly one LF, with no CR, whatever the text holds."""
    frame = encode_message(message)
    assert frame.endswith(b"\n")
    assert frame.count(b"\n") == 1
    assert b"\r" not in frame


@settings(deadline=None)
@given(st.lists(MESSAGES, max_size=5), st.integers(1, 64))
def test_json_round_trip_through_decoder(messages: list[Message], piece: int) -> None:
    """Encoded messages, streamed through a LineDecoder in pieces, decode to the originals."""
    stream = b"".join(encode_message(m) for m in messages)
    decoder = LineDecoder(1 << 20)
    frames = [
        frame for i in range(0, len(stream), piece) for frame in decoder.feed(stream[i : i + piece])
    ]
    assert all(isinstance(frame, str) for frame in frames)
    assert [decode_message(str(frame)) for frame in frames] == messages
    assert decoder.pending == 0


def test_json_form_leaves_out_none_fields() -> None:
    """Fields that are None do not appear in the JSON form; type and text always do."""
    assert Message("hi").to_wire() == {"type": "message", "text": "hi"}
    assert encode_message(Message("")) == b'{"type":"message","text":""}\n'


def test_json_form_all_fields() -> None:
    """Every set field appears under its wire name (from, ts), in the documented order."""
    message = Message(
        "hi", sender="alice", kind=PRIVATE, room="lobby", timestamp=1.5, to="bob", seq=7
    )
    assert list(message.to_wire().items()) == [
        ("type", "private"),
        ("from", "alice"),
        ("text", "hi"),
        ("room", "lobby"),
        ("to", "bob"),
        ("ts", 1.5),
        ("seq", 7),
    ]


def test_json_form_exact_bytes() -> None:
    """The JSON form is compact UTF-8 (no ASCII escapes), as docs/protocol.md shows it."""
    message = Message("hi ☕", sender="alice", room="lobby", timestamp=1700000000.0)
    assert (
        encode_message(message)
        == (
            '{"type":"message","from":"alice","text":"hi ☕","room":"lobby","ts":1700000000.0}\n'
        ).encode()
    )


def test_multiline_text_survives_json() -> None:
    """Text with LF, CRLF and a trailing newline is carried in one frame and comes back intact."""
    message = Message("one\ntwo\r\nthree\n", sender="alice")
    frame = encode_message(message)
    assert frame.count(b"\n") == 1
    assert decode_message(frame.decode().removesuffix("\n")) == message


def test_dump_frame_any_object() -> None:
    """dump_frame writes any JSON object as one compact LF-terminated frame."""
    assert dump_frame({"type": "who", "names": ["a", "b"]}) == b'{"type":"who","names":["a","b"]}\n'


def test_decode_accepts_parsed_object() -> None:
    """decode_message takes an already parsed object as well as a frame string."""
    assert decode_message({"type": "join", "from": "bob", "room": "lobby"}) == Message(
        "", sender="bob", kind=JOIN, room="lobby"
    )


def test_decode_defaults_and_unknown_fields() -> None:
    """A missing text is empty, an integer ts becomes a float, unknown fields are ignored."""
    message = decode_message('{"type":"message","ts":5,"future":[1,2],"seq":3}')
    assert message == Message("", timestamp=5.0, seq=3)
    assert isinstance(message.timestamp, float)


@pytest.mark.parametrize("kind", [["message"], None, 1, ""])
def test_decode_object_with_bad_type(kind: object) -> None:
    """A parsed object whose type is not a known kind (even unhashable) is InvalidFrame."""
    with pytest.raises(InvalidFrame, match="unknown message type"):
        decode_message({"type": kind, "text": "hi"})


def test_decode_surrogate_pair_escape() -> None:
    """A valid surrogate pair escape (what ensure_ascii encoders send) decodes to its character."""
    assert decode_message('{"type":"message","text":"\\ud83c\\udf89"}').text == "🎉"


def test_parse_frame_returns_object_of_any_type() -> None:
    """parse_frame accepts any non-empty string type (commands too), leaving kinds to its caller."""
    assert parse_frame('{"type":"who","room":"x"}') == {"type": "who", "room": "x"}


_NOT_FRAMES = {
    "empty": "",
    "not-json": "hello",
    "truncated": '{"type":"message"',
    "python-repr": "{'type': 'message'}",
    "array": '["message"]',
    "string": '"message"',
    "number": "1",
    "null": "null",
    "no-type": '{"text":"hi"}',
    "type-number": '{"type":1}',
    "type-null": '{"type":null}',
    "type-list": '{"type":["message"]}',
    "type-empty": '{"type":""}',
    "deep-array": "[" * 100_000,
    "deep-object": '{"type":"message","x":' + "[" * 100_000 + "]" * 100_000 + "}",
    "lone-high-surrogate": '{"type":"message","text":"\\ud800"}',
    "lone-low-surrogate": '{"type":"message","text":"x\\uDC00y"}',
    "surrogate-in-key": '{"type":"message","\\udfff":1}',
    "surrogate-nested": '{"type":"message","x":[{"y":["\\udbff"]}]}',
    "huge-int": '{"type":"message","seq":' + "1" * 5000 + "}",
}


@pytest.mark.parametrize("frame", _NOT_FRAMES.values(), ids=_NOT_FRAMES.keys())
def test_parse_frame_rejects(frame: str) -> None:
    """Anything but a JSON object with a non-empty string type, in valid Unicode: InvalidFrame."""
    with pytest.raises(InvalidFrame):
        parse_frame(frame)
    with pytest.raises(InvalidFrame):
        decode_message(frame)


def test_escaped_backslash_is_not_a_surrogate() -> None:
    """Text that merely looks like a surrogate escape (an escaped backslash) is accepted."""
    assert decode_message('{"type":"message","text":"\\\\ud800"}').text == "\\ud800"


_BAD_MESSAGES = {
    "unknown-type": ('{"type":"bogus"}', "unknown message type 'bogus'"),
    "type-wrong-case": ('{"type":"Message"}', "unknown message type 'Message'"),
    "command-type": ('{"type":"who"}', "unknown message type 'who'"),
    "text-number": ('{"type":"message","text":1}', '"text" must be a string'),
    "text-null": ('{"type":"message","text":null}', '"text" must be a string'),
    "text-list": ('{"type":"message","text":["hi"]}', '"text" must be a string'),
    "from-number": ('{"type":"message","from":1}', '"from" must be a string'),
    "from-object": ('{"type":"message","from":{}}', '"from" must be a string'),
    "room-number": ('{"type":"join","room":1}', '"room" must be a string'),
    "to-bool": ('{"type":"private","to":true}', '"to" must be a string'),
    "ts-bool": ('{"type":"message","ts":true}', '"ts" must be a finite number'),
    "ts-string": ('{"type":"message","ts":"1"}', '"ts" must be a finite number'),
    "ts-nan": ('{"type":"message","ts":NaN}', '"ts" must be a finite number'),
    "ts-inf": ('{"type":"message","ts":Infinity}', '"ts" must be a finite number'),
    "ts-minus-inf": ('{"type":"message","ts":-Infinity}', '"ts" must be a finite number'),
    "ts-overflow": ('{"type":"message","ts":1e999}', '"ts" must be a finite number'),
    "ts-huge-int": ('{"type":"message","ts":1' + "0" * 400 + "}", '"ts" must be a finite number'),
    "seq-float": ('{"type":"message","seq":1.0}', '"seq" must be an integer'),
    "seq-bool": ('{"type":"message","seq":false}', '"seq" must be an integer'),
    "seq-string": ('{"type":"message","seq":"1"}', '"seq" must be an integer'),
}


@pytest.mark.parametrize(("frame", "reason"), _BAD_MESSAGES.values(), ids=_BAD_MESSAGES.keys())
def test_decode_message_rejects(frame: str, reason: str) -> None:
    """An unknown type or a field of the wrong type is InvalidFrame saying which."""
    with pytest.raises(InvalidFrame, match=re.escape(reason)):
        decode_message(frame)
    with pytest.raises(InvalidFrame, match=re.escape(reason)):
        decode_message(json.loads(frame))


@settings(deadline=None)
@given(st.text())
def test_decode_message_never_raises_anything_else(frame: str) -> None:
    """Whatever the string, decode_message returns a Message or raises InvalidFrame."""
    try:
        decode_message(frame)
    except InvalidFrame:
        pass


@settings(deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["type", "text", "from", "room", "to", "ts", "seq", "x"]),
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text()
        | st.sampled_from(sorted(KINDS))
        | st.lists(st.integers(), max_size=2),
    )
)
def test_decode_message_random_objects(obj: dict[str, object]) -> None:
    """Random field values give a well-typed Message or InvalidFrame, never another exception."""
    try:
        message = decode_message(obj)
    except InvalidFrame:
        return
    assert message.kind in KINDS
    assert isinstance(message.text, str)
    assert message.timestamp is None or isinstance(message.timestamp, float)
    assert message.seq is None or type(message.seq) is int


# -- sanitize --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[31mred", "^[[31mred"),
        ("a\x00b", "a^@b"),
        ("over\rwrite", "over^Mwrite"),
        ("bell\x07", "bell^G"),
        ("del\x7f", "del^?"),
        ("csi\x9b2J", "csi\\x9b2J"),
        ("c1\x80\x9f", "c1\\x80\\x9f"),
        ("tab\tkept", "tab\tkept"),
        ("line\nfeed", "line^Jfeed"),
        ("café ☕ 🎉 ^ \\", "café ☕ 🎉 ^ \\"),
    ],
)
def test_sanitize(raw: str, shown: str) -> None:
    """Control characters become visible caret (C0, DEL) or \\xNN (C1) text; tab stays."""
    assert sanitize(raw) == shown


def test_sanitize_keep_newlines() -> None:
    """With keep_newlines, LF is kept but CR and the other controls are still shown."""
    assert sanitize("a\nb\r\n\x1b", keep_newlines=True) == "a\nb^M\n^["


@given(_TEXT, st.booleans())
def test_sanitize_leaves_no_control_character(text: str, keep_newlines: bool) -> None:
    """sanitize output holds no C0/C1/DEL except tab (and LF with keep_newlines)."""
    out = sanitize(text, keep_newlines=keep_newlines)
    allowed = "\n" if keep_newlines else ""
    assert not [c for c in out if _is_unsafe(c) and c not in allowed]
    if keep_newlines:
        assert out.count("\n") == text.count("\n")


# -- text form -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        (Message("hi", sender="alice"), "alice: hi"),
        (Message("hi"), "?: hi"),
        (Message("hi", sender=""), "?: hi"),
        (Message("hi", sender="alice", kind=PRIVATE, to="bob"), "[private] alice: hi"),
        (Message("text", kind=ANNOUNCEMENT), "[server] text"),
        (Message("reason", kind=ERROR), "! reason"),
        (Message("reason", kind=CLOSING), "! reason"),
        (Message("", sender="bob", kind=JOIN, room="lobby"), "* bob joined lobby"),
        (Message("", sender="bob", kind=JOIN), "* bob joined"),
        (Message("", sender="bob", kind=LEAVE, room="lobby"), "* bob left lobby"),
        (Message("reason", sender="bob", kind=LEAVE, room="lobby"), "* bob left lobby (reason)"),
        (Message("new", sender="old", kind=NICK), "* old is now new"),
        (Message("info text", kind=INFO), "* info text"),
    ],
    ids=lambda value: value.kind if isinstance(value, Message) else "",
)
def test_render_text(message: Message, shown: str) -> None:
    """Each kind has its documented text form."""
    assert render_text(message) == shown


@pytest.mark.parametrize(
    ("kind", "prefix"),
    [
        (MESSAGE, "alice: "),
        (PRIVATE, "[private] alice: "),
        (ANNOUNCEMENT, "[server] "),
        (ERROR, "! "),
        (CLOSING, "! "),
        (INFO, "* "),
    ],
)
def test_render_text_prefixes_every_line(kind: str, prefix: str) -> None:
    """Every line of a multi-line text carries the prefix, so no line can pose as another's."""
    message = Message("one\nbob: two\n", sender="alice", kind=kind)
    assert render_text(message).split("\n") == [prefix + "one", prefix + "bob: two", prefix]


@pytest.mark.parametrize("kind", [JOIN, LEAVE, NICK])
def test_render_text_one_line_kinds(kind: str) -> None:
    """Join, leave and nick notices stay on one line whatever their fields hold."""
    message = Message("a\nb", sender="x\ny", kind=kind, room="r\ns")
    assert "\n" not in render_text(message)


def test_render_text_escapes_controls() -> None:
    """An ESC or CR in the sender or text is shown as ^[ / ^M, never sent to the terminal raw."""
    message = Message("\x1b[2Jgone\rfake", sender="ev\x1b]0;il\x07")
    assert render_text(message) == "ev^[]0;il^G: ^[[2Jgone^Mfake"


@settings(deadline=None)
@given(MESSAGES | st.builds(Message, text=_TEXT, sender=_NAME, kind=_TEXT, room=_NAME))
def test_render_text_never_outputs_controls(message: Message) -> None:
    """For any message, of any kind, the text form holds no control character but LF."""
    out = render_text(message)
    assert not [c for c in out if _is_unsafe(c) and c != "\n"]


@settings(deadline=None)
@given(text=_TEXT, sender=_TEXT)
def test_render_chat_message_lines(text: str, sender: str) -> None:
    """A chat message renders as one line per line of text, each starting with 'sender: '."""
    lines = render_text(Message(text, sender=sender)).split("\n")
    assert len(lines) == text.count("\n") + 1
    assert all(line.startswith(sanitize(sender or "?") + ": ") for line in lines)
