"""Console in a real terminal emulator: tmux runs the program, the test types and looks.

:class:`TmuxSession` is a small harness meant for reuse (``python -m chatcast client`` in a
real terminal, say): it runs one command in a detached tmux session on a private tmux server
(``tmux -L <unique socket>``), types with ``send-keys`` and reads the screen with
``capture-pane``, polling against a deadline instead of sleeping. Tests skip when tmux (or,
for job control, bash) is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.helpers import timeout

TMUX = shutil.which("tmux")
BASH = shutil.which("bash")

pytestmark = [
    pytest.mark.skipif(TMUX is None, reason="tmux is not installed"),
    pytest.mark.skipif(sys.platform == "win32", reason="tmux needs a POSIX system"),
]

#: A screen: the pane's lines, top to bottom, trailing blanks removed.
Screen = list[str]


class TmuxSession:
    """One command running in a detached tmux session, on a tmux server of its own.

    Args:
        command: The program and its arguments, run directly (no shell) in the only pane.
            With a single element, tmux runs it with ``sh -c``.
        columns: Width of the pane.
        rows: Height of the pane.
        env: Extra environment variables for the command (and the tmux server).
        cwd: Working directory of the command.

    The pane stays on screen after the command exits (``remain-on-exit``), so its last output
    can still be captured; :attr:`exited` tells whether it has. :meth:`close` (or leaving the
    ``with`` block) kills this server only, with everything running in it.

    Example::

        with TmuxSession([sys.executable, "-m", "chatcast", "client", ...]) as tmux:
            tmux.wait_for("> ")
            tmux.type("hello")
            tmux.send_keys("Enter")
            tmux.wait_for(lambda screen: "alice: hello" in screen)
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        columns: int = 80,
        rows: int = 24,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        if TMUX is None:
            raise RuntimeError("tmux is not installed")
        self.socket = f"chatcast-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        environment = dict(os.environ)
        environment.pop("TMUX", None)  # we may be running inside tmux ourselves
        environment.setdefault("TERM", "xterm-256color")  # tmux refuses an unknown TERM
        environment.update(env or {})
        self._env = environment
        # One tmux invocation: the options are set before the command starts, so a command
        # that exits at once still leaves its pane to capture.
        self._tmux(
            *("-f", os.devnull, "start-server", ";"),
            *("set-option", "-g", "remain-on-exit", "on", ";"),
            *("set-option", "-g", "status", "off", ";"),
            *("new-session", "-d", "-s", "main", "-x", str(columns), "-y", str(rows)),
            *(["-c", str(cwd)] if cwd is not None else []),
            *command,
        )

    def _tmux(self, *args: str) -> str:
        assert TMUX is not None
        done = subprocess.run(
            [TMUX, "-L", self.socket, *args],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=timeout(10),
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def type(self, text: str) -> None:
        """Type ``text`` literally, as if pasted key by key (no key names interpreted)."""
        self._tmux("send-keys", "-t", "main", "-l", text)

    def send_keys(self, *keys: str) -> None:
        """Press keys by tmux name: ``"Enter"``, ``"C-c"``, ``"C-z"``, ``"BSpace"``, ``"Up"``."""
        self._tmux("send-keys", "-t", "main", *keys)

    def capture(self) -> Screen:
        """The visible pane now: one string per row, trailing spaces and empty rows removed."""
        lines = [
            line.rstrip() for line in self._tmux("capture-pane", "-p", "-t", "main").split("\n")
        ]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    def wait_for(self, expected: str | Callable[[Screen], bool], seconds: float = 5.0) -> Screen:
        """Poll the screen until it shows ``expected``; return that screen.

        Args:
            expected: Text that must appear somewhere on the screen, or a predicate of the
                screen.
            seconds: The deadline (scaled by ``CHATCAST_TIMEOUT_SCALE``).

        Raises:
            AssertionError: The deadline passed; the message shows the last screen.
        """
        if isinstance(expected, str):
            text = expected
            expected = lambda screen: text in "\n".join(screen)  # noqa: E731
        deadline = time.monotonic() + timeout(seconds)
        while True:
            screen = self.capture()
            if expected(screen):
                return screen
            if time.monotonic() > deadline:
                shown = "\n".join(screen)
                raise AssertionError(f"screen never showed what was expected:\n{shown}")
            time.sleep(0.02)  # polling interval, not synchronisation

    @property
    def exited(self) -> bool:
        """True once the command has exited."""
        return self._tmux("display-message", "-p", "-t", "main", "#{pane_dead}").strip() == "1"

    def close(self) -> None:
        """Kill this tmux server (and the command, if still running); remove its socket."""
        try:
            self._tmux("kill-server")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # already gone
        socket_dir = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
        (socket_dir / self.socket).unlink(missing_ok=True)

    def __enter__(self) -> TmuxSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.fixture
def tmux_session() -> Iterator[Callable[..., TmuxSession]]:
    """Factory: ``tmux = tmux_session(command, **options)``; every session closed after."""
    sessions: list[TmuxSession] = []

    def start(command: Sequence[str], **options: object) -> TmuxSession:
        session = TmuxSession(command, **options)  # type: ignore[arg-type]
        sessions.append(session)
        return session

    yield start
    for session in sessions:
        session.close()


#: The program under test: a Console whose background task prints "incoming N" every
#: INTERVAL seconds (none if 0) while the main task waits for one typed line, which it then
#: writes, as repr(), to RESULT. Exits 130 on Ctrl-C, as the chatcast CLI does.
PROGRAM = """\
import asyncio, sys
from chatcast.cli.console import Console

async def main(result, interval):
    async with Console(prompt="> ") as console:
        async def incoming():
            n = 0
            while True:
                n += 1
                console.write(f"incoming {n}")
                await asyncio.sleep(interval)
        task = asyncio.create_task(incoming()) if interval else None
        line = await console.read_line()
        if task is not None:
            task.cancel()
    with open(result, "w", encoding="utf-8") as f:
        f.write(repr(line))
    print(f"GOT {line!r}")

try:
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
except KeyboardInterrupt:
    print("INTERRUPTED")
    raise SystemExit(130)
"""

INCOMING = re.compile(r"incoming (\d+)")


@pytest.fixture
def program(tmp_path: Path) -> tuple[Path, Path]:
    """The program's path and the file it writes the line it read to."""
    path = tmp_path / "console_program.py"
    path.write_text(PROGRAM, encoding="utf-8")
    return path, tmp_path / "result.txt"


def wait_result(result: Path, seconds: float = 5.0) -> str:
    """Poll until the program has written its result file; return its content."""
    deadline = time.monotonic() + timeout(seconds)
    while not result.exists() or not result.read_text(encoding="utf-8"):
        assert time.monotonic() < deadline, "the program never wrote its result"
        time.sleep(0.02)
    return result.read_text(encoding="utf-8")


def last_counter(screen: Screen) -> int:
    """The highest N of the "incoming N" lines on the screen (0 if none)."""
    numbers = [int(m.group(1)) for line in screen if (m := INCOMING.fullmatch(line))]
    return max(numbers, default=0)


def intact(screen: Screen, typed: str) -> bool:
    """The input line is last and whole, and every line above is one unbroken incoming line."""
    if not screen or screen[-1] != f"> {typed}".rstrip():
        return False
    numbers = []
    for line in screen[:-1]:
        match = INCOMING.fullmatch(line)
        if match is None:
            return False
        numbers.append(int(match.group(1)))
    return numbers == list(range(numbers[0], numbers[0] + len(numbers))) if numbers else True


@pytest.mark.parametrize("readline", ["1", "0"], ids=["readline", "own-editor"])
def test_incoming_lines_never_break_the_typed_line(
    tmux_session: Callable[..., TmuxSession], program: tuple[Path, Path], readline: str
) -> None:
    """Lines printed every few ms stay above the prompt; the half-typed line stays whole
    (with readline, and with the console's own editor)."""
    path, result = program
    tmux = tmux_session(
        [sys.executable, str(path), str(result), "0.005"],
        cwd=Path.cwd(),
        env={"CHATCAST_READLINE": readline},
    )
    tmux.wait_for(lambda screen: last_counter(screen) >= 5)
    typed = ""
    for ch in "héllo wor":
        before = last_counter(tmux.capture())
        tmux.type(ch)
        typed += ch
        # Several incoming lines arrive after each key, and the line being typed survives.
        tmux.wait_for(lambda s: intact(s, typed) and last_counter(s) >= before + 3)  # noqa: B023
    screen = tmux.wait_for(lambda s: intact(s, typed) and len(s) == 24)  # the pane is full
    assert screen[-1] == "> héllo wor"
    tmux.type("ld")
    tmux.send_keys("Enter")
    assert wait_result(result) == repr("héllo world")
    tmux.wait_for("GOT 'héllo world'")


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_job_control_and_ctrl_c_hand_the_terminal_back(
    tmux_session: Callable[..., TmuxSession], program: tuple[Path, Path]
) -> None:
    """Ctrl-Z gives the shell a sane terminal, fg resumes editing, Ctrl-C exits restored."""
    path, result = program
    tmux = tmux_session(
        [str(BASH), "--norc", "--noprofile", "-i"],
        env={"PS1": "$ ", "HISTFILE": os.devnull},
        cwd=Path.cwd(),
    )
    # Prints the terminal's "icanon" and "echo" flags, "-" in front of those that are off.
    show_mode = "stty -a | tr -s ' ;' '\\n\\n' | grep -E '^-?(icanon|echo)$' | paste -sd' '"
    tmux.wait_for(lambda s: s[-1:] == ["$"])
    tmux.type(f"{sys.executable} {path} {result} 0")
    tmux.send_keys("Enter")
    tmux.wait_for(lambda s: s[-1:] == [">"])
    tmux.type("abc")
    tmux.wait_for(lambda s: s[-1:] == ["> abc"])
    tmux.send_keys("C-z")
    tmux.wait_for("Stopped")
    tmux.type(show_mode)
    tmux.send_keys("Enter")
    tmux.wait_for(lambda s: s[-2:] == ["icanon echo", "$"])
    tmux.type("fg")
    tmux.send_keys("Enter")
    tmux.wait_for(lambda s: s[-1:] == ["> abc"])  # the unfinished line is redrawn
    tmux.type("def")
    tmux.send_keys("Enter")
    assert wait_result(result) == repr("abcdef")
    tmux.wait_for(lambda s: s[-2:] == ["GOT 'abcdef'", "$"])

    result.unlink()
    tmux.type(f"{sys.executable} {path} {result} 0; {show_mode}")
    tmux.send_keys("Enter")
    tmux.wait_for(lambda s: s[-1:] == [">"])
    tmux.type("xyz")
    tmux.wait_for(lambda s: s[-1:] == ["> xyz"])
    tmux.send_keys("C-c")
    # The typed line stays visible, the program exits by itself (status 130, not killed),
    # and the terminal it leaves behind is in canonical mode with echo.
    tmux.wait_for(lambda s: s[-4:] == ["> xyz", "INTERRUPTED", "icanon echo", "$"])
    assert not result.exists()


# -- readline: history, cursor keys, editing keys, Tab ----------------------------------------

#: Reads lines until end of input, writing "GOT <repr>" for each (and appending it to RESULT),
#: with "incoming N" printed every INTERVAL seconds meanwhile (none if 0). Tab completes the
#: names alice, albert and bob after /msg. Prints "READLINE True/False" first.
EDITING_PROGRAM = """\
import asyncio, sys
from chatcast.cli.console import Console

async def main(result, interval):
    async with Console(prompt="> ") as console:
        console.names = ["alice", "albert", "bob"]
        console.commands = ["/msg", "/who", "/quit"]
        console.write(f"READLINE {console.readline}")
        async def incoming():
            n = 0
            while True:
                n += 1
                console.write(f"incoming {n}")
                await asyncio.sleep(interval)
        task = asyncio.create_task(incoming()) if interval else None
        while (line := await console.read_line()) is not None:
            with open(result, "a", encoding="utf-8") as f:
                f.write(repr(line) + "\\n")
            console.write(f"GOT {line!r}")
        if task is not None:
            task.cancel()

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


@pytest.fixture
def editing(tmp_path: Path) -> tuple[Path, Path]:
    """The editing program's path and the file it appends the lines it read to."""
    path = tmp_path / "editing_program.py"
    path.write_text(EDITING_PROGRAM, encoding="utf-8")
    return path, tmp_path / "lines.txt"


def lines_read(result: Path, count: int, seconds: float = 5.0) -> list[str]:
    """Poll until the program has read ``count`` lines; return them (as repr()s)."""
    deadline = time.monotonic() + timeout(seconds)
    while True:
        lines = result.read_text(encoding="utf-8").splitlines() if result.exists() else []
        if len(lines) >= count:
            return lines
        assert time.monotonic() < deadline, f"the program read only {lines}"
        time.sleep(0.02)


def enter(tmux: TmuxSession, result: Path, expected: str, count: int) -> None:
    """Press Enter and check that the program read ``expected`` as its ``count``-th line."""
    tmux.send_keys("Enter")
    assert lines_read(result, count)[count - 1] == repr(expected)


def test_readline_history_cursor_and_editing_keys(
    tmux_session: Callable[..., TmuxSession], editing: tuple[Path, Path]
) -> None:
    """Up/Down recall lines, Left/Right/Home/End move, Ctrl-A/E/K/U/W edit (readline)."""
    path, result = editing
    tmux = tmux_session([sys.executable, str(path), str(result), "0"], cwd=Path.cwd())
    tmux.wait_for("READLINE True")
    tmux.type("first")
    enter(tmux, result, "first", 1)
    tmux.type("second")
    enter(tmux, result, "second", 2)
    tmux.send_keys("Up", "Up")
    tmux.wait_for(lambda s: s[-1:] == ["> first"])
    tmux.send_keys("Down")
    tmux.wait_for(lambda s: s[-1:] == ["> second"])
    enter(tmux, result, "second", 3)
    tmux.type("world")
    tmux.send_keys("Home")
    tmux.type("hello ")
    tmux.send_keys("End")
    tmux.type("!")
    tmux.send_keys("Left", "Left")
    tmux.type("_")
    tmux.send_keys("Right")
    tmux.type("+")
    enter(tmux, result, "hello worl_d+!", 4)
    tmux.type("one two three")
    tmux.send_keys("C-w")
    tmux.type("3")
    tmux.send_keys("C-a")
    tmux.type(">")
    tmux.send_keys("C-e")
    tmux.type("<")
    enter(tmux, result, ">one two 3<", 5)
    tmux.type("keep this, drop that")
    for _ in range(9):
        tmux.send_keys("Left")
    tmux.send_keys("C-k")
    enter(tmux, result, "keep this, ", 6)
    tmux.type("all gone")
    tmux.send_keys("C-u")
    tmux.type("new")
    enter(tmux, result, "new", 7)


def test_readline_keeps_the_line_whole_under_incoming_lines(
    tmux_session: Callable[..., TmuxSession], editing: tuple[Path, Path]
) -> None:
    """Lines printed every few ms never break the line being edited, cursor mid-line."""
    path, result = editing
    tmux = tmux_session([sys.executable, str(path), str(result), "0.01"], cwd=Path.cwd())
    tmux.wait_for(lambda screen: last_counter(screen) >= 5)
    tmux.type("halo dunia")
    tmux.send_keys("Left", "Left", "Left", "Left", "Left")
    for ch in "XYZ":
        before = last_counter(tmux.capture())
        tmux.type(ch)
        tmux.wait_for(
            lambda s: (
                s[-1:] == [f"> halo {'XYZ'[: 'XYZ'.index(ch) + 1]}dunia"]  # noqa: B023
                and last_counter(s) >= before + 3  # noqa: B023
                and all(INCOMING.fullmatch(line) for line in s[:-1])
            )
        )
    enter(tmux, result, "halo XYZdunia", 1)


def test_tab_completes_names_after_msg(
    tmux_session: Callable[..., TmuxSession], editing: tuple[Path, Path]
) -> None:
    """Tab completes a name after /msg (one match: whole; several: the common prefix) and a
    command at the start of the line."""
    path, result = editing
    tmux = tmux_session([sys.executable, str(path), str(result), "0"], cwd=Path.cwd())
    tmux.wait_for("READLINE True")
    tmux.type("/m")
    tmux.send_keys("Tab")
    tmux.wait_for(lambda s: s[-1:] == ["> /msg"])  # and a space
    tmux.type("b")
    tmux.send_keys("Tab")
    tmux.wait_for(lambda s: s[-1:] == ["> /msg bob"])  # and a space
    tmux.type("hi")
    enter(tmux, result, "/msg bob hi", 1)
    tmux.type("/msg al")
    tmux.send_keys("Tab", "Tab")  # two candidates: the second Tab lists them
    tmux.wait_for(lambda s: any("albert" in line and "alice" in line for line in s))
    tmux.type("i")
    tmux.send_keys("Tab")
    tmux.type("halo")
    enter(tmux, result, "/msg alice halo", 2)
    tmux.type("say al")
    tmux.send_keys("Tab")  # not after /msg: nothing to complete
    tmux.type("!")
    enter(tmux, result, "say al!", 3)


def test_without_readline_the_own_editor_is_used(
    tmux_session: Callable[..., TmuxSession], editing: tuple[Path, Path]
) -> None:
    """CHATCAST_READLINE=0 falls back to the built-in editor: arrows insert nothing."""
    path, result = editing
    tmux = tmux_session(
        [sys.executable, str(path), str(result), "0"],
        cwd=Path.cwd(),
        env={"CHATCAST_READLINE": "0"},
    )
    tmux.wait_for("READLINE False")
    tmux.type("abc")
    tmux.send_keys("Up", "Left")
    tmux.type("d")
    enter(tmux, result, "abcd", 1)


def test_client_completes_names_it_knows(tmux_session: Callable[..., TmuxSession]) -> None:
    """In ``chatcast client``, Tab after /msg completes the names of the members it has seen
    (listed at start, joined since), and the private message reaches that member."""
    server = subprocess.Popen(
        [sys.executable, "-m", "chatcast", "server", "--port", "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    peers: list[socket.socket] = []
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split(" port ")[1].split()[0])

        def member(name: str) -> socket.socket:
            peer = socket.create_connection(("127.0.0.1", port), timeout=timeout(10))
            peers.append(peer)
            peer.sendall(f"/nick {name}\n".encode())
            return peer

        member("bobby")
        tmux = tmux_session(
            [sys.executable, "-m", "chatcast", "client", "--port", str(port), "--name", "alice"]
        )
        tmux.wait_for(lambda s: s[-1:] == ["alice>"])
        carol = member("carol")
        tmux.wait_for("* carol joined")
        tmux.type("/msg b")
        tmux.send_keys("Tab")
        tmux.wait_for(lambda s: s[-1:] == ["alice> /msg bobby"])  # listed by /who at start
        tmux.send_keys("C-u")
        tmux.type("/msg c")
        tmux.send_keys("Tab")
        tmux.type("psst")
        tmux.send_keys("Enter")
        reader = carol.makefile("r", encoding="utf-8")
        while "psst" not in (line := reader.readline()):
            assert line, "carol's connection closed"
        assert line.rstrip("\n") == "[private] alice: psst"
        reader.close()
    finally:
        for peer in peers:
            peer.close()
        server.kill()
        server.wait(timeout=10)
        for stream in (server.stdin, server.stdout):
            if stream is not None:
                stream.close()
