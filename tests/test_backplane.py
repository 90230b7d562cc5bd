"""Several servers as one chat over a real Redis backplane.

The tests start their own ``redis-server`` on a free loopback port; without the binary (or
redis-py) they skip with the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from chatcast.client import BroadcastClient
from chatcast.exceptions import BackplaneError, ConnectionClosed, Refused
from chatcast.message import ANNOUNCEMENT, JOIN, LEAVE, MESSAGE, NICK, PRIVATE
from chatcast.server import BroadcastServer
from tests.conftest import TextPeer, receive_kind
from tests.helpers import timeout, wait_until

redis = pytest.importorskip(
    "redis", reason="redis-py is not installed (pip install chatcast[redis])"
)
REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

from chatcast.backplane import Envelope, RedisBackplane, RedisPubSubBackplane  # noqa: E402
from tests.redis_cluster import (  # noqa: E402
    RedisProcess,
    _client,
    _free_port,
    start_lone_server,
)


def test_envelope_round_trip() -> None:
    """Envelopes survive encoding; malformed ones are refused."""
    envelope = Envelope("srv", "batch", room="lobby", sender="a", texts=("x", "y\nz"), ts=1.5)
    assert Envelope.decode(envelope.encode()) == envelope
    for bad in (b"[]", b'{"k":"batch"}', b'{"o":"s","k":"nope"}', b'{"o":"s","k":"batch","t":[1]}'):
        with pytest.raises(ValueError):  # noqa: PT011 - ValueError is the documented contract
            Envelope.decode(bad)


async def test_two_servers_are_one_chat(cluster: Any) -> None:
    """Room messages, joins, leaves, nicks, privates and announcements cross servers."""
    one = await cluster()
    two = await cluster()
    alice = await _client(cluster, one, "alice")
    bob = await _client(cluster, two, "bob")
    joined = await receive_kind(alice, JOIN)
    while joined.sender != "bob":
        joined = await receive_kind(alice, JOIN)
    await alice.send("hello from one")
    got = await receive_kind(bob, MESSAGE)
    assert (got.sender, got.text, got.room) == ("alice", "hello from one", "lobby")
    await bob.send("psst", to="alice")
    got = await receive_kind(alice, PRIVATE)
    assert (got.sender, got.text, got.to) == ("bob", "psst", "alice")
    await one.broadcast("from the operator of one")
    assert (await receive_kind(bob, ANNOUNCEMENT)).text == "from the operator of one"
    await bob.nick("robert")
    got = await receive_kind(alice, NICK)
    assert (got.sender, got.text) == ("bob", "robert")
    assert await alice.who() == ["alice", "robert"]
    await bob.close()
    left = await receive_kind(alice, LEAVE)
    assert left.sender == "robert"


async def test_names_are_unique_across_servers(cluster: Any) -> None:
    """A name taken on one server is refused on another, and free again once released."""
    one = await cluster()
    two = await cluster()
    alice = await _client(cluster, one, "alice")
    with pytest.raises(ConnectionClosed, match="name 'alice' is taken"):
        await _client(cluster, two, "alice")
    with pytest.raises(ConnectionClosed, match="name 'ALICE' is taken"):
        await _client(cluster, two, "ALICE")  # one name whatever the case, cluster-wide
    await alice.close()
    await wait_until(lambda: "alice" not in one.who())

    await wait_until(lambda: "alice" not in two.who())
    again = await _client(cluster, two, "alice")
    assert again.name == "alice"


async def test_private_to_nobody_anywhere(cluster: Any) -> None:
    """A private message to a name on no server is refused with the usual reason."""
    one = await cluster()
    await cluster()
    alice = await _client(cluster, one, "alice")
    with pytest.raises(Refused, match=r"^no such user: ghost$"):
        await alice.send("hello?", to="ghost")


async def test_four_servers_hundred_clients(cluster: Any) -> None:
    """4 servers x 25 clients x 100 messages: each member gets each message once, in order."""
    servers = [await cluster() for _ in range(4)]
    count = 100
    clients = []
    for s, server in enumerate(servers):
        for c in range(25):
            room = "even" if c % 2 == 0 else "odd"
            clients.append(await _client(cluster, server, f"c{s}x{c}", room=room))
    members = {room: {c.name for c in clients if c.room == room} for room in ("even", "odd")}
    await wait_until(lambda: all(len(s.who()) == 100 for s in servers), 10)

    async def send_all(client: BroadcastClient) -> None:
        # Pipelined (post, then the acks): back to back, as fire-and-forget sends were.
        accepted = [await client.post(f"{n}") for n in range(count)]
        await asyncio.gather(*accepted)

    async def receive_all(client: BroadcastClient) -> dict[str, list[int]]:
        others = members[client.room or ""] - {client.name}
        seen: dict[str, list[int]] = {}
        total = len(others) * count
        while sum(map(len, seen.values())) < total:
            message = await receive_kind(client, MESSAGE, seconds=60)
            seen.setdefault(message.sender or "", []).append(int(message.text))
        assert set(seen) == others
        return seen

    async with asyncio.timeout(timeout(120)):
        receivers = [asyncio.create_task(receive_all(c)) for c in clients]
        await asyncio.gather(*(send_all(c) for c in clients))
        results = await asyncio.gather(*receivers)
    for seen in results:
        for numbers in seen.values():
            assert numbers == list(range(count))  # exactly once, in order
    published = sum(s.statistics().backplane_published for s in servers)
    assert published < 100 * count  # batches cross once per server, not once per client
    # Busy servers did not take their own lateness for a dead Redis (issue #12).
    assert [s.statistics().backplane_reconnects for s in servers] == [0, 0, 0, 0]
    assert all(s.statistics().backplane_connected for s in servers)


async def test_a_blocked_loop_is_not_a_dead_redis(cluster: Any) -> None:
    """A loop that cannot run for four heartbeats (CPU starved, a long callback) comes back
    to a Redis that answered all along: no "down", nothing lost across servers."""
    one = await cluster()
    two = await cluster()
    alice = await _client(cluster, one, "alice")
    bob = await _client(cluster, two, "bob")
    await wait_until(lambda: len(one.who()) == 2 and len(two.who()) == 2)
    time.sleep(4 * 0.5)  # noqa: ASYNC251 - the load itself: the loop blocked, not a wait
    await alice.send("after the stall")
    got = await receive_kind(bob, MESSAGE, seconds=10)
    assert got.text == "after the stall"
    await bob.send("and back")
    assert (await receive_kind(alice, MESSAGE, seconds=10)).text == "and back"
    assert one.statistics().backplane_reconnects == 0
    assert one.statistics().backplane_connected


async def test_redis_outage(cluster: Any, redis_server: RedisProcess) -> None:
    """Redis dies: local rooms keep working, losses are counted; Redis returns: it resumes."""
    one = await cluster()
    two = await cluster()
    alice = await _client(cluster, one, "alice")
    carol = await _client(cluster, one, "carol")
    bob = await _client(cluster, two, "bob")
    await alice.send("before")
    assert (await receive_kind(bob, MESSAGE)).text == "before"
    assert (await receive_kind(carol, MESSAGE)).text == "before"
    events = one.events()
    redis_server.kill()
    await wait_until(lambda: not one.statistics().backplane_connected, 10)
    await alice.send("during")
    assert (await receive_kind(carol, MESSAGE)).text == "during"  # local delivery never stops
    # On the other server: not silently lost, refused with the reason.
    with pytest.raises(Refused, match=r"^bob is on another server, which cannot be reached now$"):
        await alice.send("psst", to="bob")
    await wait_until(lambda: one.statistics().backplane_failures >= 1)
    redis_server.start()
    async with asyncio.timeout(timeout(20)):
        async for event in events:
            if event.sender == "backplane" and "reconnected" in event.text:
                break
    await events.aclose()
    await wait_until(lambda: two.statistics().backplane_connected, 20)
    await alice.send("after")
    got = await receive_kind(bob, MESSAGE, seconds=10)
    assert got.text == "after"  # "during" was lost across servers (at most once), and counted
    assert one.statistics().backplane_reconnects >= 1
    assert one.statistics().backplane_lost_messages >= 1
    await wait_until(lambda: two.who() == ["alice", "bob", "carol"], 10)  # names resynced


async def test_workers_share_one_port(redis_server: RedisProcess) -> None:
    """`chatcast server --workers 2` serves clients from both processes as one room."""
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatcast", "server", "--port", str(port),
        "--workers", "2", "--backplane", redis_server.url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None
    clients: list[BroadcastClient] = []
    try:
        ready = 0
        async with asyncio.timeout(timeout(20)):
            while ready < 2:
                line = await process.stdout.readline()
                assert line, "the server exited early"
                ready += b"worker ready" in line
        for n in range(16):
            client = BroadcastClient("127.0.0.1", port, name=f"w{n}")
            await client.connect()
            clients.append(client)
        await clients[0].send("to everyone")
        for client in clients[1:]:
            assert (await receive_kind(client, MESSAGE, seconds=10)).text == "to everyone"
        # The other worker's last joins cross Redis while we ask: the list converges.
        everyone = sorted(f"w{n}" for n in range(16))
        async with asyncio.timeout(timeout(10)):
            while await clients[0].who() != everyone:  # noqa: ASYNC110 - asking, not sleeping
                await asyncio.sleep(0.05)
        process.stdin.write(b"halo workers\n")  # typed on the parent's terminal
        await process.stdin.drain()
        for client in clients:
            got = await receive_kind(client, ANNOUNCEMENT, seconds=10)
            assert got.text == "halo workers"
        # Both processes hold clients (the odds that SO_REUSEPORT put all 16 on one: 2^-15).
        r = redis.asyncio.Redis.from_url(redis_server.url)
        holders = {v.split(b"|")[0] for v in (await r.hgetall("chatcast:names")).values()}
        await r.aclose()
        assert len(holders) == 2
        process.stdin.write(b"/quit\n")  # typed on the parent's terminal: all stop, cleanly
        await process.stdin.drain()
        async with asyncio.timeout(timeout(15)):
            await process.wait()
    finally:
        for client in clients:
            await client.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0


async def test_one_name_for_two_clients_of_one_server(cluster: Any) -> None:
    """Two hellos for one name on one server at the same instant: one gets it."""
    # A join grace longer than the test: with the fixture's 50 ms, CPU contention can let a
    # guest's join be announced before its hello, and that notice reach the other peer (in
    # JSON mode, its claim pending) before its welcome.
    one = await cluster(join_grace=timeout(30))
    peers = [await TextPeer.connect(one.port) for _ in range(2)]
    try:
        for peer in peers:
            await peer.line()  # the welcome line
        for peer in peers:
            peer.send('{"type":"hello","name":"zed"}\n')
        replies = [json.loads(await peer.until(lambda line: line[0] == "{")) for peer in peers]
        assert sorted(reply["type"] for reply in replies) == ["error", "welcome"]
        assert one.who() == ["zed"]
    finally:
        for peer in peers:
            await peer.close()


async def test_a_closing_server_tells_the_others_who_left(cluster: Any) -> None:
    """A server shutting down tells the rooms on the other servers that its clients left."""
    one = await cluster()
    two = await cluster()
    await _client(cluster, one, "alice")
    bob = await _client(cluster, two, "bob")
    await wait_until(lambda: "alice" in two.who())
    await one.aclose()
    left = await receive_kind(bob, LEAVE)
    assert (left.sender, left.text) == ("alice", "server shutting down")
    assert two.who() == ["bob"]


async def test_a_crashed_server_s_clients_leave(cluster: Any, redis_server: RedisProcess) -> None:
    """A server killed with SIGKILL says nothing; the others notice it is gone (its liveness
    key expires), tell their rooms its clients left, and free its names."""
    two = await cluster()
    bob = await _client(cluster, two, "bob")
    process, port = await start_lone_server(redis_server.url, cluster.prefix)
    try:
        await _client(cluster, BroadcastServer("127.0.0.1", port), "alice")
        await wait_until(lambda: "alice" in two.who())
    finally:
        process.kill()
        await process.wait()
    left = await receive_kind(bob, LEAVE, seconds=20)
    assert (left.sender, left.text) == ("alice", "connection lost")
    again = await _client(cluster, two, "alice")  # the dead server's name is free
    assert again.name == "alice"


async def test_hung_redis_and_a_name_given_up_meanwhile(
    cluster: Any, redis_server: RedisProcess
) -> None:
    """Redis hangs (SIGSTOP): noticed by the heartbeat; a name given up meanwhile is free
    again once Redis is back (the stale entry is removed on resync), and its room is told."""
    one = await cluster()
    two = await cluster()
    alice = await _client(cluster, one, "alice")
    bob = await _client(cluster, two, "bob")
    await wait_until(lambda: "alice" in two.who())
    redis_server.pause()
    try:
        await wait_until(lambda: one.statistics().backplane_connected is False, 10)
        await alice.close()  # its leave cannot cross, its name cannot be released
        await wait_until(lambda: "alice" not in one.who())
    finally:
        redis_server.resume()
    await wait_until(lambda: one.statistics().backplane_connected is True, 30)
    left = await receive_kind(bob, LEAVE, seconds=20)  # learnt from the refresh
    assert left.sender == "alice"
    again = await _client(cluster, two, "alice")
    assert again.name == "alice"
    assert one.statistics().backplane_reconnects >= 1


async def test_redis_down_at_start(redis_server: RedisProcess) -> None:
    """A server starts without Redis (serving locally) and reports "down", then "up"."""
    redis_server.kill()
    backplane = RedisBackplane(redis_server.url, prefix=f"t-{uuid.uuid4().hex[:8]}", heartbeat=0.5)
    server = BroadcastServer("127.0.0.1", 0, backplane=backplane)
    events = server.events()
    try:
        async with asyncio.timeout(timeout(10)):
            await server.start()
            first = await anext(events)
        assert (first.sender, first.text.split(":")[0]) == ("backplane", "backplane down")
        assert server.statistics().backplane_connected is False
        redis_server.start()
        async with asyncio.timeout(timeout(20)):
            second = await anext(events)
        assert (second.sender, second.text) == ("backplane", "backplane reconnected and resynced")
        assert server.statistics().backplane_reconnects == 1
    finally:
        await events.aclose()
        await server.aclose()


async def test_a_wrong_password_is_an_error_at_start() -> None:
    """Redis refusing our password fails start() with BackplaneError (no endless retries),
    and the password never shows in the message."""
    protected = RedisProcess("--requirepass", "sesame")
    protected.start()
    try:
        url = f"redis://:open-sesame@127.0.0.1:{protected.port}/0"
        server = BroadcastServer("127.0.0.1", 0, backplane=RedisBackplane(url))
        with pytest.raises(BackplaneError, match=r"redis://:\*\*\*@127\.0\.0\.1") as info:
            async with asyncio.timeout(timeout(10)):
                await server.start()
        assert "open-sesame" not in str(info.value)
        assert not server.is_serving
    finally:
        protected.kill()


@pytest.mark.parametrize("engine", [RedisBackplane, RedisPubSubBackplane])
async def test_databases_are_separate_chats(redis_server: RedisProcess, engine: Any) -> None:
    """One Redis, one prefix, databases 0 and 1: two chats (pub/sub ignores the database,
    so the channel names carry it; the log's keys are per database)."""
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    base = redis_server.url.rsplit("/", 1)[0]
    servers = [
        BroadcastServer("127.0.0.1", 0, backplane=engine(f"{base}/{db}", prefix=prefix))
        for db in (0, 1)
    ]
    dbs = [redis.asyncio.Redis.from_url(f"{base}/{db}") for db in (0, 1)]
    try:
        for server in servers:
            await server.start()
        if engine is RedisPubSubBackplane:
            channels = {c.decode() for c in await dbs[0].pubsub_channels(f"{prefix}:*")}
            assert channels == {f"{prefix}:events:db0", f"{prefix}:events:db1"}
        else:
            for server in servers:
                await server.broadcast("hello")
            await wait_until(lambda: all(s.statistics().backplane_published >= 1 for s in servers))
            for db in dbs:
                assert await db.xlen(f"{prefix}:all") == 1  # each chat has its own log
    finally:
        for db in dbs:
            await db.aclose()
        for server in servers:
            await server.aclose()


async def test_workers_keep_secrets_off_command_lines_and_die_with_the_parent() -> None:
    """`--workers`: the backplane URL (with its password) reaches the workers through the
    environment, not argv; killing the parent (SIGKILL) stops the workers too."""
    protected = RedisProcess("--requirepass", "sesame")
    protected.start()
    port = _free_port()
    url = f"redis://:sesame@127.0.0.1:{protected.port}/0"
    env = {**os.environ, "CHATCAST_BACKPLANE": url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatcast", "server", "--port", str(port), "--workers", "2",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        pids: list[int] = []
        lines: list[str] = []
        async with asyncio.timeout(timeout(20)):
            while len(pids) < 2:
                line = (await process.stdout.readline()).decode()
                assert line, f"the server exited early: {lines}"
                lines.append(line)
                if "worker ready pid" in line:
                    pids.append(int(line.split("pid ")[1].split()[0]))
        assert "redis://:***@" in lines[0]
        assert not [line for line in lines if "sesame" in line]
        for pid in pids:
            cmdline = await asyncio.to_thread(Path(f"/proc/{pid}/cmdline").read_bytes)
            assert b"sesame" not in cmdline
        process.kill()  # the parent dies without a word
        await process.wait()

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        await wait_until(refused, 15)  # no orphan worker serves the port
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        protected.kill()
