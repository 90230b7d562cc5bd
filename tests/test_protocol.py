"""Tier 1: what clients ask of the server, parsed sans I/O (chatcast._core.commands), and the
server's bulk text path agreeing with it."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatcast._core import commands as proto
from chatcast._core.framing import DEFAULT_MAX_LINE_BYTES
from chatcast._core.textpath import plain_lines
from chatcast.exceptions import InvalidFrame


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "name must not be empty"),
        ("x" * 33, "name is longer than 32 characters"),
        ("two words", "name may hold only letters, digits"),
        ("new\nline", "name may hold only letters, digits"),
        ("-dash", "name may hold only letters, digits"),
        ("esc\x1b", "name may hold only letters, digits"),
        ("\u0430lice", "name mixes letters of different scripts"),  # Cyrillic a + Latin
        ("\u0455erver", "name mixes letters of different scripts"),  # Cyrillic dze + Latin
        ("Server", "name 'Server' is reserved"),
        ("\uff33erver", "is reserved"),  # fullwidth S: NFKC makes it "Server"
    ],
)
def test_check_name_refuses(name: str, reason: str) -> None:
    """Bad names are InvalidFrame with a reason a user can act on."""
    with pytest.raises(InvalidFrame, match=re.escape(reason)):
        proto.check_name(name)


@pytest.mark.parametrize(
    "name", ["alice", "Alice_2", "a.b-c", "José", "山田たろう", "김철수", "\u0430\u0440\u0435"]
)
def test_check_name_accepts(name: str) -> None:
    """Letters of any one script (Japanese and Korean mixes count as one), digits, _ . -."""
    assert proto.check_name(name) == name


def test_name_key_folds_case_and_width() -> None:
    """Names that differ only in case or width (NFKC) compare equal."""
    assert proto.name_key("Alice") == proto.name_key("alice") == proto.name_key("\uff41lice")
    assert proto.name_key("Straße") == proto.name_key("STRASSE")
    assert proto.name_key("alice") != proto.name_key("\u0430lice")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty message"),
        ("a\x00b", "control character U+0000"),
        ("a\x1b[2Jb", "control character U+001B"),
        ("a\rb", "control character U+000D"),
        ("a\x85b", "control character U+0085"),
        ("a\u202eb", "invisible formatting character U+202E"),
        ("a\u2066b", "invisible formatting character U+2066"),
        ("a\u2028b", "invisible formatting character U+2028"),
        ("a\ufeffb", "invisible formatting character U+FEFF"),
        ("a\ud800b", "lone surrogate U+D800"),
    ],
)
def test_check_text_refuses(text: str, reason: str) -> None:
    """Control, reordering and invisible characters are refused, saying which."""
    with pytest.raises(InvalidFrame, match=re.escape(reason)):
        proto.check_text(text)


def test_check_text_accepts_tabs_newlines_and_joiners() -> None:
    """Tab, LF (multi-line JSON text), emoji joiners and right-to-left text are fine."""
    for text in (
        "a\tb",
        "two\nlines",
        "\U0001f468\u200d\U0001f469",
        "\u05e9\u05dc\u05d5\u05dd",
        "\u200f\u0645\u0631",
    ):
        assert proto.check_text(text) == text


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("hello", proto.Say("hello")),
        ("//slash", proto.Say("/slash")),
        ("/msg bob  hi there ", proto.Say("hi there", to="bob")),
        ("/JOIN den", proto.Join("den")),
        ("/who", proto.Who(None)),
        ("/quit bye now", proto.Quit("bye now")),
        ("/quit \x1b[2Jbye", proto.Quit("")),  # a reason a room must not see: dropped
        ("/quit " + "r" * 300, proto.Quit("r" * proto.MAX_REASON_LENGTH)),
        ("/auth s3cret", proto.Auth("s3cret")),
        ("/help", proto.Help()),
    ],
)
def test_parse_text(line: str, command: proto.Command) -> None:
    """Text-mode lines: chat, or a slash command."""
    assert proto.parse_text(line) == command


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("/bogus", "unknown command /bogus (try /help)"),
        ("/join", "/join needs an argument (try /help)"),
        ("/msg bob", "usage: /msg NAME TEXT"),
    ],
)
def test_parse_text_refuses(line: str, reason: str) -> None:
    """Unknown commands and missing arguments say what to do."""
    with pytest.raises(InvalidFrame, match=re.escape(reason)):
        proto.parse_text(line)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('{"type":"auth","token":"x"}', "unknown frame type 'auth'"),
        ('{"type":"message"}', '"text" is required'),
        ('{"type":"message","text":1}', '"text" must be a string'),
        ('{"type":"hello","token":"\\ud800"}', "lone surrogate"),
        ("[1]", "a JSON frame must be an object"),
    ],
)
def test_parse_json_refuses(frame: str, reason: str) -> None:
    """JSON frames: unknown types, missing or mistyped fields, non-text strings."""
    with pytest.raises(InvalidFrame, match=re.escape(reason)):
        proto.parse_json(frame)


_LINE = st.text(
    st.characters(
        codec="utf-8",
        categories=("L", "N", "P", "S", "Zs", "Cc", "Cf"),
        include_characters="\u2028\u2029\u202e\u2066\ufeff\x85\x1b/ ",
    ),
    max_size=12,
)


@settings(deadline=None, max_examples=400)
@given(st.lists(_LINE.filter(lambda line: "\n" not in line), min_size=1, max_size=6))
def test_bulk_text_path_agrees_with_the_checks(lines: list[str]) -> None:
    """The server's bulk check of a whole read (in C) accepts a read exactly when every line
    is plain chat by the per-line rules; otherwise it defers to them."""
    data = ("\n".join(lines) + "\n").encode()

    def plain(line: str) -> bool:
        try:
            proto.check_text(line)
        except InvalidFrame:
            return False
        return line[0] != "/"

    bulk = plain_lines(data, 0, len(data) - 1, DEFAULT_MAX_LINE_BYTES)
    assert bulk == (lines if all(plain(line) for line in lines) else None)
