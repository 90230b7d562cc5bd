"""Interactive terminal line input that incoming output never garbles.

:class:`Console` is the terminal layer of the command line (``chatcast client``,
``chatcast multicast chat``, the server's operator console): one task awaits the lines the
user types while other tasks print what arrives from the network above the input line.

The mode is chosen from what stdin and stdout are:

* **Readline mode** (POSIX, stdin and stdout both terminals and :data:`sys.stdin` /
  :data:`sys.stdout`, ``TERM`` not ``dumb``, and the platform's ``readline``, GNU readline or
  libedit, usable: see :mod:`chatcast.cli.rlinput`): readline edits the line, with history
  (Up/Down), cursor keys (Left/Right/Home/End), Ctrl-A/E/K/U/W, the user's ``~/.inputrc``, and
  Tab completing :attr:`Console.names` after ``/msg`` and ``/kick`` and
  :attr:`Console.commands` at the start of a line. :meth:`Console.write` hands the lines to
  readline's thread, which clears the input line, prints them and redraws the prompt, the
  text and the cursor (within 0.1 s). ``CHATCAST_READLINE=0`` turns it off.
* **Terminal mode** (the same without readline): the terminal is switched to non-canonical
  mode without echo (``termios``) and this module does the line editing itself (no history,
  no cursor movement), so it always knows what is typed. :meth:`Console.write` erases the
  input line (``\\r\\x1b[K``), prints, then redraws the prompt and the unfinished line.
* **Line mode** (anything else: pipes, files, ``/dev/null``, CI, ``TERM=dumb``, Windows):
  lines are read as they come, LF-terminated (a CR before the LF is dropped; a last line
  without LF still counts) and :meth:`Console.write` just prints.

Reading never blocks the event loop (:mod:`chatcast.cli.reader`: ``loop.add_reader()`` where
the selector accepts the file descriptor, else a daemon thread). Text from the user is decoded
with the stdin's encoding (UTF-8 for a bare file descriptor); undecodable bytes become U+FFFD.
What the keys do and what is drawn is pure logic, in :mod:`chatcast.cli.lineedit`; this module
does the terminal's I/O: its mode, its signals, reading and writing.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import contextlib
import io
import logging
import os
import select
import signal
import sys
from collections import deque
from collections.abc import Iterable
from typing import IO, Any, Final

from ..message import sanitize
from . import rlinput
from .lineedit import ERASE_LINE, InputLine, LineSplitter, complete
from .reader import InputReader, encoding_of, fileno

if sys.platform != "win32":
    import termios

__all__ = ["Console", "log_to"]

#: Stop reading stdin while this many characters of complete lines wait for read_line() ...
_HIGH_WATER: Final = 1024 * 1024
#: ... and start again once the backlog is down to this.
_LOW_WATER: Final = _HIGH_WATER // 4
#: An escape sequence still unfinished this long after its last byte was a lone Esc key
#: (readline's keyseq-timeout default); the next key is then read as itself.
_ESCAPE_TIMEOUT: Final = 0.5

_NEW, _OPEN, _CLOSED = range(3)


class Console:
    """Read lines typed by the user while other output is printed above the input line.

    Use it as an async context manager; entering it sets the terminal up (terminal mode) and
    starts reading stdin, leaving it stops reading and restores the terminal, whatever the
    exit: normal, exception, cancellation. It is also restored at interpreter exit if the
    block was never left, and, when it is the controlling terminal, while the process is
    stopped by Ctrl-Z (retaken and redrawn on ``fg``) unless the program handles SIGTSTP.

    In readline mode the keys are readline's (see the module docstring); Ctrl-D on an empty line
    is end of input. In terminal mode the keys are: printable characters (any UTF-8) append,
    Backspace/DEL delete the last character, Ctrl-U clears the line, Ctrl-W deletes the last
    word, Alt-Backspace too, Enter submits, Ctrl-D on an empty line is end of input (elsewhere
    it is ignored). Tab types a space. Other escape sequences (arrows, function keys,
    Alt-letter) and control keys are ignored: they never insert anything. Ctrl-C, Ctrl-Z and
    Ctrl-\\ stay signals of the terminal driver, as in any program: under :func:`asyncio.run`
    Ctrl-C cancels the main task, the ``async with`` block is left (the terminal restored, the
    typed line left on screen but never returned) and ``asyncio.run`` raises
    :exc:`KeyboardInterrupt`. The input line never wraps: a line wider than the terminal scrolls
    sideways, a ``<`` marking that its start is hidden, so it can always be erased and redrawn
    (readline wraps a long line instead, and clears every row of it). Submitted lines stay on
    screen after the prompt.

    Lines are read into a queue as soon as they arrive, whether or not :meth:`read_line` is
    being awaited, so no line is lost, even when several arrive in one read; reading pauses
    while more than about 1 MiB waits. Neither mode limits the length of one line.

    Output written to the terminal by other means (``print``, logging to the same terminal)
    bypasses the redraw and can land in the input line; send it through :meth:`write`.

    On Windows the console's own line editing is used (line mode; Ctrl-Z then Enter ends
    input): output that arrives while a line is typed is printed where the cursor is, but the
    typed text is still read whole.

    Args:
        prompt: Shown before the input line in terminal mode; control characters in it are
            shown in caret notation. Not shown in line mode.
        stdin: Where to read: a file object or a file descriptor; default :data:`sys.stdin`.
            It is never closed.
        stdout: Where to write: a text or binary file object or a file descriptor; default
            :data:`sys.stdout`. It is never closed.

    Example::

        async with Console(prompt="> ") as console:
            while (line := await console.read_line()) is not None:
                console.write(f"you said {line}")
    """

    def __init__(
        self,
        prompt: str = "> ",
        *,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
    ) -> None:
        self._in: int | IO[Any] | None = sys.stdin if stdin is None else stdin
        self._out: int | IO[Any] | None = sys.stdout if stdout is None else stdout
        self._in_fd = fileno(self._in)
        self._out_fd = fileno(self._out)
        self._encoding = encoding_of(self._in)
        self._out_encoding = encoding_of(self._out)
        self._line = InputLine(prompt)
        self._terminal = (
            sys.platform != "win32"
            and self._in_fd is not None
            and self._out_fd is not None
            and os.environ.get("TERM") != "dumb"
            and os.isatty(self._in_fd)
            and os.isatty(self._out_fd)
        )
        self._state = _NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lines: deque[str] = deque()
        self._backlog = 0  # characters (plus one per line) queued in self._lines
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._reader: InputReader | None = None
        self._paused = False
        self._splitter = LineSplitter(self._encoding)
        # Terminal mode.
        self._decoder = codecs.getincrementaldecoder(self._encoding)(errors="replace")
        self._saved_mode: list[Any] | None = None
        self._editing = False  # raw mode on and the prompt on screen
        self._escape_timer: asyncio.TimerHandle | None = None
        self._signals: list[int] = []
        # Readline mode (a terminal mode): readline edits, in a thread of its own.
        self._rl: rlinput.ReadlineInput | None = None
        self._rl_mode: list[Any] | None = None  # readline's terminal mode, kept over Ctrl-Z
        self._names: tuple[str, ...] = ()
        self._commands: tuple[str, ...] = ()

    @property
    def readline(self) -> bool:
        """True while the platform's readline edits the input line (see the class doc)."""
        return self._rl is not None and self._state == _OPEN

    @property
    def names(self) -> tuple[str, ...]:
        """The names Tab completes after ``/msg`` and ``/kick`` (readline mode); settable
        with any iterable of str, from the loop's thread."""
        return self._names

    @names.setter
    def names(self, names: Iterable[str]) -> None:
        self._names = tuple(names)  # replaced whole: the input thread reads it as it is

    @property
    def commands(self) -> tuple[str, ...]:
        """The commands (``"/msg"``...) Tab completes at the start of a line; settable."""
        return self._commands

    @commands.setter
    def commands(self, commands: Iterable[str]) -> None:
        self._commands = tuple(commands)

    @property
    def prompt(self) -> str:
        """The prompt (as shown). Setting it redraws the input line at once."""
        return self._line.prompt

    @prompt.setter
    def prompt(self, prompt: str) -> None:
        self._line.prompt = prompt
        if self._rl is not None:
            self._rl.set_prompt(self._line.prompt)
        elif self._editing:
            self._emit_quietly(self._line.draw(self._columns()))

    async def __aenter__(self) -> Console:
        if self._state != _NEW:
            raise RuntimeError("a Console can be entered only once")
        self._loop = asyncio.get_running_loop()
        self._state = _OPEN
        try:
            if self._terminal and self._is_controlling_terminal() and not self._is_foreground():
                # Started in the background (`chatcast server &`): setting up or reading the
                # terminal would get the process stopped (SIGTTOU/SIGTTIN). So: no input (as
                # at end of input), plain output, which a background job may write.
                self._terminal = False
                self._eof = True
            elif not (self._terminal and self._start_readline()):
                if self._terminal:
                    self._start_terminal()
                self._start_reading()
        except BaseException:
            self._close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._close()

    async def read_line(self) -> str | None:
        """Return the next line the user entered.

        Returns:
            The line, without its terminator (``""`` for an empty line); ``None`` at end of
            input: Ctrl-D on an empty line, stdin closed or unreadable, or the console closed.
            Once ``None`` has been returned, every later call returns ``None``.

        Raises:
            RuntimeError: The console was not entered, or another task is already awaiting
                :meth:`read_line`.

        Cancelling the call loses nothing: a line is taken from the queue only when it is
        returned.
        """
        if self._state == _NEW or self._loop is None:
            raise RuntimeError("enter the Console with 'async with' before read_line()")
        if self._waiter is not None:
            raise RuntimeError("read_line() is already being awaited by another task")
        while not self._lines:
            if self._eof or self._state == _CLOSED:
                return None
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        line = self._lines.popleft()
        self._backlog -= len(line) + 1
        if self._paused and self._backlog <= _LOW_WATER:
            self._resume_reading()
        return line

    def write(self, text: str) -> None:
        """Print ``text`` as one or more lines above the input line.

        Control characters (C0, C1, DEL; ESC included) are shown in caret notation, so the
        text cannot drive the terminal; LF (and CRLF) separate lines, and one trailing
        newline is ignored. In terminal mode the input line is erased first and the prompt and
        the unfinished line are redrawn after, unchanged. Usable before and after the ``async
        with`` block too (then without the prompt). Call it from the event loop's thread.

        Args:
            text: What to print; may already be sanitised (caret notation is left as is).

        Raises:
            OSError: stdout could not be written to (a closed pipe, for example).
        """
        text = text.replace("\r\n", "\n")
        if text.endswith("\n"):
            text = text[:-1]
        lines = sanitize(text, keep_newlines=True).split("\n")
        if self._rl is not None and self._state == _OPEN:
            self._rl.write("\r\n".join(lines))
        elif self._editing:
            self._emit(self._line.above(lines, self._columns()))
        else:
            newline = "\r\n" if self._terminal else "\n"
            self._emit(newline.join(lines) + newline)

    # Reading.

    def _start_reading(self) -> None:
        assert self._loop is not None
        if self._in is None:  # sys.stdin is None under pythonw
            self._eof = True
            return
        self._reader = InputReader(self._in, self._loop, self._on_data, encoding=self._encoding)

    def _on_data(self, data: bytes) -> None:
        if self._state != _OPEN or self._eof:
            return
        if not data:
            self._on_eof()
        elif self._terminal:
            self._on_keys(self._decoder.decode(data))
        else:
            for line in self._splitter.feed(data):
                self._queue_line(line)

    def _on_eof(self) -> None:
        self._stop_reading()
        if not self._terminal:
            last = self._splitter.finish()
            if last is not None:
                self._queue_line(last)
        self._eof = True
        self._wake()
        if self._editing:
            # The unfinished line of a hung-up terminal is dropped: Enter was never pressed.
            self._emit_quietly(ERASE_LINE)
            self._restore_mode()

    def _queue_line(self, line: str) -> None:
        self._lines.append(line)
        self._backlog += len(line) + 1
        self._wake()
        if self._backlog > _HIGH_WATER and not self._paused:
            self._pause_reading()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _pause_reading(self) -> None:
        self._paused = True
        if self._reader is not None:
            self._reader.pause()

    def _resume_reading(self) -> None:
        self._paused = False
        if self._reader is not None and self._state == _OPEN and not self._eof:
            self._reader.resume()

    def _stop_reading(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None

    # Readline mode (POSIX only: a terminal mode).

    def _start_readline(self) -> bool:
        """Hand the input line to readline if it can take it; return whether it did."""
        assert self._loop is not None
        assert self._in_fd is not None
        if not rlinput.available(self._in, self._out):
            return False
        try:
            self._saved_mode = termios.tcgetattr(self._in_fd)
        except termios.error:
            return False
        atexit.register(self._restore_readline_mode)
        self._rl = rlinput.ReadlineInput(
            self._line.prompt,
            loop=self._loop,
            on_line=self._on_readline,
            on_end=self._on_eof,
            complete=self._complete,
            encoding=self._out_encoding,
        )
        self._rl.start()
        if self._is_controlling_terminal():
            self._install_signal_handlers()
        return True

    def _on_readline(self, line: str) -> None:
        if self._state == _OPEN and not self._eof:
            self._queue_line(line)

    def _complete(self, line: str, begidx: int, endidx: int, text: str) -> list[str]:
        return complete(line, begidx, text, self._names, self._commands)

    def _restore_readline_mode(self) -> None:
        assert self._in_fd is not None
        if self._saved_mode is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self._in_fd, termios.TCSANOW, self._saved_mode)

    def _stop_readline(self) -> None:
        assert self._rl is not None
        self._rl.stop()  # leaves the line as terminal mode does
        if not self._eof:
            self._restore_readline_mode()
        atexit.unregister(self._restore_readline_mode)

    # Terminal mode (POSIX only: self._terminal is never true on Windows).

    def _start_terminal(self) -> None:
        assert self._in_fd is not None
        try:
            self._saved_mode = termios.tcgetattr(self._in_fd)
        except termios.error:
            self._terminal = False
            return
        atexit.register(self._restore_mode)
        try:
            self._enter_raw_mode()
        except termios.error:
            self._terminal = False
            return
        if self._is_controlling_terminal():
            self._install_signal_handlers()
        self._emit(self._line.draw(self._columns()))

    def _enter_raw_mode(self) -> None:
        assert self._in_fd is not None
        assert self._saved_mode is not None
        mode = list(self._saved_mode)
        # CR and LF arrive as typed (Enter is CR); no kernel line editing, echo or ^V.
        mode[0] &= ~(termios.ICRNL | termios.INLCR | termios.IGNCR)
        # ISIG stays on: Ctrl-C, Ctrl-Z and Ctrl-\ remain signals, as the user expects.
        mode[3] &= ~(termios.ICANON | termios.ECHO | termios.IEXTEN)
        cc = list(mode[6])
        cc[termios.VMIN] = 1
        cc[termios.VTIME] = 0
        mode[6] = cc
        # TCSANOW, not TCSAFLUSH: keys typed ahead are kept.
        termios.tcsetattr(self._in_fd, termios.TCSANOW, mode)
        self._editing = True

    def _restore_mode(self) -> None:
        if not self._editing:
            return
        self._editing = False
        assert self._in_fd is not None
        assert self._saved_mode is not None
        try:
            termios.tcsetattr(self._in_fd, termios.TCSANOW, self._saved_mode)
        except termios.error:
            pass  # the terminal is gone: nothing to restore

    def _is_controlling_terminal(self) -> bool:
        assert self._in_fd is not None
        try:
            os.tcgetpgrp(self._in_fd)
        except OSError:  # ENOTTY: a terminal, but not ours (a pty in a test, say)
            return False
        return True

    def _is_foreground(self) -> bool:
        assert self._in_fd is not None
        try:
            return os.tcgetpgrp(self._in_fd) == os.getpgrp()
        except OSError:
            return True

    def _install_signal_handlers(self) -> None:
        # Only where the disposition is still the default: a handler the program set is
        # its business. All three concern the controlling terminal only.
        assert self._loop is not None
        handlers = [(signal.SIGTSTP, self._on_suspend), (signal.SIGCONT, self._on_continue)]
        if self._rl is None:  # readline follows the width itself (its own SIGWINCH handler)
            handlers.append((signal.SIGWINCH, self._on_resize))
        for signum, handler in handlers:
            try:
                if signal.getsignal(signum) != signal.SIG_DFL:
                    continue
                self._loop.add_signal_handler(signum, handler)
            except (ValueError, RuntimeError, NotImplementedError, OSError):
                continue  # not the main thread, or a loop without signal support
            self._signals.append(signum)

    def _remove_signal_handlers(self) -> None:
        assert self._loop is not None
        for signum in self._signals:
            try:
                self._loop.remove_signal_handler(signum)
            except (ValueError, RuntimeError):  # the loop is closed
                pass
        self._signals.clear()

    def _on_suspend(self) -> None:
        # Ctrl-Z: give the shell a sane terminal while we are stopped, then stop for real
        # with the default action, which our handler replaced.
        assert self._loop is not None
        if self._rl is not None:
            assert self._in_fd is not None
            with contextlib.suppress(termios.error):
                self._rl_mode = termios.tcgetattr(self._in_fd)
            self._emit_quietly(ERASE_LINE)
            self._restore_readline_mode()
        if self._editing:
            self._emit_quietly(ERASE_LINE)
        self._restore_mode()
        self._loop.remove_signal_handler(signal.SIGTSTP)
        try:
            os.kill(os.getpid(), signal.SIGTSTP)  # returns once we are continued
        finally:
            if self._state == _OPEN:
                self._loop.add_signal_handler(signal.SIGTSTP, self._on_suspend)
                self._on_continue()

    def _on_continue(self) -> None:
        # After any stop (SIGCONT): the shell may have reset the terminal; retake it, unless
        # we were continued in the background (tcsetattr would stop us again with SIGTTOU).
        if self._state != _OPEN or self._eof or not self._is_foreground():
            return
        if self._rl is not None:
            if self._rl_mode is not None:
                assert self._in_fd is not None
                with contextlib.suppress(termios.error):
                    termios.tcsetattr(self._in_fd, termios.TCSANOW, self._rl_mode)
            self._rl.redraw()
            return
        try:
            self._enter_raw_mode()
        except termios.error:
            return
        self._emit_quietly(self._line.draw(self._columns()))

    def _on_resize(self) -> None:
        # SIGWINCH: the visible part of a long input line depends on the width.
        if self._editing:
            self._emit_quietly(self._line.draw(self._columns()))

    def _on_keys(self, text: str) -> None:
        if self._escape_timer is not None:
            self._escape_timer.cancel()
            self._escape_timer = None
        keys = self._line.keys(text, self._columns() if self._editing else None)
        for line in keys.lines:
            self._queue_line(line)
        self._emit_quietly(keys.output)
        if keys.ended:
            self._on_eof()
        elif self._line.editor.in_sequence:
            assert self._loop is not None
            self._escape_timer = self._loop.call_later(_ESCAPE_TIMEOUT, self._on_escape_timeout)

    def _on_escape_timeout(self) -> None:
        self._escape_timer = None
        self._line.editor.abandon_sequence()

    def _columns(self) -> int:
        # Asked at every redraw, so a resized terminal is followed.
        for fd in (self._out_fd, self._in_fd):
            if fd is not None:
                try:
                    return os.get_terminal_size(fd).columns or 80
                except (OSError, ValueError):
                    continue
        return 80

    # Output and closing.

    def _emit(self, text: str) -> None:
        if not text or self._out is None:
            return
        out = self._out
        if isinstance(out, int):
            _write_all(out, text.encode(self._out_encoding, "replace"))
        elif isinstance(out, io.RawIOBase | io.BufferedIOBase) or "b" in str(
            getattr(out, "mode", "")
        ):
            out.write(text.encode(self._out_encoding, "replace"))
            out.flush()
        else:
            # Round trip so that what the stream cannot encode becomes "?", not an error.
            encoding = self._out_encoding
            out.write(text.encode(encoding, "replace").decode(encoding))
            out.flush()

    def _emit_quietly(self, text: str) -> None:
        # From reader callbacks: a terminal that cannot be written to has hung up, and the
        # next read reports that as end of input.
        try:
            self._emit(text)
        except OSError:
            pass

    def _close(self) -> None:
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._stop_reading()
        if self._escape_timer is not None:
            self._escape_timer.cancel()
            self._escape_timer = None
        if self._signals:
            self._remove_signal_handlers()
        if self._rl is not None:
            self._stop_readline()
        if self._editing:
            # Leave the cursor at the start of an empty line for whatever prints next; keep a
            # typed but unsubmitted line visible (Ctrl-C pressed, say).
            self._emit_quietly(self._line.leave())
        self._restore_mode()
        atexit.unregister(self._restore_mode)
        self._wake()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:  # someone made it non-blocking: wait until writable
            select.select([], [fd], [])
            continue
        view = view[written:]


class _ConsoleLogHandler(logging.Handler):
    """Shows log records through the console, so they never land in the typed line."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.write(f"! {sanitize(record.getMessage())}")
        except Exception:  # logging must never break the chat
            self.handleError(record)


class log_to(
    contextlib.AbstractContextManager["log_to"], contextlib.AbstractAsyncContextManager["log_to"]
):
    """Show the records of logger ``name`` (at its effective level) through ``console``
    instead of on stderr, for the length of a ``with`` or ``async with`` block. Log from
    the loop's thread."""

    def __init__(self, console: Console, name: str = "chatcast") -> None:
        self._logger = logging.getLogger(name)
        self._handler = _ConsoleLogHandler(console)
        self._propagate = True

    def __enter__(self) -> log_to:
        self._logger.addHandler(self._handler)
        self._propagate, self._logger.propagate = self._logger.propagate, False
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._logger.propagate = self._propagate
        self._logger.removeHandler(self._handler)

    async def __aenter__(self) -> log_to:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__()
