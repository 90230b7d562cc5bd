"""`chatcast server` and `chatcast client` as processes, the client in a real terminal (tmux)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from chatcast._core.commands import CLIENT_COMMANDS, help_text
from tests.helpers import timeout
from tests.test_console_tmux import TMUX, TmuxSession, tmux_session

__all__ = ["tmux_session"]  # the fixture, re-used from the console tests


@pytest.fixture
def server_process() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`chatcast server --port 0` as a subprocess; yields it and its port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "chatcast", "server", "--port", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert " port " in banner, banner + (process.stderr.read() if process.stderr else "")
        port = int(banner.split(" port ")[1].split()[0])
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def _chatcast(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``chatcast ARGV...`` with no input to its end; its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "chatcast", *argv],
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout(20),
        check=False,
    )


class LinePeer:
    """A blocking text-mode peer (like nc) for tests that cannot run an event loop."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout(10))
        self.file = self.sock.makefile("r", encoding="utf-8", newline="\n")

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def until(self, predicate: Callable[[str], bool]) -> str:
        while True:
            line = self.file.readline()
            assert line, "connection closed before the expected line"
            if predicate(line.rstrip("\n")):
                return line.rstrip("\n")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
def test_client_in_a_real_terminal(
    server_process: tuple[subprocess.Popen[str], int],
    tmux_session: Callable[..., TmuxSession],
) -> None:
    """Messages arrive while the user types; the typed line is never garbled, then sent."""
    _, port = server_process
    tmux = tmux_session(
        [sys.executable, "-m", "chatcast", "client", "--port", str(port), "--name", "alice"]
    )
    tmux.wait_for(lambda screen: bool(screen) and screen[-1] == "alice>")
    bob = LinePeer(port)
    try:
        bob.until(lambda line: line.startswith("Selamat"))
        bob.send("/nick bob\n")
        tmux.type("hello wor")
        for n in range(5):
            bob.send(f"line {n} from bob\n")
        screen = tmux.wait_for(lambda s: "bob: line 4 from bob" in s[-2:-1])
        assert screen[-1] == "alice> hello wor"  # the typed line, intact, still last
        assert [line for line in screen if line.startswith("bob: ")] == [
            f"bob: line {n} from bob" for n in range(5)
        ]
        tmux.type("ld")
        tmux.send_keys("Enter")
        assert bob.until(lambda line: line.startswith("alice")) == "alice: hello world"
        tmux.type("/nick alicia")
        tmux.send_keys("Enter")
        tmux.wait_for(lambda s: bool(s) and s[-1] == "alicia>")
        bob.send("\x1b[31mred?\n")  # refused by the server: never reaches alice's terminal
        assert bob.until(lambda line: line.startswith("!")).startswith("! control character")
        tmux.type("/quit")
        tmux.send_keys("Enter")
        tmux.wait_for(lambda _: tmux.exited)
    finally:
        bob.close()


def test_server_announcements_and_sigterm(
    server_process: tuple[subprocess.Popen[str], int],
) -> None:
    """Lines typed on the server's terminal are announcements; SIGTERM closes gracefully."""
    process, port = server_process
    peer = LinePeer(port)
    try:
        peer.until(lambda line: line.startswith("Selamat"))
        assert process.stdin is not None
        process.stdin.write("halo semua\n")
        process.stdin.flush()
        assert peer.until(lambda line: line.startswith("[server]")) == "[server] halo semua"
        os.kill(process.pid, signal.SIGTERM)
        assert peer.until(lambda line: line.startswith("!")) == "! server shutting down"
        assert process.wait(timeout=timeout(10)) == 0
    finally:
        peer.close()


