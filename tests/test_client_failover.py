"""A client given several servers moves on to the next when it loses one (issue #12).

Two independent servers on 127.0.0.1:0 stand in for a cluster: the second does not know the
first's sessions, so the resume there starts a new session with a ``gap`` notice. (In a
cluster the same client resumes with nothing missed; that is the cluster's own test.)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

from chatcast import BroadcastClient, BroadcastServer, ConnectionClosed, Message
from chatcast._core.addresses import format_address, parse_address
from chatcast.message import GAP, INFO, MESSAGE

from .conftest import receive_kind
from .helpers import timeout

Factory = Callable[..., Any]


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port of 127.0.0.1 bound but not listening: a connection to it is refused at once,
    and no other process can take it during the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def _until_info(client: BroadcastClient, starts: str, seconds: float = 5.0) -> Message:
    async with asyncio.timeout(timeout(seconds)):
        while True:
            message = await client.receive()
            if message.kind == INFO and message.text.startswith(starts):
                return message


# -- addresses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("chat.lab:1", ("chat.lab", 1)),
        ("[::1]:65535", ("::1", 65535)),
        ("[fe80::1%lo]:9", ("fe80::1%lo", 9)),
        (("10.0.0.5", 8443), ("10.0.0.5", 8443)),
        (["::1", 8080], ("::1", 8080)),
    ],
)
def test_addresses_parse_and_format_back(value: Any, address: tuple[str, int]) -> None:
    """'host:port', '[v6]:port' and (host, port) give (host, port), written back the same way."""
    assert parse_address(value) == address
    assert parse_address(format_address(address)) == address


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("127.0.0.1", "no port"),
        ("127.0.0.1:", "port '' is not a number"),
        ("127.0.0.1:http", "port 'http' is not a number"),
        ("127.0.0.1:0", r"port must be in 1\.\.65535, got 0"),
        ("127.0.0.1:65536", r"port must be in 1\.\.65535, got 65536"),
        (":8080", "the host is empty"),
        ("::1:8080", r"an IPv6 address needs brackets, e\.g\. '\[::1\]:8080'"),
        ("[::1]8080", r"e\.g\. '\[::1\]:8080'"),
        ("[::1:8080", r"e\.g\. '\[::1\]:8080'"),
        ("[chat.lab]:8080", "brackets are for IPv6"),
        ("chat lab:8080", "is not a host name or address"),
        ("chat\x1b:8080", "is not a host name or address"),
        (("127.0.0.1", 8080, 1), "HOST:PORT"),
        (("", 8080), "the host is empty"),
        (("[::1]", 8080), "brackets around a host only in a string"),
        (("127.0.0.1", 70000), r"port must be in 1\.\.65535"),
    ],
)
def test_bad_server_addresses_are_value_errors(value: Any, error: str) -> None:
    """Each bad address is a ValueError at construction naming the value and what is wrong."""
    with pytest.raises(ValueError, match=error) as caught:
        BroadcastClient("127.0.0.1", 8080, servers=[value])
    assert "server address" in str(caught.value)


def test_wrong_types_and_duplicates() -> None:
    """One string instead of a list, a non-address, a port of the wrong type, an address
    listed twice: each a clear error."""
    with pytest.raises(TypeError, match=r"not one: servers=\['127.0.0.1:1'\]"):
        BroadcastClient(servers="127.0.0.1:1")
    with pytest.raises(TypeError, match="HOST:PORT"):
        BroadcastClient(servers=[8081])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="port must be an int"):
        BroadcastClient(servers=[("127.0.0.1", 8081.0)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"127\.0\.0\.1:8080 is listed twice"):
        BroadcastClient("127.0.0.1", 8080, servers=["127.0.0.1:8080"])
    with pytest.raises(ValueError, match=r"\[::1\]:9 is listed twice"):
        BroadcastClient("127.0.0.1", 8080, servers=["[::1]:9", ("::1", 9)])
    client = BroadcastClient("127.0.0.1", 8080, servers=["[::1]:9", ("127.0.0.2", 9)])
    assert client.servers == (("127.0.0.1", 8080), ("::1", 9), ("127.0.0.2", 9))
    assert client.server_address == ("127.0.0.1", 8080)
    # Neither host nor port: the first of servers comes first; either one: it does.
    only = BroadcastClient(servers=[("::1", 9), "chat.lab:10"])
    assert (only.host, only.port, only.servers) == ("::1", 9, (("::1", 9), ("chat.lab", 10)))
    assert BroadcastClient(port=9, servers=["[::1]:9"]).servers[0] == ("127.0.0.1", 9)
    assert BroadcastClient(servers=[]).servers == (("127.0.0.1", 8080),)


# -- failover on real sockets ------------------------------------------------------------------


async def test_losing_the_first_server_moves_on_to_the_second(start_server: Factory) -> None:
    """The first server closes: the client lands on the second, says where, gives a
    could-not-resume gap (a lone server has no such session) and chats on, as itself."""
    first = await start_server()
    second = await start_server()
    alice = BroadcastClient(
        "127.0.0.1",
        first.port,
        servers=[f"127.0.0.1:{second.port}"],
        name="alice",
        room="den",
        reconnect=True,
        reconnect_delay=30,  # the second is reached without a backoff: none may be waited
        reconnect_max_delay=30,
    )
    async with BroadcastClient("127.0.0.1", second.port, name="bob", room="den") as bob:
        await alice.connect()
        try:
            assert alice.server_address == ("127.0.0.1", first.port)
            await first.aclose()
            lost = await _until_info(alice, "disconnected")
            assert "reconnecting" in lost.text
            back = await _until_info(alice, "reconnected")
            assert back.text == f"reconnected to 127.0.0.1:{second.port}"
            gap = await receive_kind(alice, GAP)
            assert "could not resume" in gap.text
            assert gap.missed is None
            assert alice.server_address == ("127.0.0.1", second.port)
            assert (alice.name, alice.room) == ("alice", "den")
            assert second.who("den") == ["alice", "bob"]
            accepted = await alice.send("hello from the second")
            assert accepted.id is not None
            assert (await receive_kind(bob, MESSAGE)).text == "hello from the second"
            await bob.send("and back")
            seen = await receive_kind(alice, MESSAGE)
            assert (seen.text, seen.sender, seen.history) == ("and back", "bob", False)
            stats = alice.statistics()
            assert (stats.connected, stats.reconnects, stats.failovers) == (True, 1, 1)
        finally:
            await alice.close()


async def test_connect_falls_through_an_unreachable_address(
    start_server: Factory, dead_port: int
) -> None:
    """connect() goes on past a refused address to the next; none answering is one OSError
    naming each address."""
    live = await start_server()
    async with BroadcastClient(
        "127.0.0.1", dead_port, servers=[("127.0.0.1", live.port)], name="carol"
    ) as carol:
        assert carol.server_address == ("127.0.0.1", live.port)
        assert live.who(carol.room) == ["carol"]
        assert carol.statistics().failovers == 0  # nothing was lost
    nowhere = BroadcastClient("127.0.0.1", dead_port, servers=[f"[::1]:{dead_port}"])
    with pytest.raises(OSError, match="could not connect to any server") as caught:
        await nowhere.connect()
    assert f"127.0.0.1:{dead_port}: " in str(caught.value)
    assert f"[::1]:{dead_port}: " in str(caught.value)


async def test_connect_gives_the_first_refusal_when_none_accepts(start_server: Factory) -> None:
    """Every server refuses (full): connect() raises a refusal, not a generic OSError."""
    first = await start_server(max_clients=1)
    second = await start_server(max_clients=1)
    async with (
        BroadcastClient("127.0.0.1", first.port, name="a"),
        BroadcastClient("127.0.0.1", second.port, name="b"),
    ):
        late = BroadcastClient("127.0.0.1", first.port, servers=[("127.0.0.1", second.port)])
        with pytest.raises(ConnectionClosed, match="full"):
            await late.connect()


async def test_a_dead_address_does_not_delay_the_live_one(
    start_server: Factory, dead_port: int
) -> None:
    """Lost, dead, live: the dead one is skipped at once, not after a backoff (30 s here)."""
    first = await start_server()
    live = await start_server()
    client = BroadcastClient(
        "127.0.0.1",
        first.port,
        servers=[("127.0.0.1", dead_port), ("127.0.0.1", live.port)],
        reconnect=True,
        reconnect_delay=30,
        reconnect_max_delay=30,
    )
    await client.connect()
    try:
        await first.aclose()
        back = await _until_info(client, "reconnected")
        assert back.text == f"reconnected to 127.0.0.1:{live.port}"
        assert client.statistics().failovers == 1
    finally:
        await client.close()


async def test_the_rotation_comes_back_to_the_lost_server(
    start_server: Factory, dead_port: int
) -> None:
    """The only other server is dead: after the backoff the client tries the lost one again,
    and resumes there (same server, not a failover)."""
    server = await start_server()
    port = server.port
    client = BroadcastClient(
        "127.0.0.1",
        port,
        servers=[("127.0.0.1", dead_port)],
        name="dora",
        reconnect=True,
        reconnect_delay=0.05,
    )
    await client.connect()
    try:
        await server.aclose()
        await _until_info(client, "disconnected")
        restarted = BroadcastServer("127.0.0.1", port, join_grace=0.05)
        await restarted.start()
        try:
            back = await _until_info(client, "reconnected")
            assert back.text == f"reconnected to 127.0.0.1:{port}"
            assert client.server_address == ("127.0.0.1", port)
            stats = client.statistics()
            assert (stats.reconnects, stats.failovers) == (1, 0)
            assert restarted.who(client.room) == ["dora"]
        finally:
            await client.close()
            await restarted.aclose()
    finally:
        await client.close()  # idempotent: also when the restart failed


async def test_tls_checks_each_server_against_its_own_host(start_server: Factory) -> None:
    """Over TLS, each address is verified against its own host: the second server's
    certificate names only 'localhost', the first's only '127.0.0.1'."""
    ca = trustme.CA()
    contexts = []
    for name in ("127.0.0.1", "localhost"):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(name).configure_cert(context)
        contexts.append(context)
    first = await start_server(ssl=contexts[0])
    second = await start_server(ssl=contexts[1])
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    client = BroadcastClient(
        "127.0.0.1",
        first.port,
        servers=[f"localhost:{second.port}"],
        ssl=trusting,
        reconnect=True,
        reconnect_delay=30,
        reconnect_max_delay=30,
    )
    await client.connect()
    try:
        await first.aclose()
        back = await _until_info(client, "reconnected")
        assert back.text == f"reconnected to localhost:{second.port}"
        assert client.statistics().failovers == 1
    finally:
        await client.close()


