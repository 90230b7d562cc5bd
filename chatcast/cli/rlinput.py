"""The console's input line through the platform's ``readline`` (GNU readline or libedit).

With it the user gets what a shell gives: Up/Down recall earlier lines, Left/Right/Home/End
move, Ctrl-A/E/K/U/W, Alt-B/F and the rest of readline's keys (and the user's own
``~/.inputrc``) edit, and Tab completes (names after ``/msg`` and ``/kick``: see
:func:`chatcast.cli.lineedit.complete`).

How it is wired, and why:

* Python's ``readline`` module offers readline only through :func:`input`, which blocks. So a
  daemon thread calls :func:`input` in a loop and hands each line to the event loop
  (``call_soon_threadsafe``); end of input (Ctrl-D on an empty line) likewise.
* Output from the network must never garble the line being typed, and readline's state may
  be touched only by the thread inside it (``input()`` runs readline without the GIL, so a
  call from the loop's thread could race a keystroke). So :meth:`ReadlineInput.write` queues
  the lines, and Python's ``PyOS_InputHook``, which readline's input loop calls in *its*
  thread after every key and every 0.1 s while waiting, prints them: readline clears its
  line (``rl_clear_visible_line``, which knows how many rows a long line took), the lines
  are written, and readline redraws the prompt, the text and the cursor where they were
  (``rl_forced_update_display``). Output thus waits at most 0.1 s.
* Those three readline functions are not in Python's ``readline`` module; they are looked up
  with :mod:`ctypes` in the library the module is linked to. Where that fails (a static
  build, an old libedit), :func:`available` says so and the console keeps its own editor.

One :class:`ReadlineInput` runs at a time in a process: ``input()`` holds a process-wide lock
until its line ends, and a stopped instance's thread stays blocked in it until the next key
(nothing portable interrupts it), so :func:`available` is false until that thread is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, Final

__all__ = ["ReadlineInput", "available"]

#: The environment variable that turns readline off (``CHATCAST_READLINE=0``): the console
#: then uses its own editor.
ENV: Final = "CHATCAST_READLINE"
_ERASE_LINE: Final = "\r\x1b[K"
# int (*PyOS_InputHook)(void)
_HOOK_TYPE: Final = ctypes.CFUNCTYPE(ctypes.c_int)


class _Library:
    """The readline functions Python's module does not expose, and the input hook."""

    def __init__(self, module: Any) -> None:
        lib = ctypes.CDLL(module.__file__)
        self.forced_update_display = lib.rl_forced_update_display
        self.set_prompt = lib.rl_set_prompt
        self.set_prompt.argtypes = [ctypes.c_char_p]
        # readline 7+; without it the line is erased by hand (one row only).
        self.clear_visible_line = getattr(lib, "rl_clear_visible_line", None)
        # Gives the terminal back as readline found it, bracketed paste off included (GNU
        # readline 8.1+ turns it on while it reads); absent from some libedit versions.
        self.deprep_terminal = getattr(lib, "rl_deprep_terminal", None)
        self.redisplay = lib.rl_redisplay
        self.point = ctypes.c_int.in_dll(lib, "rl_point")
        self.end = ctypes.c_int.in_dll(lib, "rl_end")
        self.hook = ctypes.c_void_p.in_dll(ctypes.pythonapi, "PyOS_InputHook")
        self.module = module


_library: _Library | None = None
_running: threading.Thread | None = None  # the input thread of the last ReadlineInput


def _load() -> _Library | None:
    global _library
    if _library is None:
        try:
            import readline

            _library = _Library(readline)
        except (ImportError, OSError, AttributeError, ValueError, TypeError):
            return None
    return _library


def available(stdin: object, stdout: object) -> bool:
    """Whether a :class:`ReadlineInput` can serve these streams now.

    True when they are :data:`sys.stdin` and :data:`sys.stdout` (``input()`` reads and
    writes only those) on file descriptors 0 and 1, ``readline`` and the functions above
    load, no other instance's thread is still in ``input()``, nothing else holds
    ``PyOS_InputHook`` (a GUI toolkit), and ``CHATCAST_READLINE`` is not ``0``.
    """
    if os.environ.get(ENV, "1") == "0" or sys.platform == "win32":
        return False
    if (stdin, stdout) != (sys.stdin, sys.stdout):
        return False
    try:
        if (sys.stdin.fileno(), sys.stdout.fileno()) != (0, 1):
            return False
    except (AttributeError, OSError, ValueError):  # closed, or replaced by a fake
        return False
    if _running is not None and _running.is_alive():
        return False
    library = _load()
    return library is not None and not library.hook.value


