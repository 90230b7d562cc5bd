"""Tier 1: the one slash-command parser (chatcast._core.commands) as each program uses it:
typed lines in, commands or a clear error out; no event loop."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatcast._core import commands as proto
from chatcast._core.commands import (
    CLIENT_COMMANDS,
    MULTICAST_COMMANDS,
    OPERATOR_COMMANDS,
    SERVER_COMMANDS,
    SYNTAX,
    CommandSet,
    Help,
    Join,
    Nick,
    Quit,
    Rooms,
    Say,
    Who,
    chat_text,
    help_text,
    parse_text,
    split_command,
)
from chatcast.exceptions import InvalidFrame

ALL_SETS = [SERVER_COMMANDS, CLIENT_COMMANDS, MULTICAST_COMMANDS, OPERATOR_COMMANDS]
SET_IDS = ["server", "client", "multicast", "operator"]


@pytest.mark.parametrize(
    ("line", "split"),
    [
        ("hello", None),
        ("", None),
        (" /join den", None),  # a command starts the line
        ("//join den", None),  # escaped: chat
        ("/join den", ("join", "den")),
        ("/JOIN   den  ", ("join", "den")),
        ("/msg bob  hi there ", ("msg", "bob  hi there")),
        ("/who", ("who", "")),
        ("/", ("", "")),
    ],
)
def test_split_command(line: str, split: tuple[str, str] | None) -> None:
    """The tokenizer: the word in lower case and the stripped rest, or None for chat."""
    assert split_command(line) == split


@pytest.mark.parametrize(
    ("line", "text"), [("hello", "hello"), ("//join", "/join"), ("///x", "//x"), ("/x", "/x")]
)
def test_chat_text_unescapes_one_slash(line: str, text: str) -> None:
    """``//text`` stands for ``/text``; only one leading slash is removed."""
    assert chat_text(line) == text


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("hello there", Say("hello there")),
        ("  spaced  ", Say("  spaced  ")),  # chat text is sent as typed
        ("//slash", Say("/slash")),
        ("/join den", Join("den")),
        ("/Join den", Join("den")),
        ("/nick alicia", Nick("alicia")),
        ("/msg bob  hi there ", Say("hi there", to="bob")),
        ("/who", Who(None)),
        ("/who den", Who("den")),
        ("/rooms", Rooms()),
        ("/help", Help()),
        ("/help me please", Help()),
        ("/quit", Quit("")),
        ("/quit see you", Quit("see you")),
        ("/exit", Quit("")),
        ("/EXIT bye", Quit("bye")),
    ],
)
def test_client_lines(line: str, command: proto.Command) -> None:
    """What ``chatcast client`` users type parses to the command the client carries out."""
    assert parse_text(line, CLIENT_COMMANDS) == command


@pytest.mark.parametrize(
    ("commands", "line", "error"),
    [
        (CLIENT_COMMANDS, "/bogus", "unknown command /bogus (try /help)"),
        (CLIENT_COMMANDS, "/Bogus x", "unknown command /bogus (try /help)"),
        (CLIENT_COMMANDS, "/", "unknown command / (try /help)"),
        (CLIENT_COMMANDS, "/ hello", "unknown command / (try /help)"),
        (CLIENT_COMMANDS, "/auth s3cret", "unknown command /auth (try /help)"),
        (CLIENT_COMMANDS, "/join", "/join needs an argument (try /help)"),
        (CLIENT_COMMANDS, "/JOIN   ", "/join needs an argument (try /help)"),
        (CLIENT_COMMANDS, "/nick", "/nick needs an argument (try /help)"),
        (CLIENT_COMMANDS, "/msg", "/msg needs an argument (try /help)"),
        (CLIENT_COMMANDS, "/msg bob", "usage: /msg NAME TEXT"),
        (CLIENT_COMMANDS, "/msg bob    ", "usage: /msg NAME TEXT"),
        (CLIENT_COMMANDS, "", "empty message"),
        (CLIENT_COMMANDS, "a\x1b[2Jb", "control character U+001B is not allowed"),
        (CLIENT_COMMANDS, "/msg bob \u202eevil", "invisible formatting character U+202E"),
        (SERVER_COMMANDS, "/exit", "unknown command /exit (try /help)"),
        (SERVER_COMMANDS, "/auth", "/auth needs an argument (try /help)"),
        (MULTICAST_COMMANDS, "/join den", "unknown command /join (try /help)"),
        (MULTICAST_COMMANDS, "/msg bob hi", "unknown command /msg (try /help)"),
        (MULTICAST_COMMANDS, "", "empty message"),
        (OPERATOR_COMMANDS, "/who", "unknown command /who (try /help)"),
    ],
)
def test_bad_lines_say_what_is_wrong(commands: CommandSet, line: str, error: str) -> None:
    """Every bad line is an InvalidFrame whose message says what was wrong."""
    with pytest.raises(InvalidFrame, match=f"^{re.escape(error)}"):
        parse_text(line, commands)


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("hello", Say("hello")),
        ("\x1b[31mred", Say("\x1b[31mred")),  # no text rules: receivers sanitise
        ("//quit", Say("/quit")),
        ("/quit", Quit("")),
        ("/QUIT now", Quit("now")),
        ("/exit", Quit("")),
        ("/help", Help()),
    ],
)
def test_multicast_lines(line: str, command: proto.Command) -> None:
    """``chatcast multicast chat`` understands /quit, /exit and /help; the rest is sent."""
    assert parse_text(line, MULTICAST_COMMANDS) == command


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("doors close at ten", Say("doors close at ten")),
        ("//help", Say("/help")),
        ("/quit", Quit("")),
        ("/exit", Quit("")),
        ("/help", Help()),
    ],
)
def test_operator_lines(line: str, command: proto.Command) -> None:
    """The server's operator: announcements, /quit (or /exit) and /help."""
    assert parse_text(line, OPERATOR_COMMANDS) == command


