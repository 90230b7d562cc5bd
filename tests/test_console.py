"""The terminal layer: Console on a pseudo-terminal (terminal mode) and on pipes (line mode)."""

from __future__ import annotations

import ast
import asyncio
import io
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import chatcast.cli.console
import chatcast.cli.lineedit
from chatcast.cli.console import Console
from chatcast.cli.lineedit import (
    ERASE_LINE,
    InputLine,
    Keys,
    LineEditor,
    LineSplitter,
    complete,
)
from chatcast.cli.reader import ReaderThread
from tests.helpers import timeout

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")

if sys.platform != "win32":
    import fcntl
    import struct
    import termios


# Helpers.


def render(output: str) -> list[str]:
    """Replay terminal output on a tiny screen model; return its lines.

    Knows CR, LF, tab, printable characters and ``ESC [ K`` (all Console should ever send);
    anything else fails the test, so a stray control character cannot hide.
    """
    rows: list[list[str]] = [[]]
    row = col = 0
    i = 0
    while i < len(output):
        ch = output[i]
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row += 1
            if row == len(rows):
                rows.append([])
        elif ch == "\t":
            col = col // 8 * 8 + 8
        elif ch == "\x1b":
            assert output.startswith("\x1b[K", i), f"unexpected escape {output[i : i + 8]!r}"
            del rows[row][col:]
            i += 3
            continue
        else:
            assert ch.isprintable(), f"unexpected control character {ch!r}"
            line = rows[row]
            line.extend(" " * (col - len(line)))
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
        i += 1
    return ["".join(r) for r in rows]


class Pty:
    """A pseudo-terminal: the console gets the slave side, the test types on the master.

    Everything the console writes is collected from the master on the event loop, so
    :meth:`wait_screen` can wait for the screen to show something.
    """

    def __init__(self, columns: int = 80) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        self.output = bytearray()
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.master, self._on_readable)
        self._reading = True

    def _on_readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every slave fd closed
            data = b""
        if not data:
            self._stop_reading()
        self.output += data
        self._changed.set()

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.master)
            self._reading = False

    def type(self, keys: str | bytes) -> None:
        """Send keystrokes, as a terminal does when keys are pressed."""
        os.write(self.master, keys.encode() if isinstance(keys, str) else keys)

    @property
    def text(self) -> str:
        """Everything written to the terminal so far."""
        return self.output.decode("utf-8", "replace")

    def screen(self) -> list[str]:
        """The screen lines, as a terminal would show them."""
        return render(self.text)

    async def wait_screen(self, predicate: Callable[[list[str]], bool]) -> list[str]:
        """Wait until ``predicate(screen)`` holds; return the screen."""
        async with asyncio.timeout(timeout(5)):
            while not predicate(screen := self.screen()):
                self._changed.clear()
                await self._changed.wait()
        return screen

    async def wait_last_line(self, expected: str) -> list[str]:
        """Wait until the line with the cursor reads ``expected``."""
        return await self.wait_screen(lambda screen: screen[-1] == expected)

    def mode(self) -> list[Any]:
        """The terminal's current termios attributes."""
        return termios.tcgetattr(self.slave)

    def hang_up(self) -> None:
        """Close the master side, as when the terminal window is closed."""
        self._stop_reading()
        os.close(self.master)
        self.master = -1

    def close(self) -> None:
        """Close both sides."""
        self._stop_reading()
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)


@pytest.fixture
async def pty_term() -> AsyncIterator[Pty]:
    """A fresh 80-column pseudo-terminal, closed at teardown."""
    if sys.platform == "win32":
        pytest.skip("needs a POSIX pty")
    term = Pty()
    yield term
    term.close()


@pytest.fixture
def devnull() -> Iterator[IO[bytes]]:
    """/dev/null opened for reading: an empty stdin."""
    with open(os.devnull, "rb") as f:
        yield f


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """An os.pipe() whose ends the test may close early; whatever is left is closed after."""
    r, w = os.pipe()
    fds = [r, w]
    yield r, w
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


async def read_all(console: Console) -> list[str]:
    """Every line until end of input."""
    lines = []
    async with asyncio.timeout(timeout(10)):
        while (line := await console.read_line()) is not None:
            lines.append(line)
    return lines


