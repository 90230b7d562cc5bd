"""Tests for ``chatcast multicast chat|send|receive``, run as real subprocesses.

Every command here is given ``--interface 127.0.0.1`` and TTL 0 or 1, so nothing leaves the
host; each test has its own group in 239.255.0.0/16 and a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import Protocol

import pytest

from chatcast._core.datagram import Signer
from chatcast.cli import main
from chatcast.cli.multicast import KEY_ENV
from chatcast.multicast import MulticastChannel
from tests.helpers import timeout

KEY = "kunci kelas ✓"

Process = asyncio.subprocess.Process


def free_port() -> int:
    """A UDP port nobody on this host has bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))
        port: int = probe.getsockname()[1]
        return port


class Run(Protocol):
    """``await run(action, *args, stdin=..., env=...)``: start ``chatcast multicast ACTION``."""

    async def __call__(
        self, action: str, *args: str, stdin: int | None = ..., env: dict[str, str] | None = ...
    ) -> Process: ...


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
        action: str,
        *args: str,
        stdin: int | None = asyncio.subprocess.DEVNULL,
        env: dict[str, str] | None = None,
    ) -> Process:
        # The caller's own key must not leak into the tests; ``env`` adds variables.
        environment = {name: value for name, value in os.environ.items() if name != KEY_ENV}
        environment.update(env or {})
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
            env=environment,
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


async def started_receiver(run: Run, *args: str, env: dict[str, str] | None = None) -> Process:
    """``receive`` with ``args``, once it says (on stderr) that it is listening."""
    process = await run("receive", *args, env=env)
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
        for flag in ("--group", "--port", "--ttl", "--interface", "--name", "--plain", "--key"):
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


async def test_chat_commands(run: Run, where: list[str], channel: MulticastChannel) -> None:
    """``chat`` answers /help and a mistyped command itself (the server's words), sends
    ``//text`` as ``/text``, and leaves at /quit with status 0."""
    chat = await run(
        "chat", *where, "--ttl", "0", "--name", "chatter", stdin=asyncio.subprocess.PIPE
    )
    assert chat.stdin is not None
    assert (await line_of(chat.stdout)).startswith("* chatting on ")
    chat.stdin.write(b"/help\n/join den\n//slash\n/QUIT\nnever sent\n")
    await chat.stdin.drain()
    async with asyncio.timeout(timeout()):
        message = await channel.receive()
    assert (message.text, message.sender) == ("/slash", "chatter")
    status, out, err = await finish(chat)
    assert status == 0, err
    assert out.splitlines() == [
        "* commands:",
        "*   /quit [REASON]    leave",
        "*   //text            send a line that starts with '/'",
        "* anything else is sent to the group",
        "! unknown command /join (try /help)",
    ]


# -- signed: --key and $CHATCAST_MULTICAST_KEY ---------------------------------------------


@pytest.fixture
async def keyed(where: list[str]) -> AsyncIterator[MulticastChannel]:
    """A channel on the test's group, named "tester", signing with KEY."""
    group, port = where[1], int(where[3])
    async with MulticastChannel(
        group, port, interface="127.0.0.1", ttl=0, name="tester", key=KEY
    ) as opened:
        yield opened


