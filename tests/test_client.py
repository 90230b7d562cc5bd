"""BroadcastClient against a real server, and real third-party peers (lab script, nc, socat)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from chatcast.client import BroadcastClient
from chatcast.exceptions import ChannelClosed, ConnectionClosed, MessageTooLong
from chatcast.message import ANNOUNCEMENT, CLOSING, INFO, JOIN, MESSAGE, NICK
from chatcast.server import BroadcastServer
from tests.conftest import TextPeer, receive_kind
from tests.helpers import timeout, wait_until

Factory = Callable[..., Any]
LAB = Path(__file__).parent / "lab"


async def test_receive_is_cancellation_safe(connect: Factory) -> None:
    """A cancelled receive() loses no message: the next one gets it."""
    alice = await connect("alice")
    bob = await connect("bob")
    await receive_kind(alice, JOIN)  # alice's own join
    await receive_kind(alice, JOIN)  # bob's
    for _ in range(20):
        task = asyncio.create_task(alice.receive())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await bob.send("kept")
    got = await receive_kind(alice, MESSAGE)
    assert got.text == "kept"


async def test_send_validation(connect: Factory) -> None:
    """Empty text, control characters and over-long frames are refused before sending."""
    alice = await connect("alice", max_line_bytes=1024)
    with pytest.raises(ValueError, match="empty"):
        await alice.send("")
    with pytest.raises(ValueError, match="U\\+001B"):
        await alice.send("\x1b[2J")
    with pytest.raises(MessageTooLong) as info:
        await alice.send("x" * 2000)
    assert info.value.limit == 1024
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="recipient"):
        await alice.send("hi", to="not a name")
    assert alice.statistics().sent == 0


async def test_multi_line_text_survives(connect: Factory, text_peer: Factory) -> None:
    """Multi-line text arrives whole for JSON clients, line by line with a prefix for text."""
    alice = await connect("alice")
    bob = await connect("bob")
    peer = await text_peer(nick="tina")
    await alice.send("one\ntwo\tthree")
    assert (await receive_kind(bob, MESSAGE)).text == "one\ntwo\tthree"
    assert await peer.until(lambda line: line.startswith("alice")) == "alice: one"
    assert await peer.line() == "alice: two\tthree"


async def test_close_then_use(connect: Factory) -> None:
    """After close(), send and receive raise ChannelClosed; close is idempotent."""
    alice = await connect("alice")
    await alice.close()
    await alice.close()
    with pytest.raises(ChannelClosed):
        await alice.send("x")
    with pytest.raises(ChannelClosed):
        await alice.receive()
    assert not alice.connected


async def test_server_close_raises_connection_closed_with_reason(start_server: Factory) -> None:
    """When the server shuts down, receive() hands the notice, then ConnectionClosed(reason)."""
    server = await start_server()
    client = BroadcastClient("127.0.0.1", server.port, name="alice")
    await client.connect()
    server.close("maintenance")
    got = await receive_kind(client, CLOSING)
    assert got.text == "maintenance"
    with pytest.raises(ConnectionClosed) as info:
        await client.receive()
    assert info.value.reason == "closed by server: maintenance"
    with pytest.raises(ConnectionClosed):
        await client.send("anyone?")
    await client.close()


async def test_nick_who_rooms(connect: Factory) -> None:
    """nick() renames once the server confirms; who() and rooms() answer."""
    alice = await connect("alice")
    await connect("bob", room="den")
    await alice.nick("alicia")
    got = await receive_kind(alice, NICK)
    assert (got.sender, got.text) == ("alice", "alicia")
    assert alice.name == "alicia"
    assert await alice.who() == ["alicia"]
    assert await alice.who("den") == ["bob"]
    assert await alice.rooms() == {"den": 1, "lobby": 1}
    await alice.join("den")
    assert (await receive_kind(alice, JOIN)).room == "den"
    assert alice.room == "den"
    with pytest.raises(ValueError, match="room"):
        await alice.join("no spaces")


async def test_cancelled_request_does_not_take_the_next_answer(connect: Factory) -> None:
    """who()/rooms() answers go to their own requests even after one was cancelled."""
    alice = await connect("alice")
    await connect("bob", room="den")
    for first in (alice.who, alice.rooms):
        task = asyncio.create_task(first())
        await asyncio.sleep(0)  # the request is on the wire
        task.cancel()
        async with asyncio.timeout(timeout(5)):
            assert await alice.rooms() == {"den": 1, "lobby": 1}
            assert await alice.who("lobby") == ["alice"]
            assert await alice.who("den") == ["bob"]


async def test_server_picks_a_name(connect: Factory) -> None:
    """Without a name the server assigns guestN; the client knows it after connecting."""
    client = await connect()
    assert client.name is not None
    assert client.name.startswith("guest")
    assert client.room == "lobby"
    assert client.welcome == "Selamat datang di Server..."


async def test_reconnect_rejoins_name_and_room(start_server: Factory) -> None:
    """A reconnecting client survives a server restart and comes back as itself, in its room."""
    server = await start_server(close_timeout=1)
    port = server.port
    client = BroadcastClient(
        "127.0.0.1", port, name="alice", room="den", reconnect=True, reconnect_delay=0.05
    )
    await client.connect()
    server.close("restart")
    await server.wait_closed()
    lost = await receive_kind(client, INFO)
    assert lost.text.startswith("disconnected: closed by server: restart")
    with pytest.raises(ConnectionClosed, match="reconnecting"):
        await client.send("while down")
    restarted = BroadcastServer("127.0.0.1", port, join_grace=0.05)
    await restarted.start()
    try:
        assert (await receive_kind(client, INFO, seconds=10)).text == "reconnected"
        assert restarted.who("den") == ["alice"]
        await client.send("back")
        bob = BroadcastClient("127.0.0.1", port, name="bob", room="den")
        await bob.connect()
        await client.send("hello bob")
        assert (await receive_kind(bob, MESSAGE)).text == "hello bob"
        assert client.statistics().reconnects == 1
        await bob.close()
    finally:
        await client.close()
        await restarted.aclose()


async def test_connect_refused_and_server_full(start_server: Factory) -> None:
    """connect() raises OSError when nobody listens, ConnectionClosed('server full...')."""
    server = await start_server(max_clients=1)
    first = BroadcastClient("127.0.0.1", server.port)
    await first.connect()
    second = BroadcastClient("127.0.0.1", server.port)
    with pytest.raises(ConnectionClosed, match="server full"):
        await second.connect()
    await first.close()
    port = server.port
    server.close()
    await server.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await BroadcastClient("127.0.0.1", port).connect()


async def test_async_iteration_ends_on_close(start_server: Factory) -> None:
    """async for ends quietly when the server shuts down."""
    server = await start_server()
    client = BroadcastClient("127.0.0.1", server.port, name="it")
    await client.connect()
    await server.broadcast("one")
    kinds = []
    server_closed = False
    async with asyncio.timeout(timeout(5)):
        async for message in client:
            kinds.append(message.kind)
            if message.kind == ANNOUNCEMENT and not server_closed:
                server.close()
                server_closed = True
    assert kinds == [JOIN, ANNOUNCEMENT, CLOSING]
    await client.close()


def test_constructor_validation() -> None:
    """Bad names, ports and delays are refused at construction."""
    with pytest.raises(ValueError, match="name"):
        BroadcastClient(name="bad name")
    with pytest.raises(ValueError, match="port"):
        BroadcastClient(port=0)
    with pytest.raises(ValueError, match="reconnect_delay"):
        BroadcastClient(reconnect_delay=5, reconnect_max_delay=1)


# -- against a scripted server -------------------------------------------------------------

Script = Callable[[TextPeer], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[int]:
    """A one-connection server on 127.0.0.1:0 that runs ``script``; yields its port."""
    done: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        done.append(task)
        peer = TextPeer(reader, writer)
        try:
            await script(peer)
        finally:
            await peer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in done:
            task.cancel()
        await asyncio.gather(*done, return_exceptions=True)
        await server.wait_closed()


def _frame(**obj: Any) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def _welcome(heartbeat: float = 30.0) -> bytes:
    return _frame(type="welcome", name="alice", room="lobby", text="hi", heartbeat=heartbeat)


def _chat(text: str) -> bytes:
    return _frame(type="message", **{"from": "bob"}, text=text, room="lobby", ts=1.5)


async def test_heartbeat_pings_a_silent_server_then_gives_up() -> None:
    """A silent server gets a ping after a heartbeat; no answer within half one more: closed."""
    pinged = asyncio.Event()

    async def silent(peer: TextPeer) -> None:
        await peer.line()  # the hello
        peer.send(_welcome(heartbeat=0.2))
        assert await peer.line(seconds=5) == '{"type":"ping"}'
        pinged.set()
        await peer.eof(seconds=5)

    async with scripted(silent) as port:
        client = BroadcastClient("127.0.0.1", port, name="alice")
        await client.connect()
        try:
            with pytest.raises(ConnectionClosed, match="heartbeat timeout"):
                async with asyncio.timeout(timeout(5)):
                    await client.receive()
            assert pinged.is_set()
        finally:
            await client.close()


async def test_heartbeat_answered_keeps_the_connection() -> None:
    """A server that answers the client's pings stays connected past many heartbeats."""
    pongs = 0

    async def alive(peer: TextPeer) -> None:
        nonlocal pongs
        await peer.line()
        peer.send(_welcome(heartbeat=0.4))
        while pongs < 2:
            assert await peer.line() == '{"type":"ping"}'
            peer.send(b'{"type":"pong"}\n')
            pongs += 1
        peer.send(_chat("still here"))
        await peer.eof()

    async with scripted(alive) as port:
        client = BroadcastClient("127.0.0.1", port, name="alice")
        await client.connect()
        try:
            async with asyncio.timeout(timeout(5)):
                assert (await client.receive()).text == "still here"
            assert client.connected
        finally:
            await client.close()