# Terminal mode, on a pty.


@posix_only
async def test_typed_line_is_returned_and_stays_on_screen(pty_term: Pty) -> None:
    """Keys are echoed after the prompt; Enter returns the line, a new prompt follows."""
    async with Console(prompt="> ", stdin=pty_term.slave, stdout=pty_term.slave) as console:
        await pty_term.wait_last_line("> ")
        pty_term.type("hello")
        await pty_term.wait_last_line("> hello")
        pty_term.type("\r")
        async with asyncio.timeout(timeout(5)):
            assert await console.read_line() == "hello"
        screen = await pty_term.wait_last_line("> ")
        assert screen[-2] == "> hello"


@posix_only
async def test_editing_keys(pty_term: Pty) -> None:
    """Backspace and DEL delete a character, Ctrl-U the line, Ctrl-W and Alt-Backspace a word."""
    async with Console(stdin=pty_term.slave, stdout=pty_term.slave) as console:
        pty_term.type("helxx\x7f\x7flo")
        await pty_term.wait_last_line("> hello")
        pty_term.type("\x08\x08\x08\x08\x08x")
        await pty_term.wait_last_line("> x")
        pty_term.type("garbage\x15one two  \x17three four\x1b\x7ffive\r")
        async with asyncio.timeout(timeout(5)):
            assert await console.read_line() == "one three five"
        pty_term.type("\x7f\x17\x15\rend\r")  # editing an empty line is harmless
        async with asyncio.timeout(timeout(5)):
            assert await console.read_line() == ""
            assert await console.read_line() == "end"


@posix_only
async def test_multibyte_input_split_across_reads(pty_term: Pty) -> None:
    """UTF-8 characters typed one byte per write are decoded whole."""
    text = "héllo wörld 日本 😀"
    async with Console(stdin=pty_term.slave, stdout=pty_term.slave) as console:
        for byte in text.encode():
            pty_term.type(bytes([byte]))
        await pty_term.wait_last_line("> " + text)
        pty_term.type("\r")
        async with asyncio.timeout(timeout(5)):
            assert await console.read_line() == text


@posix_only
async def test_escape_sequences_and_control_keys_insert_nothing(pty_term: Pty) -> None:
    """Arrows, function keys, Alt-letters and stray control keys are skipped, not inserted."""
    keys = "a\x1b[Db\x1bOA\x1b[1;5Cc\x1b[15~\x1bxd\x00\x01\x02\x05\x0b\x0c\x0e\x7f\x1b\x1b[Ae\tf"
    async with Console(stdin=pty_term.slave, stdout=pty_term.slave) as console:
        pty_term.type(keys + "\r")
        async with asyncio.timeout(timeout(5)):
            assert await console.read_line() == "abce f"


