"""Tests for ``chatcast multicast chat|send|receive``, run as real subprocesses.

Every command here is given ``--interface 127.0.0.1`` and TTL 0 or 1, so nothing leaves the
host; each test has its own group in 239.255.0.0/16 and a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import sys
from collections.abc import AsyncIterator
from typing import Protocol

import pytest

from chatcast.cli import main
from chatcast.multicast import MulticastChannel
from tests.helpers import timeout

Process = asyncio.subprocess.Process


def free_port() -> int:
    """A UDP port nobody on this host has bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))
        port: int = probe.getsockname()[1]
        return port


class Run(Protocol):
    """``await run(action, *args, stdin=...)``: start ``chatcast multicast ACTION``."""

    async def __call__(self, action: str, *args: str, stdin: int | None = ...) -> Process: ...


@pytest.fixture
def where() -> list[str]:
    """Options naming this test's group and port, on interface 127.0.0.1."""
    group = f"239.255.{random.randrange(256)}.{random.randrange(1, 255)}"
    return ["--group", group, "--port", str(free_port()), "--interface", "127.0.0.1"]


@pytest.fixture
async def run() -> AsyncIterator[Run]:
    """Start chatcast subprocesses; any still running at teardown is killed and reaped."""
    processes: list[Process] = []

    async def start(
        action: str, *args: str, stdin: int | None = asyncio.subprocess.DEVNULL
    ) -> Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chatcast",
            "multicast",
            action,
            *args,
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.returncode is None:
            process.kill()
        if process.stdin is not None:
            process.stdin.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout()):
                await process.communicate()


@pytest.fixture
async def channel(where: list[str]) -> AsyncIterator[MulticastChannel]:
    """A channel on the test's group, named "tester", echo off."""
    group, port = where[1], int(where[3])
    async with MulticastChannel(group, port, interface="127.0.0.1", ttl=0, name="tester") as opened:
        yield opened


async def line_of(stream: asyncio.StreamReader | None, seconds: float = 10.0) -> str:
    """The next line of ``stream``, without its line ending."""
    assert stream is not None
    async with asyncio.timeout(timeout(seconds)):
        line = await stream.readline()
    assert line, "the process closed its output"
    return line.decode().rstrip("\n")


async def finish(process: Process, seconds: float = 10.0) -> tuple[int, str, str]:
    """Wait for the process to exit; return its status and the rest of stdout and stderr."""
    async with asyncio.timeout(timeout(seconds)):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def started_receiver(run: Run, *args: str) -> Process:
    """``receive`` with ``args``, once it says (on stderr) that it is listening."""
    process = await run("receive", *args)
    assert (await line_of(process.stderr)).startswith("chatcast: receiving on ")
    return process


# -- help and arguments ----------------------------------------------------------------------


