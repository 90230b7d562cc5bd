"""LAN discovery on interface 127.0.0.1: real servers announcing, real listeners.

Each test uses a discovery port of its own (from the pid), so parallel runs do not hear
each other; everything is sent on the loopback interface with TTL 0 or 1.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chatcast import BroadcastServer
from chatcast._core.beacon import Beacon, BeaconEncoder, encode_body
from chatcast._sockets import Interface, open_send_socket, parse_group
from chatcast.discovery import (
    DEFAULT_DISCOVERY_GROUP,
    Announce,
    DiscoveredServer,
    Discovery,
    client_for,
    discover,
    discover_once,
)
from tests.helpers import timeout, wait_until
from tests.test_console_tmux import TMUX, TmuxSession

LO = "127.0.0.1"
PORT = 20000 + os.getpid() % 20000


def announce(**options: object) -> Announce:
    values: dict[str, object] = {"interface": LO, "port": PORT, "name": "lab", "ttl": 0}
    values.update(options)
    return Announce(**values)  # type: ignore[arg-type]


@pytest.fixture
async def found() -> AsyncIterator[Discovery]:
    async with discover(interface=LO, port=PORT) as discovery:
        yield discovery


async def next_change(discovery: Discovery, seconds: float = 5.0) -> DiscoveredServer:
    async with asyncio.timeout(timeout(seconds)):
        return await discovery.next_change()


@pytest.fixture
def raw() -> Iterator[socket.socket]:
    """A plain UDP socket that sends to the discovery group on 127.0.0.1."""
    sock = open_send_socket(
        parse_group(DEFAULT_DISCOVERY_GROUP), PORT, Interface(address=LO, spec=LO), ttl=0
    )
    sock.setblocking(True)
    yield sock
    sock.close()


async def test_server_found_and_joined(found: Discovery) -> None:
    """A server with announce= is listed with its address, port and flags, and a client
    made from the listing chats with it."""
    async with BroadcastServer(LO, 0, announce=announce(interval=0.5), token="t") as server:
        listed = await next_change(found, 3.0)
        assert (listed.name, listed.host, listed.port, listed.tcp) == (
            "lab",
            LO,
            server.port,
            server.port,
        )
        assert (listed.tls, listed.token, listed.clients, listed.gone) == (None, True, 0, False)
        async with client_for(listed, name="alice", token="t") as alice:
            await alice.send("halo")
            await wait_until(lambda: server.statistics().messages_in == 1)
            # The next beacon carries the count: one client.
            change = await next_change(found, 5.0)
            assert (change.server_id, change.clients) == (listed.server_id, 1)
    gone = await next_change(found, 1.0)  # the goodbye, at once
    assert (gone.server_id, gone.gone) == (listed.server_id, True)
    assert found.servers() == []


async def test_silent_server_expires(found: Discovery, raw: socket.socket) -> None:
    """A server that stops announcing (no goodbye) goes after three of its intervals."""
    sid = "00000000000000aa"
    raw.send(encode_body(Beacon(sid, "crashed", tcp=9, interval=0.2)))
    first = await next_change(found)
    started = time.monotonic()
    assert (first.server_id, first.gone) == (sid, False)
    gone = await next_change(found, 2.0)
    assert (gone.server_id, gone.gone) == (sid, True)
    assert time.monotonic() - started >= 0.5
    assert found.statistics().expired == 1


async def test_keyed_listener_hears_only_its_key(raw: socket.socket) -> None:
    """With a key, a beacon signed with it is listed; forged and unsigned ones are not."""
    async with discover(interface=LO, port=PORT, key="kunci") as keyed:
        forged = BeaconEncoder("00000000000000bb", epoch=1, key=b"salah")
        raw.send(forged.encode(Beacon("00000000000000bb", "forged", tcp=9), time.time()))
        raw.send(encode_body(Beacon("00000000000000cc", "unsigned", tcp=9)))
        async with BroadcastServer(LO, 0, announce=announce(key="kunci", name="real")):
            listed = await next_change(keyed, 3.0)
            assert listed.name == "real"
            stats = keyed.statistics()
            assert (stats.forged, stats.unsigned, stats.servers) == (1, 1, 1)
            assert [server.name for server in keyed.servers()] == ["real"]


async def test_beacon_flood_is_bounded(raw: socket.socket) -> None:
    """Thousands of fake ids fill at most max_servers entries; the real server stays listed."""
    async with (
        discover(interface=LO, port=PORT, max_servers=32) as flooded,
        BroadcastServer(LO, 0, announce=announce(name="real", interval=0.5)),
    ):
        assert (await next_change(flooded, 3.0)).name == "real"
        for batch in range(60):  # 3000 fake ids, 50 at a time (the kernel drops overflow)
            before = flooded.statistics().received
            for i in range(50):
                raw.send(encode_body(Beacon(f"{batch * 50 + i + 1:016x}", "fake", tcp=9)))
            await wait_until(lambda: flooded.statistics().received > before)  # noqa: B023
        stats = flooded.statistics()
        assert stats.servers <= 32
        assert stats.evicted > 0
        # The real one announces again within its interval and is back (or still) there.
        await wait_until(lambda: "real" in {server.name for server in flooded.servers()})


async def test_discover_once_lists_servers() -> None:
    """discover_once returns the servers heard within its window, by name."""
    async with (
        BroadcastServer(LO, 0, announce=announce(name="b", interval=0.5)) as b,
        BroadcastServer(LO, 0, announce=announce(name="a", interval=0.5)),
    ):
        servers = await discover_once(interface=LO, port=PORT, seconds=1.2)
    assert [server.name for server in servers] == ["a", "b"]
    assert servers[1].port == b.port


def test_announce_needs_an_interface() -> None:
    """Listening on all addresses, announce= needs an interface: never the default one."""
    with pytest.raises(ValueError, match="needs an interface"):
        BroadcastServer("0.0.0.0", 0, announce=True)
    with pytest.raises(ValueError, match="interval"):
        Announce(interval=0.1)
    with pytest.raises(ValueError, match="unknown interface"):
        BroadcastServer(LO, 0, announce=Announce(interface="192.0.2.254"))


async def test_bad_datagrams_do_not_break_listening(found: Discovery, raw: socket.socket) -> None:
    """Junk, chat messages and oversized datagrams are counted; the next beacon is heard."""
    for junk in (b"halo", b'{"type":"message","text":"x"}', b"{" * 2000, b"\xff"):
        raw.send(junk)
    raw.send(encode_body(Beacon("00000000000000dd", "after", tcp=9)))
    assert (await next_change(found)).name == "after"
    stats = found.statistics()
    assert (stats.received, stats.invalid, stats.oversized, stats.accepted) == (5, 3, 1, 1)


async def test_client_asks_which_of_several() -> None:
    """``chatcast client`` with no --host lists several servers, connects to the one typed."""
    async with (
        BroadcastServer(LO, 0, announce=announce(name="a", interval=0.5)) as a,
        BroadcastServer(LO, 0, announce=announce(name="b", interval=0.5)) as b,
    ):
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatcast", "client", "--interface", LO,
            "--discovery-port", str(PORT), "--discover-timeout", "1.2", "--name", "carol",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(timeout(15)):
            _, err = await client.communicate(b"7\n2\nhalo b\n")
        assert client.returncode == 0, err.decode()
        text = err.decode()
        assert re.search(r"1\. a .*\n  2\. b ", text), text
        assert "type a number from 1 to 2" in text  # the 7
        await wait_until(lambda: b.statistics().messages_in == 1)
        assert a.statistics().connections == 0


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
async def test_live_table_in_a_terminal() -> None:
    """``chatcast discover`` on a terminal redraws its table as a server comes and goes; a
    name with control characters is shown in caret notation."""
    command = [sys.executable, "-m", "chatcast", "discover", "--interface", LO,
               "--discovery-port", str(PORT)]  # fmt: skip
    with TmuxSession(command, cwd=Path.cwd()) as tmux:
        await asyncio.to_thread(tmux.wait_for, "no servers heard yet")
        async with BroadcastServer(LO, 0, announce=announce(name="\x1b[31mevil")) as server:
            screen = await asyncio.to_thread(tmux.wait_for, "evil")
            row = next(line for line in screen if "evil" in line)
            assert row.split()[:3] == ["^[[31mevil", LO, str(server.port)]
        await asyncio.to_thread(tmux.wait_for, "no servers heard yet")  # the goodbye


async def test_a_server_with_a_chat_page_announces_its_port() -> None:
    """The WEB column: a WebGateway on the server is in its beacons (found by a user)."""
    pytest.importorskip("websockets")
    from chatcast.web import WebGateway

    async with (
        BroadcastServer(LO, 0, announce=announce(name="web", interval=0.5)) as server,
        WebGateway(server, LO, 0) as gateway,
    ):
        # The first beacon went out as the server started, before the gateway: the next one
        # (0.5 s later) lists the page; the table keeps a server's latest beacon.
        servers = await discover_once(interface=LO, port=PORT, seconds=1.3)
    assert [(s.name, s.web) for s in servers] == [("web", gateway.port)]