class ReadlineInput:
    """Typed lines through readline in a thread; output printed around the line.

    Args:
        prompt: The prompt (already made safe to print).
        loop: The loop ``on_line`` and ``on_end`` are called on.
        on_line: Called with each line entered.
        on_end: Called once at end of input (Ctrl-D on an empty line, stdin closed).
        complete: Tab completion: ``complete(line, begidx, endidx, text)`` returns the
            candidates for ``text``, the word from ``begidx`` to ``endidx`` of ``line``.
            Called in the input thread.
        encoding: The terminal's encoding, for output.
    """

    def __init__(
        self,
        prompt: str,
        *,
        loop: asyncio.AbstractEventLoop,
        on_line: Callable[[str], None],
        on_end: Callable[[], None],
        complete: Callable[[str, int, int, str], list[str]] | None,
        encoding: str,
    ) -> None:
        library = _load()
        assert library is not None, "check available() first"
        self._lib = library
        self._prompt = prompt
        self._loop = loop
        self._on_line = on_line
        self._on_end = on_end
        self._complete = complete
        self._encoding = encoding
        self._lock = threading.Lock()
        self._pending: list[str] = []  # output for the hook to print
        self._redraw = False  # the hook must redraw (prompt changed, terminal retaken)
        self._in_input = False  # the thread is inside input(): only the hook may print
        self._stopped = False
        self._left = threading.Event()  # the line was left, for good
        self._matches: list[str] = []
        self._hook = _HOOK_TYPE(self._input_hook)  # referenced: ctypes must not free it
        self._thread = threading.Thread(target=self._run, name="chatcast-readline", daemon=True)

    def start(self) -> None:
        """Install the hook and the completer, and start reading."""
        global _running
        readline = self._lib.module
        self._lib.hook.value = ctypes.cast(self._hook, ctypes.c_void_p).value
        readline.set_completer(self._completer)
        readline.set_completer_delims(" \t\n")
        if "libedit" in (readline.__doc__ or ""):
            readline.parse_and_bind("bind ^I rl_complete")
        else:
            readline.parse_and_bind("tab: complete")
        _running = self._thread
        self._thread.start()

    def write(self, text: str) -> None:
        """Print ``text`` (lines joined by CRLF, safe to print) above the input line."""
        with self._lock:
            if self._stopped:
                return
            if self._in_input:
                self._pending.append(text)
                return
            # Between two lines nothing is drawn: print now, in order with what follows.
            self._emit(_ERASE_LINE + text + "\r\n")

    def set_prompt(self, prompt: str) -> None:
        """Show ``prompt`` from now on (the line being typed is redrawn after it)."""
        with self._lock:
            self._prompt = prompt
            self._redraw = True

    def redraw(self) -> None:
        """Draw the prompt and the line again (the terminal was given back to us)."""
        with self._lock:
            self._redraw = True

    def stop(self) -> None:
        """Stop: no more lines, nothing more printed; the hook and completer are removed.

        The input line is left as the console's own editor leaves it: the cursor at the start
        of an empty line, a typed but unsubmitted line left visible. That is done by the hook,
        in readline's thread, so this waits for it (at most 0.5 s; it runs every 0.1 s).
        The thread stays in ``input()`` until the next key (then drops it) or the end of the
        process; the caller restores the terminal mode.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._pending.clear()
            waiting = self._in_input and self._thread.is_alive()
        if waiting:
            self._left.wait(0.5)
        if self._lib.hook.value == ctypes.cast(self._hook, ctypes.c_void_p).value:
            self._lib.hook.value = None
        with contextlib.suppress(AttributeError):
            self._lib.module.set_completer(None)

    # In the input thread.

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopped:
                    return
                self._in_input = True
                prompt = self._prompt
            try:
                line: str | None = input(prompt)
            except (EOFError, OSError, ValueError, RuntimeError):
                line = None  # end of input, a closed terminal
            except KeyboardInterrupt:  # never here in practice: signals go to the main thread
                continue
            with self._lock:
                self._in_input = False
                pending, self._pending = self._pending, []
                stopped = self._stopped
                for text in pending:
                    self._emit(_ERASE_LINE + text + "\r\n")
            if stopped:
                return
            try:
                if line is None:
                    self._loop.call_soon_threadsafe(self._on_end)
                    return
                self._loop.call_soon_threadsafe(self._on_line, line)
            except RuntimeError:  # the loop is closed
                return

    def _input_hook(self) -> int:
        # Called by readline's input loop, in its thread, between keys: the one place where
        # the displayed line may be changed from outside.
        try:
            with self._lock:
                if self._stopped:
                    if not self._left.is_set():
                        self._leave()
                        if self._lib.deprep_terminal is not None:
                            self._lib.deprep_terminal()
                        self._left.set()
                    return 0
                if not (self._pending or self._redraw):
                    return 0
                pending, self._pending = self._pending, []
                redraw, self._redraw = self._redraw, False
                prompt = self._prompt
            if redraw:
                self._lib.set_prompt(prompt.encode(self._encoding, "replace"))
            if pending:
                if self._lib.clear_visible_line is not None:
                    self._lib.clear_visible_line()
                    self._emit("\r" + "\r\n".join(pending) + "\r\n")
                else:
                    self._emit(_ERASE_LINE + "\r\n".join(pending) + "\r\n")
            self._lib.forced_update_display()
        except Exception:  # an exception must not cross into C
            pass
        return 0

    def _leave(self) -> None:
        lib = self._lib
        if lib.module.get_line_buffer():
            lib.point.value = lib.end.value  # the cursor after the text, then a new line
            lib.redisplay()
            self._emit("\r\n")
        elif lib.clear_visible_line is not None:
            lib.clear_visible_line()
        else:
            self._emit(_ERASE_LINE)

    def _completer(self, text: str, state: int) -> str | None:
        # readline asks for candidate 0, 1, 2... until None; compute them once, at 0. Each
        # ends in a space, as a shell completes a word: Python's readline module turns off
        # readline's own appending.
        if self._complete is None:
            return None
        if state == 0:
            readline = self._lib.module
            try:
                self._matches = [
                    match + " "
                    for match in self._complete(
                        readline.get_line_buffer(),
                        readline.get_begidx(),
                        readline.get_endidx(),
                        text,
                    )
                ]
            except Exception:  # it would be printed mid-line
                self._matches = []
        return self._matches[state] if state < len(self._matches) else None

    def _emit(self, text: str) -> None:
        data = text.encode(self._encoding, "replace")
        with contextlib.suppress(OSError):  # a terminal that hung up: input ends soon
            while data:
                data = data[os.write(1, data) :]
