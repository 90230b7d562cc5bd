"""The input line of the terminal console, as pure logic: keys in; lines, and what to draw, out.

No I/O and no event loop here: :class:`~chatcast.cli.console.Console` reads the bytes and
writes the strings. :class:`LineSplitter` cuts piped input into lines; :class:`LineEditor`
turns keystrokes (escape sequences included) into the line being typed and the lines
submitted; :class:`InputLine` is that line on screen, a prompt before it, never wider than the
terminal, and says what to write to draw it, to print other output above it, and to leave it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ..message import sanitize

__all__ = [
    "ERASE_LINE",
    "MIN_INPUT_COLUMNS",
    "NAME_COMMANDS",
    "InputLine",
    "Keys",
    "LineEditor",
    "LineSplitter",
    "char_width",
    "complete",
    "text_width",
]

#: Erase the current screen line: carriage return, then "erase in line" to its end.
ERASE_LINE: Final = "\r\x1b[K"
#: The fewest columns the typed text gets, however narrow the terminal.
MIN_INPUT_COLUMNS: Final = 4
#: Commands whose first argument is a member's name: Tab completes it.
NAME_COMMANDS: Final = frozenset({"/msg", "/kick", "/ban", "/mute", "/unmute"})


def complete(
    line: str, begidx: int, text: str, names: Iterable[str], commands: Iterable[str] = ()
) -> list[str]:
    """Tab completion: the candidates for ``text``, the word of ``line`` at ``begidx``.

    The first argument of a command of :data:`NAME_COMMANDS` completes to the ``names`` that
    start with it (ignoring case); a first word starting with ``/`` completes to the
    ``commands`` (``"/msg"``...) that start with it. Anything else has no candidates.
    Candidates are sorted and unique.
    """
    before = line[:begidx].split()
    if not before:
        if not text.startswith("/"):
            return []
        return sorted({command for command in commands if command.startswith(text.lower())})
    if len(before) != 1 or before[0].lower() not in NAME_COMMANDS:
        return []
    prefix = text.casefold()
    return sorted({name for name in names if name.casefold().startswith(prefix)})


class LineSplitter:
    """Sans-I/O: bytes in, complete LF-terminated lines out (a CR before the LF dropped)."""

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._buffer = bytearray()  # an unfinished line: never holds an LF

    def feed(self, data: bytes) -> list[str]:
        """Add ``data``; return the lines it completes. Each byte is searched once."""
        end = data.find(b"\n")
        if end < 0:
            self._buffer += data
            return []
        self._buffer += data[:end]
        lines = [self._decode(bytes(self._buffer))]
        self._buffer.clear()
        rest = data[end + 1 :].split(b"\n")
        self._buffer += rest.pop()
        lines.extend(self._decode(line) for line in rest)
        return lines

    def finish(self) -> str | None:
        """Return the unfinished last line, if any, as a line (end of input)."""
        if not self._buffer:
            return None
        line = self._decode(bytes(self._buffer))
        self._buffer.clear()
        return line

    def _decode(self, line: bytes) -> str:
        return line.removesuffix(b"\r").decode(self._encoding, "replace")


_NORMAL, _ESCAPE, _CSI, _SS3 = range(4)


class LineEditor:
    """Sans-I/O line editor: decoded keystrokes in, submitted lines out.

    Printable characters (any Unicode) append; Backspace/DEL delete the last character;
    Ctrl-U clears the line; Ctrl-W and Alt-Backspace delete the last word; Enter (CR, LF or
    CRLF) submits; Ctrl-D on an empty line is end of input (elsewhere it is ignored); Tab
    types a space. Other control keys insert nothing. Escape sequences are parsed across calls
    (ECMA-48 CSI ``ESC [ params final``, SS3 ``ESC O x``) and dropped; ``ESC`` plus a
    printable character (Alt-key) is dropped too.
    """

    def __init__(self) -> None:
        self._chars: list[str] = []
        self._state = _NORMAL
        self._after_cr = False
        self._ended = False

    @property
    def buffer(self) -> str:
        """The unfinished line."""
        return "".join(self._chars)

    @property
    def in_sequence(self) -> bool:
        """True while an escape sequence has started but not ended."""
        return self._state != _NORMAL

    def abandon_sequence(self) -> None:
        """Forget an unfinished escape sequence (a lone Esc key): read what follows as keys."""
        self._state = _NORMAL

    def feed(self, text: str) -> list[str | None]:
        """Apply keystrokes; return the submitted lines in order, ``None`` for end of input.

        After ``None`` every further key is ignored.
        """
        events: list[str | None] = []
        for ch in text:
            if self._ended:
                break
            if self._state != _NORMAL and self._in_sequence(ch):
                continue
            self._key(ch, events)
        return events

    def _in_sequence(self, ch: str) -> bool:
        # Consume ``ch`` as part of an escape sequence, or end it and return False so that
        # ``ch`` is read as a key (a control key, or anything that cannot continue it).
        state = self._state
        self._state = _NORMAL
        if state == _ESCAPE:
            if ch in "[O\x1b":
                self._state = {"[": _CSI, "O": _SS3, "\x1b": _ESCAPE}[ch]
                return True
            if ch in "\x7f\x08":  # Alt-Backspace
                self._delete_word()
                return True
            return ch.isprintable()  # Alt-letter: dropped
        if state == _CSI:
            if " " <= ch <= "?":  # parameter and intermediate bytes
                self._state = _CSI
                return True
            return "@" <= ch <= "~"  # the final byte ends it
        return " " <= ch <= "~"  # SS3: one character

    def _key(self, ch: str, events: list[str | None]) -> None:
        after_cr, self._after_cr = self._after_cr, False
        if ch == "\r" or ch == "\n":
            if ch == "\n" and after_cr:
                return  # CRLF is one Enter
            self._after_cr = ch == "\r"
            events.append("".join(self._chars))
            self._chars.clear()
        elif ch in "\x7f\x08":
            if self._chars:
                self._chars.pop()
        elif ch == "\x15":  # Ctrl-U
            self._chars.clear()
        elif ch == "\x17":  # Ctrl-W
            self._delete_word()
        elif ch == "\x04":  # Ctrl-D
            if not self._chars:
                events.append(None)
                self._ended = True
        elif ch == "\x1b":
            self._state = _ESCAPE
        elif ch == "\t":
            self._chars.append(" ")
        elif unicodedata.category(ch) not in ("Cc", "Cs"):
            self._chars.append(ch)

    def _delete_word(self) -> None:
        # As readline's unix-word-rubout: the blanks before the cursor, then the word.
        chars = self._chars
        while chars and chars[-1].isspace():
            chars.pop()
        while chars and not chars[-1].isspace():
            chars.pop()

    def tail(self, columns: int) -> str:
        """The end of the line that fits in ``columns`` cells; ``<`` marks a hidden start."""
        chars = self._chars
        used = 0
        start = len(chars)
        while start and used + char_width(chars[start - 1]) <= columns:
            used += char_width(chars[start - 1])
            start -= 1
        if start == 0:
            return "".join(chars)
        while start < len(chars) and (used + 1 > columns or char_width(chars[start]) == 0):
            used -= char_width(chars[start])
            start += 1
        return "<" + "".join(chars[start:])


def char_width(ch: str) -> int:
    # Terminal cells: 0 for combining marks and format characters, 2 for East Asian wide.
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def text_width(text: str) -> int:
    return sum(map(char_width, text))


@dataclass(frozen=True, slots=True)
class Keys:
    """What some keystrokes did (:meth:`InputLine.keys`)."""

    lines: list[str]
    """The lines submitted, in order."""
    ended: bool
    """Whether end of input (Ctrl-D on an empty line) came after them."""
    output: str
    """What to write to the terminal: the submitted lines left on screen after the prompt,
    and the input line redrawn if it changed (nothing for a key that changes nothing)."""


class InputLine:
    """The prompt and the line being typed, as shown on the terminal's last line.

    It never wraps: a typed line wider than the terminal scrolls sideways, a ``<`` marking
    that its start is hidden (the last column stays free: writing there puts some terminals
    into pending wrap), so it can always be erased with :data:`ERASE_LINE` and redrawn.

    Args:
        prompt: Shown before the typed text; control characters in it become caret notation.
    """

    def __init__(self, prompt: str) -> None:
        self.editor = LineEditor()
        self._prompt = sanitize(prompt)
        self._shown: str | None = None  # the line as last drawn; None: draw it again

    @property
    def prompt(self) -> str:
        """The prompt, as shown (setting it sanitises it; :meth:`draw` shows it)."""
        return self._prompt

    @prompt.setter
    def prompt(self, prompt: str) -> None:
        self._prompt = sanitize(prompt)

    def draw(self, columns: int) -> str:
        """What to write to (re)draw the line on a terminal ``columns`` wide."""
        return ERASE_LINE + self._render(columns)

    def above(self, lines: list[str], columns: int) -> str:
        """What to write to print ``lines`` (already sanitised) above the line, then draw it."""
        return ERASE_LINE + "\r\n".join(lines) + "\r\n" + self._render(columns)

    def keys(self, text: str, columns: int | None) -> Keys:
        """Apply keystrokes (see :meth:`LineEditor.feed`).

        Args:
            text: Decoded keystrokes.
            columns: The terminal's width; ``None`` when the line is not on screen, and so
                nothing is to be drawn.
        """
        lines: list[str] = []
        out: list[str] = []
        ended = False
        for event in self.editor.feed(text):
            if event is None:
                ended = True
                break
            lines.append(event)
            if columns is not None:
                out.append(ERASE_LINE + self._prompt + event + "\r\n")
                self._shown = None
        if not ended and columns is not None:
            previous = self._shown
            shown = self._render(columns)
            if shown != previous:
                out.append(ERASE_LINE + shown)
        return Keys(lines, ended, "".join(out))

    def leave(self) -> str:
        """What to write when the line leaves the screen for good: the cursor at the start of
        an empty line, and a typed but unsubmitted line (Ctrl-C pressed, say) left visible."""
        return "\r\n" if self.editor.buffer else ERASE_LINE

    def _render(self, columns: int) -> str:
        width = columns - 1 - text_width(self._prompt)
        self._shown = self._prompt + self.editor.tail(max(width, MIN_INPUT_COLUMNS))
        return self._shown
