"""Moderation end to end on real sockets, from each of the five places (#14): a text-mode
client (the real ``nc``), a JSON client (``BroadcastClient``), the ``chatcast client``
command, the ``chatcast server`` console, and the Python API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from chatcast.client import BroadcastClient
from chatcast.exceptions import AuthenticationError, ConnectionClosed
from chatcast.message import BAN, KICK, MUTE, TOPIC, Message
from chatcast.server import BroadcastServer
from tests.conftest import TextPeer, receive_kind
from tests.helpers import timeout, wait_until
from tests.test_multicast_netns import NetLab, in_netns, ip, netlab

__all__ = ["netlab"]  # the fixture, re-used from the multicast namespace tests

OP = "op-token-for-tests"
NC = shutil.which("nc")


class Process:
    """A child process fed lines on stdin, read line by line on stdout."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, *argv: str, env: dict[str, str] | None = None) -> Process:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        return cls(process)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((line + "\n").encode())

    async def until(self, predicate: Callable[[str], bool], seconds: float = 10.0) -> str:
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout(seconds)):
            while True:
                raw = await self.process.stdout.readline()
                if not raw:
                    raise AssertionError("process output ended before the expected line")
                line = raw.decode().rstrip("\n")
                if predicate(line):
                    return line

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()  # our own child, by its handle
        async with asyncio.timeout(timeout(10)):
            await self.process.wait()


@pytest.fixture
async def op_server(start_server: Callable[..., Any]) -> BroadcastServer:
    """A server with an operator token."""
    server: BroadcastServer = await start_server(op_token=OP)
    return server


@pytest.fixture
async def peers(op_server: BroadcastServer) -> AsyncIterator[Callable[..., Any]]:
    """Factory: a text-mode peer renamed to ``nick``, optionally from another loopback
    address (``127.0.0.2``: its own address, as another machine would have)."""
    made: list[TextPeer] = []

    async def make(nick: str, source: str = "127.0.0.1") -> TextPeer:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", op_server.port, local_addr=(source, 0)
        )
        peer = TextPeer(reader, writer)
        made.append(peer)
        assert await peer.line() == op_server.welcome
        peer.send(f"/nick {nick}\n")
        await peer.until(lambda line: line.endswith(f"is now {nick}"))
        return peer

    yield make
    for peer in made:
        await peer.close()