def raw_sender(where: list[str]) -> socket.socket:
    """A plain UDP socket sending on 127.0.0.1 with TTL 0 (close it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    return sock


async def test_send_with_key_flag(run: Run, where: list[str], keyed: MulticastChannel) -> None:
    """``send --key`` signs: a channel with the key receives it, numbered."""
    sender = await run("send", *where, "--ttl", "0", "--name", "alice", "--key", KEY, "halo")
    assert (await finish(sender))[0] == 0
    async with asyncio.timeout(timeout()):
        message = await keyed.receive()
    assert (message.text, message.sender, message.seq) == ("halo", "alice", 1)
    assert keyed.statistics().dropped == 0


async def test_key_from_environment(run: Run, where: list[str]) -> None:
    """With $CHATCAST_MULTICAST_KEY, ``receive`` prints only signed messages and warns once."""
    receiver = await started_receiver(run, *where, "--count", "1", env={KEY_ENV: KEY})
    signer = Signer(KEY.encode(), "00000000000000ff", 1)
    body = b'{"type":"message","from":"signer","text":"signed"}'
    with raw_sender(where) as sock:  # one socket: the unsigned one is read first
        sock.sendto(b"unsigned noise", (where[1], int(where[3])))
        sock.sendto(signer.sign(1, int(time.time() * 1000), body), (where[1], int(where[3])))
    status, out, err = await finish(receiver)
    assert (status, out) == (0, "signer: signed\n")
    assert "it is not signed (a sender without the key?)" in err


async def test_key_flag_wins_over_environment(
    run: Run, where: list[str], keyed: MulticastChannel
) -> None:
    """``--key`` wins over the environment variable (documented precedence)."""
    sender = await run("send", *where, "--ttl", "0", "--key", KEY, "right", env={KEY_ENV: "wrong"})
    assert (await finish(sender))[0] == 0
    async with asyncio.timeout(timeout()):
        assert (await keyed.receive()).text == "right"
    wrong = await run("send", *where, "--ttl", "0", "wrong", env={KEY_ENV: "wrong"})
    assert (await finish(wrong))[0] == 0
    with raw_sender(where) as sock:
        signer = Signer(KEY.encode(), "00000000000000ff", 1)
        sock.sendto(signer.sign(1, int(time.time() * 1000), b'{"type":"message","text":"ok"}'),
                    (where[1], int(where[3])))  # fmt: skip
    async with asyncio.timeout(timeout()):
        assert (await keyed.receive()).text == "ok"
    assert keyed.statistics().forged == 1


async def test_empty_environment_variable_means_no_key(
    run: Run, where: list[str], channel: MulticastChannel
) -> None:
    """An empty $CHATCAST_MULTICAST_KEY counts as unset: ``send`` sends unsigned."""
    sender = await run("send", *where, "--ttl", "0", "unsigned", env={KEY_ENV: ""})
    assert (await finish(sender))[0] == 0
    async with asyncio.timeout(timeout()):
        assert (await channel.receive()).text == "unsigned"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["send", "--key", "", "x"], {}, "chatcast: key must not be empty"),
        (["send", "--plain", "--key", "k", "x"], {}, "--plain sends unsigned text"),
        (["chat", "--plain"], {KEY_ENV: "k"}, "cannot be used with a key"),
    ],
)
async def test_bad_key_use_is_reported(
    run: Run, where: list[str], args: list[str], env: dict[str, str], message: str
) -> None:
    """An empty key, or --plain with a key, ends the command with status 1 and says why."""
    process = await run(args[0], *where, "--ttl", "0", *args[1:], env=env)
    status, _, err = await finish(process)
    assert status == 1
    assert message in err


async def test_receive_plain_with_key(run: Run, where: list[str], keyed: MulticastChannel) -> None:
    """``receive --plain`` only changes the printing, so it works with a key."""
    receiver = await started_receiver(run, *where, "--count", "1", "--plain", "--key", KEY)
    await keyed.send("text only")
    status, out, _ = await finish(receiver)
    assert (status, out) == (0, "text only\n")


async def test_chat_with_key_shows_warnings(
    run: Run, where: list[str], keyed: MulticastChannel
) -> None:
    """Keyed ``chat`` says it signs, shows a wrong-key warning as a line, and talks."""
    chat = await run(
        "chat", *where, "--ttl", "0", "--name", "chatter", stdin=asyncio.subprocess.PIPE,
        env={KEY_ENV: KEY},
    )  # fmt: skip
    assert chat.stdin is not None
    banner = await line_of(chat.stdout)
    assert banner.startswith("* chatting on ")
    assert ", signed as chatter" in banner
    with raw_sender(where) as sock:
        signer = Signer(b"another key", "00000000000000ff", 1)
        sock.sendto(signer.sign(1, int(time.time() * 1000), b'{"type":"message","text":"x"}'),
                    (where[1], int(where[3])))  # fmt: skip
    warning = await line_of(chat.stdout)
    assert warning.startswith("! dropped a datagram from 127.0.0.1:")
    assert warning.endswith("it is signed with another key, or was altered on the way")
    await keyed.send("halo")
    assert await line_of(chat.stdout) == "tester: halo"
    chat.stdin.write(b"balas\n")
    await chat.stdin.drain()
    async with asyncio.timeout(timeout()):
        message = await keyed.receive()
    assert (message.text, message.sender, message.seq) == ("balas", "chatter", 1)
    chat.stdin.close()
    status, _, err = await finish(chat)
    assert status == 0, err
    assert "dropped" not in err  # the warning went through the console, not stderr


# -- reliable ---------------------------------------------------------------------------------


async def test_reliable_receive_repairs_and_shows_gaps(run: Run, where: list[str]) -> None:
    """``receive --reliable`` prints a gap event for what can no longer be repaired (it left
    the sender's window of 2), and goes on."""
    from chatcast.multicast import ReliableOptions

    repair = ["--repair-port", str(free_port())]
    receiver = await started_receiver(run, *where, *repair, "--reliable", "--count", "7")
    group, port = where[1], int(where[3])
    sender = MulticastChannel(
        group,
        port,
        interface="127.0.0.1",
        ttl=0,
        name="alice",
        reliable=True,
        repair_port=int(repair[1]),
        reliable_options=ReliableOptions(window_messages=2, linger=0.5),
    )
    async with sender:
        transport = sender._send_transport
        assert transport is not None
        original = transport.sendto
        numbers = iter(range(1, 100))

        def lossy(data: bytes, addr: object = None) -> None:
            if next(numbers) not in (5, 6):  # out of the window before anyone asks
                original(data)

        transport.sendto = lossy  # type: ignore[method-assign,assignment]
        for text in ("a", "b", "c", "d", "e", "f", "g", "h"):
            await sender.send(text)
    status, out, _ = await finish(receiver)
    assert status == 0
    assert out.splitlines() == [
        "alice: a",
        "alice: b",
        "alice: c",
        "alice: d",
        f"* 2 message(s) missed in {sender.instance} (no longer available)",
        "alice: g",
        "alice: h",
    ]


async def test_reliable_send_to_reliable_receive(run: Run, where: list[str]) -> None:
    """``send --reliable`` lines reach ``receive --reliable`` in order."""
    repair = ["--repair-port", str(free_port())]
    receiver = await started_receiver(run, *where, *repair, "--reliable", "--count", "3")
    sender = await run(
        "send", *where, *repair, "--ttl", "0", "--reliable", stdin=asyncio.subprocess.PIPE
    )
    assert sender.stdin is not None
    sender.stdin.write(b"satu\ndua\ntiga\n")
    sender.stdin.close()
    assert (await finish(sender))[0] == 0
    status, out, _ = await finish(receiver)
    assert status == 0
    assert [line.split(": ", 1)[1] for line in out.splitlines()] == ["satu", "dua", "tiga"]


async def test_reliable_plain_is_refused(run: Run, where: list[str]) -> None:
    """``send --reliable --plain`` is an error: bare text cannot be repaired."""
    process = await run("send", *where, "--reliable", "--plain", "hi")
    status, _, err = await finish(process)
    assert status == 1
    assert "--reliable" in err
