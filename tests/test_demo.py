"""`chatcast demo`, the README's main command, run as a user would."""

from __future__ import annotations

import socket
import subprocess
import sys

from tests.helpers import timeout


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_demo_runs_the_whole_lab() -> None:
    """The demo exits 0 and its transcript shows every delivery of both labs."""
    result = subprocess.run(
        [sys.executable, "-m", "chatcast", "demo", "--port", str(_free_udp_port())],
        capture_output=True,
        text=True,
        timeout=timeout(60),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "multicast: both receivers got every message, in order" in out
    assert "receiver2 <- sender: selesai" in out
    assert "client2 <- client1: hi" in out  # the lab-style line sent without a newline
    assert "client4 <- [server] halo" in out
    assert "broadcast: 4 messages in, 16 delivered, 0 errors" in out
    assert out.rstrip().endswith("demo: every message arrived")


def test_help_for_every_command() -> None:
    """Every command answers --help."""
    for argv in (
        [],
        ["demo"],
        ["server"],
        ["client"],
        ["multicast"],
        ["multicast", "chat"],
        ["multicast", "send"],
        ["multicast", "receive"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "chatcast", *argv, "--help"],
            capture_output=True,
            text=True,
            timeout=timeout(30),
            check=False,
        )
        assert result.returncode == 0, (argv, result.stderr)
        assert "usage: chatcast" in result.stdout