async def first_line(port: int, source: str = "127.0.0.1") -> str:
    """Connect from ``source``; return the first line the server says (the welcome, or
    why it refuses), then hang up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        async with asyncio.timeout(timeout(5)):
            data = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return data.decode()


@pytest.mark.skipif(NC is None, reason="needs nc (netcat-openbsd)")
async def test_nc_operator_kicks_bans_mutes_and_sets_the_topic(
    op_server: BroadcastServer, peers: Callable[..., Any]
) -> None:
    """The real nc: /op, then /topic, /mute, /kick, /ban by name (timed) and by address,
    /bans and /unban, each seen by its target and as an event."""
    events = op_server.events()
    assert NC is not None
    nc = await Process.start(NC, "127.0.0.1", str(op_server.port))
    try:
        await nc.until(lambda line: line == op_server.welcome)
        nc.send("/nick teacher")
        nc.send(f"/op {OP}")
        await nc.until(lambda line: line == "* you are now an operator")
        bob = await peers("bob")
        carol = await peers("carol", "127.0.0.2")
        nc.send("/topic lobby Quiz at 10")
        assert await bob.until(lambda line: "topic" in line) == (
            "* topic of lobby: Quiz at 10 (set by teacher)"
        )
        nc.send("/mute bob stop shouting")
        await bob.until(lambda line: line == "* you are muted in lobby by teacher: stop shouting")
        bob.send("LOUD\n")
        await bob.until(lambda line: line == "! you are muted in lobby")
        nc.send("/who")
        await nc.until(lambda line: line == "* in lobby: bob, carol, teacher (op)")
        nc.send("/kick bob bye")
        assert "! kicked by teacher: bye" in (await bob.eof()).decode()
        nc.send("/ban carol 10m spam")
        assert "! banned by teacher (10m left): spam" in (await carol.eof()).decode()
        nc.send("/ban @127.0.0.2 10m")  # a loopback address is banned only when named
        await nc.until(lambda line: line.startswith("* banned @127.0.0.2"))
        assert (await first_line(op_server.port, "127.0.0.2")).startswith("! banned by teacher (")
        nc.send("/ban @127.0.0.3")
        await nc.until(lambda line: line.startswith("* banned @127.0.0.3"))
        nc.send("/bans")
        await nc.until(lambda line: line.startswith("* carol, "))
        nc.send("/unban carol")
        await nc.until(lambda line: line == "* unbanned carol")
        assert op_server.who() == ["teacher"]
    finally:
        await nc.stop()
    kinds: list[str] = []
    async with asyncio.timeout(timeout(5)):
        async for event in events:
            kinds.append(event.kind)
            if event.kind == BAN and event.to == "@127.0.0.3":
                break
    assert [k for k in kinds if k in (TOPIC, MUTE, KICK, BAN)] == [
        TOPIC,
        MUTE,
        KICK,
        BAN,
        BAN,
        BAN,
    ]


async def test_json_client_operator(op_server: BroadcastServer, peers: Callable[..., Any]) -> None:
    """BroadcastClient(op_token=...) is an operator from its hello and moderates with its
    methods; a JSON client banned by name (any case) is refused with the reason, and does
    not reconnect."""
    async with BroadcastClient("127.0.0.1", op_server.port, name="teacher", op_token=OP) as op:
        assert op.operator
        bob = await peers("bob")
        await op.set_topic("lobby", "welcome")
        assert (await receive_kind(op, TOPIC)).text == "welcome"
        await op.mute("bob", reason="calm down")
        assert (await receive_kind(op, "info")).text == "muted bob in lobby"
        await op.unmute("bob")
        await op.kick("bob", "enough")
        assert "! kicked by teacher: enough" in (await bob.eof()).decode()
        await op.ban("dave", duration=60, reason="trolling")
        assert (await receive_kind(op, "info")).text.startswith("unmuted bob")
        banned = BroadcastClient("127.0.0.1", op_server.port, name="DAVE", reconnect=True)
        with pytest.raises(
            ConnectionClosed, match=r"banned by teacher \((1m|59s) left\): trolling"
        ):
            await banned.connect()
        await op.list_bans()
        listing = await receive_kind(op, "info")
        while not listing.text.startswith("bans:"):
            listing = await receive_kind(op, "info")
        assert "dave, " in listing.text
        await op.ban(address="127.0.0.8")  # permanent, by address
        await wait_until(lambda: any(b.address == "127.0.0.8" for b in op_server.bans()))
        assert await first_line(op_server.port, "127.0.0.8") == "! banned by teacher\n"
    with pytest.raises(AuthenticationError, match="operator authentication failed"):
        await BroadcastClient("127.0.0.1", op_server.port, op_token="wrong").connect()


async def test_a_non_operator_json_client_is_refused(op_server: BroadcastServer) -> None:
    """kick() from a client that is not an operator gets an error message, and nothing else."""
    async with (
        BroadcastClient("127.0.0.1", op_server.port, name="eve") as eve,
        BroadcastClient("127.0.0.1", op_server.port, name="bob") as bob,
    ):
        await eve.kick("bob")
        assert (await receive_kind(eve, "error")).text == "/kick is for operators (see /op)"
        assert await bob.who() == ["bob", "eve"]


async def test_python_api(op_server: BroadcastServer, peers: Callable[..., Any]) -> None:
    """server.kick/ban/unban/bans/mute/unmute/set_topic, with events; a timed ban ends."""
    events = op_server.events()
    bob = await peers("bob", "127.0.0.2")
    carol = await peers("carol")
    op_server.set_topic("lobby", "exam day")
    assert op_server.topic("lobby") == "exam day"
    assert (await carol.until(lambda line: "topic" in line)).endswith("(set by server)")
    op_server.mute("carol")
    await carol.until(lambda line: line == "* you are muted in lobby by server")
    op_server.unmute("carol")
    op_server.kick("carol", "go home")
    assert "! kicked by server: go home" in (await carol.eof()).decode()
    op_server.ban("bob", address="127.0.0.2", duration=0.5, reason="cool off")
    assert "! banned by server (1s left): cool off" in (await bob.eof()).decode()
    assert [b.target() for b in op_server.bans()] == ["bob (@127.0.0.2)"]
    assert (await first_line(op_server.port, "127.0.0.2")).startswith("! banned")

    async def admitted() -> bool:
        return await first_line(op_server.port, "127.0.0.2") == op_server.welcome + "\n"

    async with asyncio.timeout(timeout(5)):
        # The ban ends after 0.5 s of wall-clock time: no event says so, so poll.
        while not await admitted():  # noqa: ASYNC110 - polling a condition under a deadline
            await asyncio.sleep(0.05)
    assert op_server.bans() == []
    op_server.ban(address="127.0.0.5")
    assert op_server.unban(address="127.0.0.5").address == "127.0.0.5"
    with pytest.raises(KeyError):
        op_server.kick("nobody")
    with pytest.raises(ValueError, match="not an IP address"):
        op_server.ban(address="nope")
    seen: list[Message] = []
    async with asyncio.timeout(timeout(5)):
        async for event in events:
            seen.append(event)
            if event.kind == "unban":
                break
    assert [e.kind for e in seen if e.kind not in ("join", "leave", "nick")] == [
        "topic",
        "mute",
        "unmute",
        "kick",
        "ban",
        "ban",
        "unban",
    ]
    assert {e.sender for e in seen if e.kind in ("kick", "ban")} == {"server"}


async def test_a_banned_address_reconnecting_in_a_loop_costs_bounded_work(
    op_server: BroadcastServer, caplog: pytest.LogCaptureFixture
) -> None:
    """200 connections from a banned address, each sending a hello and 4 KiB: all refused
    with the reason before the server decodes a byte of them (no error, no message, no
    hello); the server counts no clients after."""
    op_server.ban(address="127.0.0.9", reason="bot")
    caplog.set_level(logging.INFO, logger="chatcast")
    before = op_server.statistics()
    for _ in range(200):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", op_server.port, local_addr=("127.0.0.9", 0)
        )
        writer.write(b'{"type":"hello","name":"bot"}\n' + b"x" * 4096 + b"\n")
        async with asyncio.timeout(timeout(5)):
            assert await reader.readline() == b"! banned by server: bot\n"
        writer.close()
    await wait_until(lambda: op_server.statistics().clients == 0)
    after = op_server.statistics()
    assert (after.errors, after.messages_in) == (before.errors, before.messages_in)
    assert after.rejected == before.rejected + 200
    refused_lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused_lines) <= 9  # one per doubling (1, 2, 4, ... 128), not 200


async def test_cli_client_passes_moderation_commands(
    op_server: BroadcastServer, peers: Callable[..., Any]
) -> None:
    """`chatcast client` with CHATCAST_OP_TOKEN: /kick, /ban, /topic and /mute reach the
    server; /bans lists the bans."""
    bob = await peers("bob")
    dave = await peers("dave")
    client = await Process.start(
        sys.executable,
        "-m",
        "chatcast",
        "client",
        "--port",
        str(op_server.port),
        "--name",
        "teacher",
        env={"CHATCAST_OP_TOKEN": OP},
    )
    try:
        await client.until(lambda line: line.startswith("* you are teacher"))
        assert op_server.operators() == ["teacher"]
        client.send("/topic lobby read chapter 3")
        await bob.until(lambda line: line == "* topic of lobby: read chapter 3 (set by teacher)")
        client.send("/mute bob #lobby shh")
        await bob.until(lambda line: line == "* you are muted in lobby by teacher: shh")
        client.send("/ban @127.0.0.4 1h")
        client.send("/bans")
        await client.until(lambda line: line.startswith("* @127.0.0.4, "))
        client.send("/kick bob out")
        assert "! kicked by teacher: out" in (await bob.eof()).decode()
        client.send("/ban dave")  # permanent, by name
        assert "! banned by teacher\n" in (await dave.eof()).decode()
    finally:
        await client.stop()


async def test_server_console_is_an_operator() -> None:
    """The `chatcast server` console: /kick, /ban, /mute, /topic and /bans act at once."""
    server = await Process.start(sys.executable, "-m", "chatcast", "server", "--port", "0")
    peers: list[TextPeer] = []
    try:
        banner = await server.until(lambda line: " port " in line)
        port = int(banner.split(" port ")[1].split()[0])

        async def peer(nick: str) -> TextPeer:
            made = await TextPeer.connect(port)
            peers.append(made)
            await made.line()
            made.send(f"/nick {nick}\n")
            await made.until(lambda line: line.endswith(f"is now {nick}"))
            return made

        bob, carol = await peer("bob"), await peer("carol")
        server.send("/topic lobby be kind")
        await bob.until(lambda line: line == "* topic of lobby: be kind (set by server)")
        server.send("/mute carol")
        await carol.until(lambda line: line == "* you are muted in lobby by server")
        server.send("/kick bob bye")
        assert "! kicked by server: bye" in (await bob.eof()).decode()
        server.send("/ban carol 1d")
        assert "! banned by server (1d left)" in (await carol.eof()).decode()
        server.send("/bans")
        await server.until(lambda line: line.startswith("  carol, 1d, by server"))
        server.send("/ban @127.0.0.6")
        await server.until(lambda line: line == "* banned @127.0.0.6, until lifted, by server")
        assert await first_line(port, "127.0.0.6") == "! banned by server\n"
        server.send("/kick nobody")
        await server.until(lambda line: line == "! no such user: nobody")
    finally:
        for made in peers:
            await made.close()
        await server.stop()


async def test_moderation_crosses_the_backplane() -> None:
    """With a Redis backplane, an operator on one server mutes, sets the topic for, kicks
    and bans members of another server; the ban holds there at the next hello."""
    pytest.importorskip("redis", reason="redis-py is not installed")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    from chatcast.backplane import RedisBackplane
    from tests.redis_cluster import RedisProcess

    redis_process = RedisProcess()
    redis_process.start()
    servers = [
        BroadcastServer(
            "127.0.0.1",
            0,
            op_token=OP,
            join_grace=0.05,
            backplane=RedisBackplane(redis_process.url, prefix="modtest", heartbeat=0.5),
        )
        for _ in range(2)
    ]
    peers: list[TextPeer] = []
    try:
        for server in servers:
            await server.start()
        one, two = servers

        async def peer(nick: str) -> TextPeer:
            made = await TextPeer.connect(two.port)
            peers.append(made)
            await made.line()
            made.send(f"/nick {nick}\n")
            await made.until(lambda line: line.endswith(f"is now {nick}"))
            return made

        bob, carol = await peer("bob"), await peer("carol")
        async with BroadcastClient("127.0.0.1", one.port, name="teacher", op_token=OP) as op:
            await wait_until(lambda: {"bob", "carol"} <= set(one.who()))
            await op.mute("bob", reason="shh")
            await bob.until(lambda line: line == "* you are muted in lobby by teacher: shh")
            bob.send("noise\n")
            await bob.until(lambda line: line == "! you are muted in lobby")
            await op.set_topic("lobby", "cluster topic")
            await carol.until(lambda line: line.startswith("* topic of lobby: cluster topic"))
            await op.kick("carol", "out")
            assert "! kicked by teacher: out" in (await carol.eof()).decode()
            await op.ban("bob", reason="bye")
            assert "! banned by teacher: bye" in (await bob.eof()).decode()
            with pytest.raises(ConnectionClosed, match="banned by teacher: bye"):
                await BroadcastClient("127.0.0.1", two.port, name="Bob").connect()
            assert [b.target() for b in two.bans()] == ["bob"]
            assert two.topic("lobby") == "cluster topic"
    finally:
        for made in peers:
            await made.close()
        for server in servers:
            async with asyncio.timeout(timeout(10)):
                await server.aclose()
        redis_process.kill()


@pytest.mark.netns
async def test_a_name_ban_survives_a_new_name_from_a_machine_of_its_own(netlab: NetLab) -> None:
    """In a namespace whose lo carries two ordinary addresses (two machines, as far as the
    server can tell): banning bob by name bans his address too, so he is refused at connect
    under another name, while the other machine's members stay."""
    name = netlab.namespace()
    ip("-n", name, "addr", "add", "10.200.0.1/32", "dev", "lo")
    ip("-n", name, "addr", "add", "10.200.0.2/32", "dev", "lo")
    with in_netns(name):
        async with BroadcastServer("10.200.0.1", 0, op_token=OP, join_grace=0.05) as server:

            async def peer(nick: str, source: str) -> TextPeer:
                reader, writer = await asyncio.open_connection(
                    "10.200.0.1", server.port, local_addr=(source, 0)
                )
                made = TextPeer(reader, writer)
                await made.line()
                made.send(f"/nick {nick}\n")
                await made.until(lambda line: line.endswith(f"is now {nick}"))
                return made

            bob = await peer("bob", "10.200.0.2")
            carol = await peer("carol", "10.200.0.1")
            try:
                ban = server.ban("bob", duration=3600, reason="spam")
                assert ban.address == "10.200.0.2"
                assert "! banned by server (1h left): spam" in (await bob.eof()).decode()
                reader, writer = await asyncio.open_connection(
                    "10.200.0.1", server.port, local_addr=("10.200.0.2", 0)
                )
                async with asyncio.timeout(timeout(5)):
                    assert await reader.readline() == b"! banned by server (1h left): spam\n"
                writer.close()
                carol.send("/who\n")
                await carol.until(lambda line: line == "* in lobby: carol")
                server.unban("bob")
                robert = await peer("robert", "10.200.0.2")
                await robert.close()
            finally:
                await bob.close()
                await carol.close()


async def test_a_kicked_client_does_not_reconnect(op_server: BroadcastServer) -> None:
    """BroadcastClient(reconnect=True) ends with the kick's reason instead of coming back."""
    async with BroadcastClient("127.0.0.1", op_server.port, name="bob", reconnect=True) as bob:
        op_server.kick("bob", "take a break")
        with pytest.raises(ConnectionClosed, match="kicked by server: take a break"):
            await receive_kind(bob, "never")  # every message up to the end, then its reason
        assert bob.statistics().reconnects == 0
        assert op_server.who() == []