@posix_only
async def test_lone_escape_key_times_out(pty_term: Pty, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a lone Esc key and a pause, the next key is read as itself."""
    monkeypatch.setattr(chatcast.cli.console, "_ESCAPE_TIMEOUT", 0.01)
    async with Console(stdin=pty_term.slave, stdout=pty_term.slave) as console:
        abandoned = asyncio.Event()
        on_timeout = console._on_escape_timeout

        def spy() -> None:
            on_timeout()
            abandoned.set()

        monkeypatch.setattr(console, "_on_escape_timeout", spy)
        pty_term.type("a\x1b")
        async with asyncio.timeout(timeout(5)):
            await abandoned.wait()
        pty_term.type("b\r")
        async with asyncio.timeout(timeout(5)):
            assert await console.read_line() == "ab"


@posix_only
async def test_write_keeps_the_partial_line_below(pty_term: Pty) -> None:
    """write() prints above the prompt and redraws the half-typed line intact."""
    async with Console(prompt="> ", stdin=pty_term.slave, stdout=pty_term.slave) as console:
        pty_term.type("hel")
        await pty_term.wait_last_line("> hel")
        before = len(pty_term.output)
        console.write("alice: hi")
        console.write("bob: two\nlines\n")
        expected = ["alice: hi", "bob: two", "lines", "> hel"]
        screen = await pty_term.wait_screen(lambda s: s[-4:] == expected)
        # The erase-print-redraw sequence, byte for byte (the pty's ONLCR doubles the CR).
        assert pty_term.output[before:].startswith(b"\r\x1b[Kalice: hi\r\r\n> hel")
        assert screen.count("> hel") == 1
        pty_term.type("lo\r")
        async with asyncio.timeout(timeout(5)):
            assert await console.read_line() == "hello"


@posix_only
async def test_write_makes_text_terminal_safe(pty_term: Pty) -> None:
    """ESC, BEL, CR, C1 and DEL in written text are shown in caret notation, never sent raw."""
    async with Console(stdin=pty_term.slave, stdout=pty_term.slave) as console:
        console.write("evil\x1b[2J\x07\rx\x9b\x7f\ttab")
        # render() fails on any control character or escape other than Console's own.
        await pty_term.wait_screen(lambda s: "evil^[[2J^G^Mx\\x9b^?    tab" in s)


@posix_only
async def test_several_lines_in_one_read_are_all_kept(pty_term: Pty) -> None:
    """Lines typed ahead (a paste) are queued, none lost; CRLF counts as one Enter."""
    async with Console(stdin=pty_term.slave, stdout=pty_term.slave) as console:
        pty_term.type("one\rtwo\r\nthree\nfour")
        await pty_term.wait_last_line("> four")
        async with asyncio.timeout(timeout(5)):
            assert [await console.read_line() for _ in range(3)] == ["one", "two", "three"]
        assert pty_term.screen()[-4:] == ["> one", "> two", "> three", "> four"]


@posix_only
async def test_ctrl_d_on_empty_line_is_eof(pty_term: Pty) -> None:
    """Ctrl-D is ignored on a non-empty line and is end of input on an empty one."""
    async with Console(stdin=pty_term.slave, stdout=pty_term.slave) as console:
        pty_term.type("ab\x04c")
        await pty_term.wait_last_line("> abc")
        pty_term.type("\x15\x04")
        async with asyncio.timeout(timeout(5)):
            assert await console.read_line() is None
            assert await console.read_line() is None
        # At end of input the terminal is handed back at once and the prompt is gone.
        assert pty_term.mode()[3] & termios.ICANON
        console.write("after")
        await pty_term.wait_screen(lambda s: s[-2:] == ["after", ""])


@posix_only
async def test_terminal_mode_set_then_restored(pty_term: Pty) -> None:
    """Inside the block: no canonical mode or echo, signals kept; after it: the old mode."""
    before = pty_term.mode()
    async with Console(stdin=pty_term.slave, stdout=pty_term.slave):
        lflag = pty_term.mode()[3]
        assert not lflag & (termios.ICANON | termios.ECHO)
        assert lflag & termios.ISIG
    assert pty_term.mode() == before


@posix_only
async def test_terminal_restored_on_cancellation(pty_term: Pty) -> None:
    """Cancelling the task inside the block (what Ctrl-C does under asyncio.run) restores it."""
    before = pty_term.mode()
    entered = asyncio.Event()

    async def session() -> None:
        async with Console(stdin=pty_term.slave, stdout=pty_term.slave) as console:
            entered.set()
            await console.read_line()

    task = asyncio.create_task(session())
    async with asyncio.timeout(timeout(5)):
        await entered.wait()
    pty_term.type("typed")
    await pty_term.wait_last_line("> typed")
    assert pty_term.mode() != before
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pty_term.mode() == before
    # The unsubmitted line stays visible; the cursor is on a fresh line.
    await pty_term.wait_screen(lambda s: s[-2:] == ["> typed", ""])


@posix_only
async def test_terminal_restored_on_exception(pty_term: Pty) -> None:
    """An exception leaving the block restores the terminal and propagates."""
    before = pty_term.mode()
    with pytest.raises(ZeroDivisionError):
        async with Console(stdin=pty_term.slave, stdout=pty_term.slave):
            1 / 0  # noqa: B018
    assert pty_term.mode() == before


@posix_only
async def test_failure_while_entering_restores_terminal(
    pty_term: Pty, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If setting up fails after the terminal was switched, it is switched back."""
    before = pty_term.mode()

    def fail(self: Console) -> None:
        raise OSError("no reading today")

    monkeypatch.setattr(Console, "_start_reading", fail)
    with pytest.raises(OSError, match="no reading today"):
        async with Console(stdin=pty_term.slave, stdout=pty_term.slave):
            pass  # pragma: no cover
    assert pty_term.mode() == before


@posix_only
async def test_hang_up_is_eof(pty_term: Pty) -> None:
    """Closing the terminal (EIO on read) ends input instead of raising."""
    async with Console(stdin=pty_term.slave, stdout=pty_term.slave) as console:
        pty_term.hang_up()
        async with asyncio.timeout(timeout(5)):
            assert await console.read_line() is None


@posix_only
async def test_long_line_scrolls_instead_of_wrapping() -> None:
    """A line wider than the terminal shows its end after '<'; Enter still returns it whole."""
    term = Pty(columns=20)
    try:
        async with Console(stdin=term.slave, stdout=term.slave) as console:
            text = "".join(str(i % 10) for i in range(30))
            term.type(text)
            screen = await term.wait_screen(lambda s: s[-1].endswith(text[-5:]))
            assert screen[-1] == "> <" + text[-16:]
            assert len(screen[-1]) == 19
            wide = "日本語のテキストです"  # 20 cells
            term.type("\x15" + wide)
            screen = await term.wait_screen(lambda s: s[-1].endswith(wide[-1]))
            assert screen[-1] == "> <" + wide[-8:]  # 16 cells
            term.type("\r")
            async with asyncio.timeout(timeout(5)):
                assert await console.read_line() == wide
    finally:
        term.close()


@posix_only
async def test_prompt_can_change(pty_term: Pty) -> None:
    """Setting prompt redraws the input line with the new (sanitised) prompt."""
    async with Console(prompt="> ", stdin=pty_term.slave, stdout=pty_term.slave) as console:
        pty_term.type("hi")
        await pty_term.wait_last_line("> hi")
        console.prompt = "bob\x1b> "
        assert console.prompt == "bob^[> "
        await pty_term.wait_last_line("bob^[> hi")


@posix_only
async def test_stdout_not_a_terminal_means_line_mode(pty_term: Pty, pipe: tuple[int, int]) -> None:
    """stdin a terminal but stdout a pipe: the terminal is left alone and lines are read."""
    r, w = pipe
    before = pty_term.mode()
    async with Console(stdin=pty_term.slave, stdout=w) as console:
        assert pty_term.mode() == before
        pty_term.type("hi there\n")
        async with asyncio.timeout(timeout(5)):
            assert await console.read_line() == "hi there"
        console.write("x")
    assert os.read(r, 100) == b"x\n"


@posix_only
async def test_dumb_terminal_means_line_mode(
    pty_term: Pty, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TERM=dumb (Emacs shell): no escape sequences and no raw mode."""
    monkeypatch.setenv("TERM", "dumb")
    before = pty_term.mode()
    async with Console(stdin=pty_term.slave, stdout=pty_term.slave) as console:
        assert pty_term.mode() == before
        console.write("plain")
        pty_term.type("typed\n")
        async with asyncio.timeout(timeout(5)):
            assert await console.read_line() == "typed"
    assert "\x1b" not in pty_term.text


# Line mode: pipes, files, objects.


async def test_pipe_lines_crlf_and_last_line_without_newline(pipe: tuple[int, int]) -> None:
    """Lines end at LF, a CR before it is dropped, a final unterminated line counts, then None."""
    r, w = pipe
    os.write(w, b"one\ntwo\r\n\nth")
    async with Console(stdin=r, stdout=io.StringIO()) as console:
        async with asyncio.timeout(timeout(5)):
            assert await console.read_line() == "one"
            assert await console.read_line() == "two"
            assert await console.read_line() == ""
            os.write(w, "ree ü".encode() + b"\xff")
            os.close(w)
        assert await read_all(console) == ["three ü\ufffd"]
        assert await console.read_line() is None


async def test_large_piped_input_pauses_and_loses_nothing(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Megabytes piped in arrive in order; reading pauses at the backlog limit and resumes."""
    r, w = pipe
    expected = [f"line {i} " + "x" * (i % 50) for i in range(60_000)]
    data = ("\n".join(expected)).encode()  # no final LF
    assert len(data) > 2 * chatcast.cli.console._HIGH_WATER

    def feed() -> None:
        with os.fdopen(os.dup(w), "wb") as f:
            f.write(data)
        os.close(w)

    async with Console(stdin=r, stdout=io.StringIO()) as console:
        paused = asyncio.Event()
        pause = console._pause_reading

        def spy() -> None:
            pause()
            paused.set()

        monkeypatch.setattr(console, "_pause_reading", spy)
        writer = asyncio.create_task(asyncio.to_thread(feed))
        async with asyncio.timeout(timeout(10)):
            await paused.wait()
        assert await read_all(console) == expected
        await writer


async def test_large_file_through_the_thread_pauses_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader thread also stops at the backlog limit and resumes as lines are read."""
    expected = [f"{i:07d}" + "y" * 40 for i in range(60_000)]
    path = tmp_path / "big.txt"
    path.write_text("\n".join(expected) + "\n", encoding="utf-8")
    with path.open("rb") as f:
        async with Console(stdin=f, stdout=io.StringIO()) as console:
            paused = asyncio.Event()
            pause = console._pause_reading

            def spy() -> None:
                pause()
                paused.set()

            monkeypatch.setattr(console, "_pause_reading", spy)
            async with asyncio.timeout(timeout(10)):
                await paused.wait()
            assert await read_all(console) == expected


async def test_regular_file_is_read_by_a_thread(tmp_path: Path) -> None:
    """A regular file (which epoll refuses) is read whole: lines, then None."""
    path = tmp_path / "input.txt"
    path.write_bytes(b"alpha\nbeta\r\ngamma")
    with path.open("rb") as f:
        async with Console(stdin=f, stdout=io.StringIO()) as console:
            assert await read_all(console) == ["alpha", "beta", "gamma"]


async def test_dev_null_is_immediate_eof(devnull: IO[bytes]) -> None:
    """/dev/null (or an empty stdin) gives None at once."""
    async with Console(stdin=devnull, stdout=io.StringIO()) as console:
        assert await read_all(console) == []


@pytest.mark.parametrize("stdin", [io.BytesIO(b"x\ny\n"), io.StringIO("x\ny")])
async def test_stdin_without_file_descriptor(stdin: IO[Any]) -> None:
    """An in-memory stream (no fileno) is read by a thread too."""
    async with Console(stdin=stdin, stdout=io.StringIO()) as console:
        assert await read_all(console) == ["x", "y"]


async def test_line_mode_write_prints_sanitised_lines(
    pipe: tuple[int, int], devnull: IO[bytes]
) -> None:
    """write() to a pipe: the text, control characters in caret notation, LF after each line."""
    r, w = pipe
    console = Console(prompt="> ", stdin=devnull, stdout=w)
    console.write("before")
    async with console:
        console.write("a\x1b[2Jb\nc\r\n")
    console.write("after")
    assert os.read(r, 1000) == b"before\na^[[2Jb\nc\nafter\n"


@pytest.mark.parametrize("kind", ["text", "binary"])
async def test_write_to_file_objects(kind: str, devnull: IO[bytes]) -> None:
    """stdout may be a text or a binary file object; non-encodable characters become '?'."""
    raw = io.BytesIO()
    text = io.TextIOWrapper(raw, encoding="ascii")
    async with Console(stdin=devnull, stdout=text if kind == "text" else raw) as console:
        console.write("café")
    text.detach()  # leave raw open to read it
    assert raw.getvalue() == (b"caf?\n" if kind == "text" else "café\n".encode())


# The reading contract.


async def test_read_line_cancelled_loses_nothing(pipe: tuple[int, int]) -> None:
    """A cancelled read_line() leaves the next line for the next call."""
    r, w = pipe
    async with Console(stdin=r, stdout=io.StringIO()) as console:
        task = asyncio.create_task(console.read_line())
        await asyncio.sleep(0)  # let it start waiting (not synchronisation: just scheduling)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        os.write(w, b"kept\n")
        async with asyncio.timeout(timeout(5)):
            assert await console.read_line() == "kept"


async def test_misuse_raises(pipe: tuple[int, int]) -> None:
    """read_line() before entering, two concurrent readers, entering twice: RuntimeError."""
    r, _ = pipe
    console = Console(stdin=r, stdout=io.StringIO())
    with pytest.raises(RuntimeError, match="async with"):
        await console.read_line()
    async with console:
        first = asyncio.create_task(console.read_line())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already being awaited"):
            await console.read_line()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
    with pytest.raises(RuntimeError, match="once"):
        async with console:
            pass


async def test_closing_wakes_a_waiting_reader(pipe: tuple[int, int]) -> None:
    """A read_line() awaited in another task returns None when the console is closed."""
    r, _ = pipe
    async with Console(stdin=r, stdout=io.StringIO()) as console:
        reader = asyncio.create_task(console.read_line())
        await asyncio.sleep(0)
    async with asyncio.timeout(timeout(5)):
        assert await reader is None
    assert await console.read_line() is None


async def test_no_stdin_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """sys.stdin is None (pythonw, some service managers): input ends at once."""
    monkeypatch.setattr(sys, "stdin", None)
    async with Console(stdout=io.StringIO()) as console:
        assert await console.read_line() is None


async def test_default_streams_under_pytest() -> None:
    """With pytest's unreadable sys.stdin, input simply ends."""
    async with Console(stdout=io.StringIO()) as console:
        assert await read_all(console) == []


# The sans-I/O parts.

KEYS = st.lists(
    st.sampled_from(
        [
            *("a", "é", "日", "😀", " ", "\r", "\n", "\r\n", "\x7f", "\x08", "\x15", "\x17"),
            *("\x04", "\x1b[A", "\x1b[1;5C", "\x1bOP", "\x1bx", "\x1b\x7f", "\x1b\x1b[B", "\x01"),
            "\t",
        ]
    ),
    max_size=40,
)


def feed_all(chunks: list[str]) -> tuple[list[str | None], str]:
    """Feed ``chunks`` to a fresh editor; return the events and the unfinished line."""
    editor = LineEditor()
    events = [event for chunk in chunks for event in editor.feed(chunk)]
    return events, editor.buffer


@given(KEYS, st.data())
def test_editor_same_result_however_input_is_split(keys: list[str], data: st.DataObject) -> None:
    """Keystrokes split at arbitrary points (escape sequences too) edit the same way."""
    text = "".join(keys)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert feed_all(chunks) == feed_all([text])


@given(KEYS)
def test_editor_never_emits_control_characters(keys: list[str]) -> None:
    """Whatever is typed, submitted and unfinished lines hold printable characters only."""
    events, buffer = feed_all(keys)
    for text in [buffer, *(e for e in events if e is not None)]:
        assert all(ch.isprintable() for ch in text), text
    assert None not in events[:-1]


def test_editor_abandoned_escape_reads_the_next_key() -> None:
    """A lone Esc followed by a timeout does not swallow the next key."""
    editor = LineEditor()
    assert editor.feed("\x1b") == []
    assert editor.in_sequence
    editor.abandon_sequence()
    assert editor.feed("x\r") == ["x"]


def test_editor_tail_fits_columns() -> None:
    """tail() never exceeds the columns, counting wide characters as two cells."""
    editor = LineEditor()
    editor.feed("ab日本e\u0301")
    assert editor.tail(10) == "ab日本e\u0301"
    assert editor.tail(4) == "<本e\u0301"
    assert editor.tail(5) == "<本e\u0301"
    assert editor.tail(6) == "<日本e\u0301"


BYTES = st.lists(st.sampled_from([b"a", b"\xc3\xa9", b"\r", b"\n", b"\r\n", b"\xff"]), max_size=30)


@given(BYTES, st.data())
def test_splitter_same_result_however_input_is_split(
    parts: list[bytes], data: st.DataObject
) -> None:
    """Bytes split at arbitrary points give the same lines as one read."""
    blob = b"".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=6)))
    chunks = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)], strict=True)]

    def split(pieces: list[bytes]) -> list[str]:
        splitter = LineSplitter("utf-8")
        lines = [line for piece in pieces for line in splitter.feed(piece)]
        last = splitter.finish()
        return lines if last is None else [*lines, last]

    lines = split(chunks)
    assert lines == split([blob])
    expected = blob.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    assert lines == [line.removesuffix(b"\r").decode("utf-8", "replace") for line in expected]