# -- the command line --------------------------------------------------------------------------


async def test_the_cli_client_fails_over_with_server_options(
    start_server: Factory, dead_port: int
) -> None:
    """`chatcast client --server DEAD --server A --server B`: lands on A, then on A's end
    (without --reconnect: --server implies it) says "reconnected to B" and chats there."""
    first = await start_server()
    second = await start_server()
    cli = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "chatcast", "client", "--name", "alice"],
        *["--server", f"127.0.0.1:{dead_port}", "--server", f"127.0.0.1:{first.port}"],
        *["--server", f"127.0.0.1:{second.port}"],
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert cli.stdin is not None
    seen: list[str] = []

    async def until(test: Callable[[str], bool]) -> str:
        assert cli.stdout is not None
        async with asyncio.timeout(timeout(15)):
            while True:
                line = (await cli.stdout.readline()).decode().rstrip("\n")
                assert line, "chatcast client ended: " + "\n".join(seen)
                seen.append(line)
                if test(line):
                    return line

    try:
        await until(lambda line: "you are alice" in line)
        assert f"* connected to 127.0.0.1:{first.port}" in seen
        async with BroadcastClient("127.0.0.1", second.port, name="bob") as bob:
            await first.aclose()
            await until(lambda line: line == f"* reconnected to 127.0.0.1:{second.port}")
            await until(lambda line: "could not resume" in line)
            cli.stdin.write(b"hello from alice\n")
            heard = await receive_kind(bob, MESSAGE, seconds=10)
            assert (heard.sender, heard.text) == ("alice", "hello from alice")
            await bob.send("hi alice")
            await until(lambda line: line.endswith("bob: hi alice"))
    finally:
        cli.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            cli.terminate()
        await cli.wait()


async def test_the_cli_rejects_a_bad_server_option() -> None:
    """`--server` without a port: a one-line error and status 1, no traceback."""
    cli = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "chatcast", "client", "--server", "localhost"],
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout(15)):
        out, err = await cli.communicate()
    assert cli.returncode == 1
    assert err.decode().strip() == "chatcast: server address 'localhost': no port " + (
        '(write "HOST:PORT", "[IPv6]:PORT" or a (host, port) tuple)'
    )
    assert out == b""