async def test_a_paused_reader_does_not_take_the_server_for_silent() -> None:
    """While the application is behind (queue full) the client neither pings nor gives up."""
    quiet = asyncio.Event()

    async def patient(peer: TextPeer) -> None:
        await peer.line()
        peer.send(_welcome(heartbeat=0.1) + b"".join(_chat(str(i)) for i in range(3)))
        with pytest.raises(TimeoutError):
            await peer.line(seconds=0.5)  # five heartbeats, and no ping
        quiet.set()
        await peer.eof()

    async with scripted(patient) as port:
        client = BroadcastClient("127.0.0.1", port, name="alice", queue_size=1)
        await client.connect()
        try:
            async with asyncio.timeout(timeout(5)):
                await quiet.wait()
                assert [(await client.receive()).text for _ in range(3)] == ["0", "1", "2"]
            assert client.connected
        finally:
            await client.close()


async def test_messages_with_the_welcome_and_a_small_queue_arrive_in_order() -> None:
    """Frames read with the welcome come first; a full queue pauses reading, loses nothing."""

    async def burst(peer: TextPeer) -> None:
        await peer.line()
        peer.send(_welcome() + _chat("0") + b'{"type":"ping"}\n')
        assert await peer.line() == '{"type":"pong"}'
        peer.send(b"".join(_chat(str(i)) for i in range(1, 200)))
        await peer.eof()

    async with scripted(burst) as port:
        client = BroadcastClient("127.0.0.1", port, name="alice", queue_size=3)
        await client.connect()
        try:
            async with asyncio.timeout(timeout(5)):
                got = [(await client.receive()).text for _ in range(200)]
            assert got == [str(i) for i in range(200)]
            assert client.statistics().received == 200
        finally:
            await client.close()