@pytest.mark.parametrize("action", [[], ["chat"], ["send"], ["receive"]])
def test_help(action: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` works on the command and each action and lists the common flags."""
    with pytest.raises(SystemExit) as exited:
        main(["multicast", *action, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: chatcast multicast")
    if action:
        for flag in ("--group", "--port", "--ttl", "--interface", "--name", "--plain"):
            assert flag in out
        assert "224.1.1.1" in out
        assert "5004" in out


def test_count_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    """``receive --count 0`` is a usage error."""
    with pytest.raises(SystemExit) as exited:
        main(["multicast", "receive", "--count", "0"])
    assert exited.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


async def test_bad_group_is_reported(run: Run) -> None:
    """A group that is not multicast ends the command with status 1 and a clear message."""
    process = await run("send", "--group", "10.1.2.3", "--interface", "127.0.0.1", "hi")
    status, _, err = await finish(process)
    assert status == 1
    assert "chatcast: '10.1.2.3' is not a multicast group" in err


async def test_unknown_interface_is_reported(run: Run) -> None:
    """An unknown interface ends the command with status 1 and says so."""
    process = await run("receive", "--group", "239.255.1.1", "--interface", "nosuchif0")
    status, _, err = await finish(process)
    assert status == 1
    assert "unknown interface 'nosuchif0'" in err


# -- send and receive ------------------------------------------------------------------------


async def test_send_to_receive(run: Run, where: list[str]) -> None:
    """``send TEXT`` reaches ``receive --count``, which prints "name: text" and exits 0."""
    receiver = await started_receiver(run, *where, "--ttl", "1", "--count", "2")
    first = await run("send", *where, "--ttl", "1", "--name", "alice", "halo", "semua")
    assert (await finish(first))[0] == 0
    second = await run("send", *where, "--ttl", "0", "--name", "bob", "ünïcödé ✓")
    assert (await finish(second))[0] == 0
    status, out, _ = await finish(receiver)
    assert status == 0
    assert out.splitlines() == ["alice: halo semua", "bob: ünïcödé ✓"]


async def test_send_lines_from_stdin(run: Run, where: list[str], channel: MulticastChannel) -> None:
    """Without TEXT, ``send`` sends each non-empty stdin line; ``--plain`` sends bare text."""
    sender = await run("send", *where, "--ttl", "0", "--plain", stdin=asyncio.subprocess.PIPE)
    assert sender.stdin is not None
    sender.stdin.write(b"baris satu\n\nbaris dua\n")
    sender.stdin.close()
    assert (await finish(sender))[0] == 0
    got = []
    for _ in range(2):
        async with asyncio.timeout(timeout()):
            got.append(await channel.receive())
    assert [message.text for message in got] == ["baris satu", "baris dua"]
    assert all(message.sender and message.sender.startswith("127.0.0.1:") for message in got)
    assert channel.statistics().empty == 0  # the empty line was not sent at all


async def test_send_too_long_fails(run: Run, where: list[str]) -> None:
    """``send`` of a text over the datagram limit exits 1 and says why."""
    sender = await run("send", *where, "--ttl", "0", "x" * 9000)
    status, _, err = await finish(sender)
    assert status == 1
    assert "over the limit of 8192 bytes" in err


async def test_receive_sanitises_and_plain(
    run: Run, where: list[str], channel: MulticastChannel
) -> None:
    """``receive`` shows control characters in caret notation; ``--plain`` prints text only."""
    rendered = await started_receiver(run, *where, "--count", "1")
    plain = await started_receiver(run, *where, "--count", "1", "--plain")
    await channel.send("\x1b[2Jred\x07")
    for process, expected in ((rendered, "tester: ^[[2Jred^G"), (plain, "^[[2Jred^G")):
        status, out, _ = await finish(process)
        assert status == 0
        assert out == expected + "\n"
        assert "\x1b" not in out


async def test_receive_from_plain_socket(run: Run, where: list[str]) -> None:
    """Datagrams from a plain UDP socket print as text from "host:port"."""
    receiver = await started_receiver(run, *where, "--count", "1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        sock.sendto(b"dari socket biasa", (where[1], int(where[3])))
        port = sock.getsockname()[1]
    status, out, _ = await finish(receiver)
    assert status == 0
    assert out == f"127.0.0.1:{port}: dari socket biasa\n"


async def test_receive_stops_on_sigterm(run: Run, where: list[str]) -> None:
    """SIGTERM ends ``receive`` cleanly with status 0."""
    receiver = await started_receiver(run, *where)
    receiver.send_signal(signal.SIGTERM)
    status, out, err = await finish(receiver)
    assert (status, out) == (0, "")
    assert "Traceback" not in err


# -- chat ------------------------------------------------------------------------------------


async def test_chat_with_piped_stdin(run: Run, where: list[str], channel: MulticastChannel) -> None:
    """``chat`` prints others' messages as they come and sends each typed line."""
    chat = await run(
        "chat", *where, "--ttl", "0", "--name", "chatter", stdin=asyncio.subprocess.PIPE
    )
    assert chat.stdin is not None
    assert (await line_of(chat.stdout)).startswith("* chatting on ")
    await channel.send("halo \x1b[31mchat")
    assert await line_of(chat.stdout) == "tester: halo ^[[31mchat"
    chat.stdin.write(b"dari chat\n")
    await chat.stdin.drain()
    async with asyncio.timeout(timeout()):
        message = await channel.receive()
    assert (message.text, message.sender) == ("dari chat", "chatter")
    chat.stdin.close()  # end of input: chat leaves
    status, out, err = await finish(chat)
    assert status == 0, err
    assert "dari chat" not in out  # its own message is not echoed back