@pytest.mark.parametrize("ending", ["stopped", "loop closed"])
def test_reader_thread_delivers_nothing_late(ending: str) -> None:
    """A read that returns after stop() or after the loop closed is dropped; the thread ends."""
    loop = asyncio.new_event_loop()
    got: list[bytes] = []
    reading = threading.Event()
    release = threading.Event()

    def read() -> bytes:
        reading.set()
        release.wait(timeout(5))
        return b"late data"

    try:
        reader = ReaderThread(read, loop, got.append)
        assert reading.wait(timeout(5))
        if ending == "stopped":
            reader.stop()
        else:
            loop.close()
        release.set()
        reader.thread.join(timeout(5))
        assert not reader.thread.is_alive()
        if not loop.is_closed():
            loop.run_until_complete(asyncio.sleep(0))  # run whatever the thread scheduled
    finally:
        loop.close()
    assert got == []


def test_input_line_draws_only_what_changed() -> None:
    """Typing redraws the line; Enter leaves the line on screen and draws a fresh prompt; a
    key that changes nothing writes nothing; Ctrl-D on an empty line ends input."""
    view = InputLine("> ")
    assert view.draw(20) == ERASE_LINE + "> "
    assert view.keys("hi", 20) == Keys([], False, ERASE_LINE + "> hi")
    assert view.keys("\x1b[A", 20) == Keys([], False, "")  # an arrow: nothing to draw
    assert view.keys("\r", 20) == Keys(["hi"], False, f"{ERASE_LINE}> hi\r\n{ERASE_LINE}> ")
    assert view.keys("x\r\x04", None) == Keys(["x"], True, "")  # not on screen: no drawing