def test_operator_commands(server_process: tuple[subprocess.Popen[str], int]) -> None:
    """The operator's /help and mistakes are answered on the server's terminal, never
    announced; ``//text`` announces ``/text``; ``/quit now`` stops the server."""
    process, port = server_process
    peer = LinePeer(port)
    try:
        peer.until(lambda line: line.startswith("Selamat"))
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write("/help\n/bogus\n//slash\n")
        process.stdin.flush()
        assert peer.until(lambda line: line.startswith("[server]")) == "[server] /slash"
        shown: list[str] = []
        while not shown or not shown[-1].startswith("[server]"):
            shown.append(process.stdout.readline().rstrip("\n"))
            assert shown[-1], "the server's output ended"
            if " joined " in shown[-1]:  # the peer's join notice may come at any point
                shown.pop()
        assert shown[0] == "* commands:"
        assert any(line.startswith("*   /quit [REASON] ") for line in shown)
        assert any(line.startswith("*   /kick NAME [WHY] ") for line in shown)  # #14
        assert shown[-2:] == [
            "! unknown command /bogus (try /help)",
            "[server] /slash  (to 1 client)",
        ]
        process.stdin.write("/quit now\n")
        process.stdin.flush()
        assert peer.until(lambda line: line.startswith("!")) == "! server shutting down"
        assert process.wait(timeout=timeout(10)) == 0
    finally:
        peer.close()


def test_client_refused_exits_with_reason(
    server_process: tuple[subprocess.Popen[str], int],
) -> None:
    """`chatcast client` with a taken name exits 1 with the server's reason."""
    _, port = server_process
    holder = subprocess.Popen(
        [sys.executable, "-m", "chatcast", "client", "--port", str(port), "--name", "dup"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        holder.stdout.readline()  # connected: the welcome is printed
        result = _chatcast("client", "--port", str(port), "--name", "dup")
        assert result.returncode == 1
        assert "name 'dup' is taken" in result.stderr
    finally:
        with contextlib.suppress(OSError):
            holder.kill()
        holder.wait(timeout=10)
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()


def test_client_with_piped_input(server_process: tuple[subprocess.Popen[str], int]) -> None:
    """`chatcast client` works from a pipe too: lines are sent, EOF quits cleanly."""
    _, port = server_process
    peer = LinePeer(port)
    try:
        peer.until(lambda line: line.startswith("Selamat"))
        result = subprocess.run(
            [sys.executable, "-m", "chatcast", "client", "--port", str(port), "--name", "pipe"],
            input="one\n/bogus\n/join\n/msg pipe\n/help\ntwo\n",
            capture_output=True,
            text=True,
            timeout=timeout(20),
            check=False,
        )
        assert result.returncode == 0, result.stderr
        # A mistyped command says what was wrong, in the server's words; /help lists the
        # client's commands as the server's /help does.
        said = [line for line in result.stdout.splitlines() if line.startswith(("!", "*  "))]
        assert said == [
            "! unknown command /bogus (try /help)",
            "! /join needs an argument (try /help)",
            "! usage: /msg NAME TEXT",
            # The help, as the table gives it (moderation's commands included, #14).
            *(f"* {line}" for line in help_text(CLIENT_COMMANDS).splitlines()[1:-1]),
        ]
        assert peer.until(lambda line: line.startswith("pipe:")) == "pipe: one"
        assert peer.until(lambda line: line.startswith("pipe:")) == "pipe: two"
    finally:
        peer.close()


@pytest.mark.parametrize(
    ("argv", "env", "said"),
    [
        (["--token", ""], {}, "--token is empty; leave it out to run without a token"),
        ([], {"CHATCAST_TOKEN": ""}, "$CHATCAST_TOKEN is empty"),
        (["--burst", "5"], {}, "--burst needs --rate"),
    ],
    ids=["empty-token", "empty-token-variable", "burst-without-rate"],
)
def test_server_refuses_settings_that_mean_less_than_they_say(
    argv: list[str], env: dict[str, str], said: str
) -> None:
    """An empty token would silently mean "no authentication": an error instead."""
    result = _chatcast("server", "--port", "0", *argv, env=env)
    assert result.returncode == 1
    assert said in result.stderr


def test_client_shows_a_refusal_without_obeying_it() -> None:
    """A server's refusal reason is printed in caret notation: it cannot drive the terminal."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def refuse() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"! \x1b[31mred\x1b]0;pwned\x07\n")
                # Close as chatcast's server does (lingering): FIN, then read what the client
                # still sends, or its unread hello would turn our close into a reset.
                conn.shutdown(socket.SHUT_WR)
                conn.settimeout(timeout(10))
                while conn.recv(4096):
                    pass

        thread = threading.Thread(target=refuse)
        thread.start()
        result = _chatcast("client", "--port", str(port))
        thread.join()
    assert result.returncode == 1
    assert "\x1b" not in result.stderr
    assert "chatcast: refused: ^[[31mred^[]0;pwned^G" in result.stderr