async def test_hostile_frames_from_the_server_are_skipped() -> None:
    """Broken frames from a server are skipped; the good ones around them arrive."""

    async def hostile(peer: TextPeer) -> None:
        await peer.line()
        peer.send(_welcome() + _chat("before"))
        peer.send(b"\xff\xfe\n" + b"x" * 2000 + b'\n{"type":"message","text":5}\n')
        peer.send(b'{"type":"message","from":"b","text":"\\ud800","room":"l","ts":1.0}\n')
        peer.send(_frame(type="who", names=["nobody asked"]) + _chat("after"))
        await peer.eof()

    async with scripted(hostile) as port:
        client = BroadcastClient("127.0.0.1", port, name="alice", max_line_bytes=1024)
        await client.connect()
        try:
            async with asyncio.timeout(timeout(5)):
                assert (await client.receive()).text == "before"
                assert (await client.receive()).text == "after"
        finally:
            await client.close()


async def test_who_fails_when_the_connection_ends_before_the_answer() -> None:
    """A request still waiting when the connection ends raises ConnectionClosed."""

    async def hang_up(peer: TextPeer) -> None:
        await peer.line()
        peer.send(_welcome())
        assert json.loads(await peer.line()) == {"type": "who"}

    async with scripted(hang_up) as port:
        client = BroadcastClient("127.0.0.1", port, name="alice")
        await client.connect()
        try:
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(timeout(5)):
                    await client.who()
        finally:
            await client.close()