def test_server_is_the_default_set() -> None:
    """``parse_text(line)`` is the server's parser, as the server calls it."""
    assert parse_text("/auth s3cret") == proto.Auth("s3cret")
    assert parse_text("/msg bob hi") == parse_text("/msg bob hi", SERVER_COMMANDS)


def test_help_text_is_the_servers_documented_help() -> None:
    """The server's /help answer is built from the table, in the documented order."""
    assert (
        proto.HELP_TEXT
        == help_text()
        == (
            "commands:\n"
            "  /nick NAME                    change your name\n"
            "  /join ROOM                    move to another room\n"
            "  /msg NAME TEXT                private message to NAME\n"
            "  /who [ROOM]                   who is in your room (or ROOM)\n"
            "  /rooms                        list the rooms\n"
            "  /history [N]                  show the last N messages of your room\n"
            "  /auth TOKEN                   log in, when the server asks for a token\n"
            "  /quit [REASON]                leave\n"
            "  /op TOKEN                     become an operator\n"
            "  /kick NAME [WHY]              disconnect NAME (operators)\n"
            "  /ban NAME|@IP [TIME] [WHY]    ban for TIME (10m, 2h, 1d) or for good (operators)\n"
            "  /unban NAME|@IP               lift a ban (operators)\n"
            "  /bans                         list the bans (operators)\n"
            "  /mute NAME [#ROOM] [WHY]      stop NAME speaking in ROOM (operators)\n"
            "  /unmute NAME [#ROOM]          let NAME speak again (operators)\n"
            "  /topic [ROOM [TEXT|-]]        show ROOM's topic; set or clear it (operators)\n"
            "  //text                        send a line that starts with '/'\n"
            "anything else is sent to your room"
        )
    )


@pytest.mark.parametrize("commands", ALL_SETS, ids=SET_IDS)
def test_help_lists_what_parses(commands: CommandSet) -> None:
    """Each program's help lists exactly its own commands, in one column, and each usage
    line, filled in, parses to a command rather than an error."""
    lines = help_text(commands).split("\n")
    usages = [line.split("  ")[1] for line in lines[1:-2]]
    assert usages == [SYNTAX[name].usage for name in commands.names]
    summaries = [SYNTAX[name].summary for name in commands.names] + [proto.ESCAPE.summary]
    pairs = list(zip(lines[1:-1], summaries, strict=True))
    assert all(line.endswith(summary) for line, summary in pairs)
    assert len({len(line) - len(summary) for line, summary in pairs}) == 1  # one column
    for usage in usages:
        typed = usage.replace("[", "").replace("]", "").replace("TOKEN", "t")
        typed = typed.replace("TEXT", "hello").replace("NAME", "bob").replace("ROOM", "den")
        typed = typed.replace(" N", " 5")
        assert parse_text(typed, commands) != Say(typed)  # a command, not chat text


def test_command_set_refuses_unknown_names() -> None:
    """A set naming a command the table lacks is a ValueError at construction."""
    with pytest.raises(ValueError, match="unknown command 'dance'"):
        CommandSet(("quit", "dance"))
    with pytest.raises(ValueError, match="unknown command 'leave'"):
        CommandSet(("quit",), aliases={"bye": "leave"})


_TYPED = st.text(st.characters(codec="utf-8", include_characters="/ \x1b\u202e"), max_size=20).map(
    lambda text: text.replace("\n", "")
)


@given(line=_TYPED, index=st.integers(0, len(ALL_SETS) - 1))
def test_any_line_parses_or_is_refused(line: str, index: int) -> None:
    """Whatever is typed, the parser returns a command or raises InvalidFrame, nothing else;
    chat under the hub's rules always passes check_text."""
    commands = ALL_SETS[index]
    try:
        command = parse_text(line, commands)
    except InvalidFrame as exc:
        reason = str(exc)
    else:
        if isinstance(command, Say) and commands.text_rules:
            assert proto.check_text(command.text) == command.text
        return
    assert reason  # a refusal always says why