def test_input_line_prints_above_and_leaves() -> None:
    """Output goes above the line, which is redrawn unchanged; leaving keeps a typed line."""
    view = InputLine("\x1b> ")
    assert view.prompt == "^[> "  # the prompt cannot drive the terminal
    view.keys("abc", 20)
    assert view.above(["one", "two"], 20) == f"{ERASE_LINE}one\r\ntwo\r\n^[> abc"
    assert view.leave() == "\r\n"
    view.keys("\x15", 20)
    assert view.leave() == ERASE_LINE


def test_input_line_never_wraps() -> None:
    """A line wider than the terminal shows its end, the last column left free; a prompt
    wider than the terminal still leaves the typed text a few columns."""
    view = InputLine("> ")
    view.keys("abcdefghij", 10)
    assert view.draw(10) == ERASE_LINE + "> <efghij"  # 10 columns - 1 free - 2 of prompt
    view.prompt = "a very long prompt> "
    assert view.draw(10) == ERASE_LINE + "a very long prompt> <hij"


def test_line_editing_is_pure_logic() -> None:
    """chatcast.cli.lineedit does no I/O: no event loop, no terminal, no os."""
    source = Path(chatcast.cli.lineedit.__file__).read_text(encoding="utf-8")
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and node.level == 0
    }
    assert imported <= {"__future__", "collections", "dataclasses", "typing", "unicodedata"}, (
        imported
    )


@pytest.mark.parametrize(
    ("line", "begidx", "text", "expected"),
    [
        ("/msg al", 5, "al", ["albert", "Alice"]),
        ("/MSG AL", 5, "AL", ["albert", "Alice"]),
        ("/kick b", 6, "b", ["bob"]),
        ("/msg ", 5, "", ["Alice", "albert", "bob"]),
        ("/msg bob hal", 9, "hal", []),  # the text, not a name
        ("say al", 4, "al", []),  # not a command that takes a name
        ("al", 0, "al", []),
        ("/m", 0, "/m", ["/msg"]),
        ("/", 0, "/", ["/msg", "/who"]),
        ("  /msg al", 7, "al", ["albert", "Alice"]),
    ],
)
def test_tab_completion_candidates(line: str, begidx: int, text: str, expected: list[str]) -> None:
    """Names complete only as the first argument of /msg and /kick, commands only first."""
    names = ["Alice", "albert", "bob", "bob"]
    got = complete(line, begidx, text, names, ["/msg", "/who"])
    assert sorted(got) == sorted(expected)
    assert len(got) == len(set(got))