@pytest.mark.timeout(90)
def test_receive_benchmark_runs() -> None:
    """`python -m benchmarks.client_receive --quick` receives every message, both ways."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.client_receive", "--quick"],
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root)),
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(result.stdout.partition("RESULT ")[2])
    assert [row["rate"] for row in rows] == [50_000.0, 0.0]
    assert all(row["bare_us_per_message"] > 0 and row["ratio"] > 0 for row in rows)


# -- real peers nobody here wrote ---------------------------------------------------------


async def test_lab_client1_script_chats_with_broadcast_client(
    server: BroadcastServer, connect: Factory
) -> None:
    """The lab's client1.py (recv/print/input/send, no newline) talks to a BroadcastClient."""
    alice = await connect("alice")
    lab = await asyncio.create_subprocess_exec(
        sys.executable,
        "-u",
        str(LAB / "client1.py"),
        "127.0.0.1",
        str(server.port),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert lab.stdin is not None
    assert lab.stdout is not None
    try:
        async with asyncio.timeout(timeout(10)):
            assert await lab.stdout.readline() == b"Menyambungkan ke Server\n"
            assert (
                await lab.stdout.readline() == b"Pesan dari Server: Selamat datang di Server...\n"
            )
            await wait_until(lambda: server.statistics().clients == 2)
            await alice.send("halo lab")
            # The lab prints whatever one recv(1024) returned (the welcome came with its
            # newline, so print() left an empty line); then "Server: alice: halo lab".
            while b"alice: halo lab" not in (line := await lab.stdout.readline()):
                assert line, "the lab client exited"
            assert line.startswith(b"Server: ")
            lab.stdin.write(b"hai dari lab\n")  # input() strips the newline; send() has none
            await lab.stdin.drain()
            got = await receive_kind(alice, MESSAGE)
            assert got.text == "hai dari lab"
            assert got.sender is not None
            assert got.sender.startswith("guest")
    finally:
        lab.kill()
        await lab.wait()


@pytest.mark.skipif(shutil.which("nc") is None, reason="nc (netcat) is not installed")
async def test_netcat_is_a_client(server: BroadcastServer, connect: Factory) -> None:
    """nc, a real third-party peer, chats with a BroadcastClient."""
    alice = await connect("alice")
    nc = await asyncio.create_subprocess_exec(
        "nc",
        "127.0.0.1",
        str(server.port),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert nc.stdin is not None
    assert nc.stdout is not None
    try:
        async with asyncio.timeout(timeout(10)):
            assert await nc.stdout.readline() == b"Selamat datang di Server...\n"
            nc.stdin.write(b"/nick netcat\nhello from nc\n")
            await nc.stdin.drain()
            got = await receive_kind(alice, MESSAGE)
            assert (got.sender, got.text) == ("netcat", "hello from nc")
            await alice.send("hello netcat")
            while (line := await nc.stdout.readline()) != b"alice: hello netcat\n":
                assert line, "nc closed before alice's message"
    finally:
        nc.kill()
        await nc.wait()


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
async def test_socat_with_crlf(server: BroadcastServer, connect: Factory) -> None:
    """socat sending CRLF lines (as telnet does) is understood."""
    alice = await connect("alice")
    socat = await asyncio.create_subprocess_exec(
        "socat",
        "-",
        f"TCP:127.0.0.1:{server.port},crlf",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert socat.stdin is not None
    assert socat.stdout is not None
    try:
        async with asyncio.timeout(timeout(10)):
            await socat.stdout.readline()
            socat.stdin.write(b"/nick sock\ncrlf line\n")
            await socat.stdin.drain()
            got = await receive_kind(alice, MESSAGE)
            assert (got.sender, got.text) == ("sock", "crlf line")
    finally:
        socat.kill()
        await socat.wait()
