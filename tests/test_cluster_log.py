"""The cluster's log (#12): Redis Streams carry every room, ids are cluster-wide, a server reads
only the rooms it hosts, a client resumes on another server, and neither a Redis restart nor a
bad entry loses or duplicates anything.

Real redis-server processes of the test's own on 127.0.0.1 (see ``tests/test_backplane.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("redis")

import redis.asyncio

from chatcast import BroadcastClient, BroadcastServer
from chatcast.backplane import RedisBackplane
from chatcast.exceptions import ConnectionClosed
from chatcast.message import GAP, JOIN, LEAVE, MESSAGE, PRIVATE, Message
from tests.conftest import TextPeer, receive_kind
from tests.helpers import timeout, wait_until
from tests.redis_cluster import REDIS_SERVER, RedisProcess, _client, start_lone_server

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


async def _messages(client: BroadcastClient, count: int, seconds: float = 20) -> list[Message]:
    got: list[Message] = []
    async with asyncio.timeout(timeout(seconds)):
        while len(got) < count:
            message = await client.receive()
            if message.kind in (MESSAGE, PRIVATE, GAP):
                got.append(message)
    return got


async def test_ids_are_cluster_wide_and_one_order_per_room(cluster: Any) -> None:
    """Two servers, senders on both, one room: every member sees the same messages with the
    same ids, increasing, in the same order."""
    one, two = await cluster(), await cluster()
    alice = await _client(cluster, one, "alice")
    bob = await _client(cluster, two, "bob")
    carol = await _client(cluster, one, "carol")
    dave = await _client(cluster, two, "dave")
    await wait_until(lambda: len(one.who()) == 4 and len(two.who()) == 4)
    sends = [alice.post(f"a{n}") for n in range(30)] + [bob.post(f"b{n}") for n in range(30)]
    await asyncio.gather(*[await s for s in sends])
    seen = {}
    for client in (carol, dave):
        got = await _messages(client, 60)
        seen[client.name] = [(m.id, m.sender, m.text) for m in got]
        ids = [m.id or 0 for m in got]
        assert ids == sorted(ids)
        assert len(set(ids)) == 60
    assert seen["carol"] == seen["dave"]  # one order, one numbering, on both servers


async def test_a_server_reads_only_the_rooms_it_hosts(cluster: Any) -> None:
    """Sharding: chat in a room nobody on a server is in does not reach that server; once
    one of its clients joins, it reads the room, and the join brings the room's history."""
    one, two = await cluster(), await cluster()
    alice = await _client(cluster, one, "alice", room="x")
    bob = await _client(cluster, two, "bob", room="y")
    await wait_until(lambda: len(one.who()) == 2 and len(two.who()) == 2)
    before = two.statistics().backplane_received
    for n in range(5):
        await alice.send(f"in x {n}")
    await asyncio.sleep(0)
    await alice.send("last in x")  # acknowledged: in the log
    assert two.statistics().backplane_received == before  # room x is not read on two
    asked = await bob.history("x")  # from the log: nobody on two is in x
    assert [m.text for m in asked] == [f"in x {n}" for n in range(5)] + ["last in x"]
    assert [m.text for m in await bob.history("x", limit=2)] == ["in x 4", "last in x"]
    assert [m.text for m in await bob.history("x", after=asked[3].id, limit=1)] == ["in x 4"]
    assert two.statistics().backplane_received == before  # asking did not start reading it
    await bob.join("x")
    history = await _messages(bob, 6)
    # Before bob's server reads the room, its history comes from the log (what was said
    # just before he joined may come live: his server may not have heard of it yet).
    assert [m.text for m in history] == [f"in x {n}" for n in range(5)] + ["last in x"]
    kept = await bob.history()  # the room's history is served here too, from the log
    assert [m.text for m in kept] == [m.text for m in history]
    assert [m.id for m in kept] == [m.id for m in history]
    await alice.send("live in x")
    live = await receive_kind(bob, MESSAGE)
    assert (live.text, live.history) == ("live in x", False)
    assert live.id is not None
    assert live.id > (history[-1].id or 0)


async def test_a_client_resumes_on_another_server_after_sigkill(
    cluster: Any, redis_server: RedisProcess
) -> None:
    """Two servers and Redis; alice's server is SIGKILLed while bob keeps talking: alice
    reconnects to the other server, resumes there under her name, and gets every message
    she missed once, in order, then the live ones."""
    two = await cluster()
    process, port = await start_lone_server(redis_server.url, cluster.prefix)
    try:
        alice = BroadcastClient(
            "127.0.0.1",
            port,
            name="alice",
            servers=[("127.0.0.1", two.port)],
            reconnect=True,
            reconnect_delay=0.05,
        )
        await alice.connect()
        cluster.clients.append(alice)
        bob = await _client(cluster, two, "bob")
        await wait_until(lambda: "alice" in two.who())
        for n in range(5):
            await bob.send(f"before {n}")
        before = await _messages(alice, 5)
        await alice.send("hello from one")
        assert (await receive_kind(bob, MESSAGE)).text == "hello from one"
        # Her server hangs, then dies: what bob says meanwhile reaches only the log.
        process.send_signal(signal.SIGSTOP)
        for n in range(20):
            await bob.send(f"missed {n}")
        await bob.send("psst", to="alice")  # to her name, while she is away
    finally:
        process.kill()
        await process.wait()
    got = await _messages(alice, 21)
    assert [m.text for m in got] == [f"missed {n}" for n in range(20)] + ["psst"]
    assert all(m.history for m in got)
    assert alice.name == "alice"
    assert alice.server_address == ("127.0.0.1", two.port)
    await bob.send("live")
    live = await receive_kind(alice, MESSAGE)
    assert (live.text, live.history) == ("live", False)
    ids = [m.id or 0 for m in [*before, *got, live]]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert alice.statistics().duplicates == 0
    assert two.statistics().resumes == 1
    await alice.send("back")
    assert (await receive_kind(bob, MESSAGE)).text == "back"
    assert sorted(two.who()) == ["alice", "bob"]


async def test_a_redis_restart_under_traffic_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    """Redis with its persistence on is restarted while messages flow between two servers:
    messages wait for it, then go on; every one arrives once, in order."""
    store = RedisProcess("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))
    store.start()
    try:
        async with _two_servers(store.url, heartbeat=2.0) as (servers, alice, bob):
            count = 200
            restarted = asyncio.Event()

            async def send() -> None:
                for n in range(count):
                    await alice.post(f"{n}")
                    if n == count // 2:
                        store.kill()
                        store.start()  # same port, same append-only file
                        restarted.set()
                    await asyncio.sleep(0.002)

            sender = asyncio.create_task(send())
            got = await _messages(bob, count, seconds=40)
            await sender
            assert restarted.is_set()
            assert [m.text for m in got] == [str(n) for n in range(count)]
            ids = [m.id or 0 for m in got]
            assert ids == sorted(ids)
            assert len(set(ids)) == count
            assert bob.statistics().duplicates == 0
            assert servers[0].statistics().backplane_lost_messages == 0
    finally:
        store.kill()


@contextlib.asynccontextmanager
async def _two_servers(
    url: str, heartbeat: float
) -> AsyncIterator[tuple[list[BroadcastServer], BroadcastClient, BroadcastClient]]:
    """Two servers on the Redis at ``url``, alice on the first and bob on the second."""
    servers: list[BroadcastServer] = []
    clients: list[BroadcastClient] = []
    try:
        for _ in range(2):
            backplane = RedisBackplane(url, heartbeat=heartbeat)
            server = BroadcastServer("127.0.0.1", 0, backplane=backplane, join_grace=0.05)
            await server.start()
            servers.append(server)
        alice = BroadcastClient("127.0.0.1", servers[0].port, name="alice", ack_timeout=30)
        bob = BroadcastClient("127.0.0.1", servers[1].port, name="bob")
        for client in (alice, bob):
            await client.connect()
            clients.append(client)
        await wait_until(lambda: len(servers[1].who()) == 2)
        yield servers, alice, bob
    finally:
        for client in clients:
            await client.close()
        for server in servers:
            await server.aclose()


async def test_bad_entries_in_the_log_are_skipped_and_counted(
    cluster: Any, redis_server: RedisProcess
) -> None:
    """Malformed, foreign and from-the-future entries in a room's stream are skipped and
    counted; the chat goes on."""
    one, two = await cluster(), await cluster()
    alice = await _client(cluster, one, "alice")
    bob = await _client(cluster, two, "bob")
    await wait_until(lambda: len(two.who()) == 2)
    await alice.send("first")
    assert (await receive_kind(bob, MESSAGE)).text == "first"
    stream = f"{cluster.prefix}:room:lobby"
    r = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        await r.xadd(stream, {"foo": "bar"})  # foreign: no envelope
        await r.xadd(stream, {"e": "{not json", "i": "999"})  # malformed
        await r.xadd(stream, {"e": b"\xff\xfe", "i": "x"})  # not even an id
        future = '{"o":"x","k":"batch","r":"lobby","s":"mallory","t":["from the future"]}'
        await r.xadd(stream, {"e": future, "i": str(10**15), "k": "0" * 40})  # an id never given
    finally:
        await r.aclose()
    await alice.send("second")
    got = await receive_kind(bob, MESSAGE)
    assert got.text == "second"  # nothing bad in between, and the chat goes on
    await wait_until(lambda: two.statistics().backplane_bad_entries == 4)
    assert one.statistics().backplane_bad_entries == 4  # its own server reads the room too
    await bob.send("third")
    assert (await receive_kind(alice, MESSAGE)).text == "third"
    assert alice.statistics().duplicates == bob.statistics().duplicates == 0


async def test_a_graceful_stop_hands_sessions_to_the_cluster(cluster: Any) -> None:
    """A server stopped on purpose (SIGTERM, close()) leaves its clients' sessions in the
    cluster: a client resumes on another server with nothing missed."""
    one, two = await cluster(), await cluster()
    bob = await _client(cluster, two, "bob")
    alice = BroadcastClient(
        "127.0.0.1", one.port, name="alice", servers=[f"127.0.0.1:{two.port}"],
        reconnect=True, reconnect_delay=0.05,
    )  # fmt: skip
    await alice.connect()
    cluster.clients.append(alice)
    while (await receive_kind(bob, JOIN)).sender != "alice":
        pass  # bob saw her come
    await one.aclose()
    await bob.send("while you moved")
    got = await receive_kind(alice, MESSAGE, seconds=20)
    assert got.text == "while you moved"
    assert alice.name == "alice"
    assert not [m for m in await _drain(alice) if m.kind == GAP]
    await wait_until(lambda: two.statistics().resumes == 1)
    kinds = [m.kind for m in await _drain(bob) if m.sender == "alice"]
    assert kinds in ([], [LEAVE, JOIN])  # at most: she left with the server, and came back


async def _drain(client: BroadcastClient) -> list[Message]:
    got = []
    while True:
        try:
            async with asyncio.timeout(0.2):
                got.append(await client.receive())
        except TimeoutError:
            return got


@pytest.mark.slow
async def test_while_redis_is_down_private_messages_take_no_ids(
    cluster: Any, redis_server: RedisProcess
) -> None:
    """While Redis counts as down, a private message between two members of one server goes
    without an id (ids are the log's): one numbered locally would take an id the log gives
    again once it is back, and the recipient would drop that message as a duplicate."""
    one = await cluster()
    alice = await _client(cluster, one, "alice")
    bob = await _client(cluster, one, "bob")
    await alice.send("first")
    assert (await receive_kind(bob, MESSAGE)).text == "first"
    redis_server.pause()
    try:
        await wait_until(lambda: not one.statistics().backplane_connected, 10)
        await alice.send("psst", to="bob")
        private = await receive_kind(bob, PRIVATE)
        assert (private.text, private.id) == ("psst", None)
    finally:
        redis_server.resume()
    await wait_until(lambda: one.statistics().backplane_connected, 20)
    await alice.send("after")
    got = await receive_kind(bob, MESSAGE, seconds=10)
    assert got.text == "after"
    assert bob.statistics().duplicates == 0


@pytest.mark.slow
async def test_an_empty_redis_restart_loses_no_acknowledged_message(
    redis_server: RedisProcess,
) -> None:
    """Redis restarts empty (no persistence) while a member keeps sending: what was
    acknowledged is delivered, with increasing ids (the appender does not append with the
    counter back at 0, or with the old secret, before its server has resynced)."""
    async with _two_servers(redis_server.url, heartbeat=3.0) as (_, alice, bob):
        for n in range(3):
            await alice.send(f"before {n}")
        redis_server.kill()
        # The readers back off meanwhile (up to seconds); the appender retries more often.
        sends = []
        for n in range(6):
            sends.append(await alice.post(f"during {n}"))
            await asyncio.sleep(0.4)
        redis_server.start()
        acked = await asyncio.gather(*sends)
        await alice.send("after")
        got = await _messages(bob, 10, seconds=30)
        assert [m.text for m in got] == [f"before {n}" for n in range(3)] + [
            f"during {n}" for n in range(6)
        ] + ["after"]
        ids = [m.id or 0 for m in got]
        assert ids == sorted(ids)
        assert len(set(ids)) == 10
        assert all(m.id for m in acked)
        assert bob.statistics().duplicates == 0


async def test_a_session_resumed_later_does_not_take_a_name_someone_else_took(
    cluster: Any,
) -> None:
    """A server stops; the name of its client is free again and another member takes it on
    another server. The old session's token, presented later on a third server, does not
    take the name from that member (it gets a new session)."""
    one, two, three = await cluster(), await cluster(), await cluster()
    alice = await _client(cluster, one, "alice")
    token = alice._protocol.session
    assert token is not None
    await wait_until(lambda: "alice" in three.who())
    await one.aclose()
    await wait_until(lambda: "alice" not in three.who())
    carol = await _client(cluster, three, "alice")  # the name was given back
    assert carol.name == "alice"
    await wait_until(lambda: "alice" in two.who())
    late = BroadcastClient("127.0.0.1", two.port, name="late")
    late._protocol.session = token
    await late.connect()
    cluster.clients.append(late)
    assert late.name == "late"  # a new session: the name is carol's
    await late.send("hello")
    got = await receive_kind(carol, MESSAGE)
    assert (got.sender, got.text) == ("late", "hello")
    assert carol.connected
    assert sorted(three.who()) == ["alice", "late"]


async def test_a_room_key_that_is_not_a_stream_does_not_stop_the_others(
    cluster: Any, redis_server: RedisProcess
) -> None:
    """Something else wrote a plain value where a room's stream goes: that room is refused
    (its messages go locally only, counted as lost), and every other room goes on."""
    one, two = await cluster(), await cluster()
    alice = await _client(cluster, one, "alice")
    bob = await _client(cluster, two, "bob")
    await wait_until(lambda: len(two.who()) == 2)
    r = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        await r.set(f"{cluster.prefix}:room:bad", "not a stream")
    finally:
        await r.aclose()
    carol = await _client(cluster, one, "carol", room="bad")
    erin = await _client(cluster, one, "erin", room="bad")
    await _client(cluster, two, "dave", room="bad")
    await wait_until(lambda: len(two.who()) == 5)
    sends = [await carol.post(f"bad {n}") for n in range(5)]
    sends += [await alice.post(f"lobby {n}") for n in range(5)]
    await asyncio.gather(*sends)  # accepted: the bad room's locally only
    got = await _messages(bob, 5, seconds=5)
    assert [m.text for m in got] == [f"lobby {n}" for n in range(5)]
    got = await _messages(erin, 5, seconds=5)
    assert [m.text for m in got] == [f"bad {n}" for n in range(5)]
    assert one.statistics().backplane_connected
    assert two.statistics().backplane_connected
    assert one.statistics().backplane_lost_messages == 5


async def test_waiting_for_a_room_that_is_given_up_meanwhile_ends() -> None:
    """A member joins a room not read yet, and leaves before it is: the room is no longer
    followed; whoever waited for it to be read (the member's held output) is let go."""
    backplane = RedisBackplane("redis://127.0.0.1:1/0", heartbeat=0.05)
    backplane._state = "up"  # as if connected: the wait is for the room, not for Redis
    waiting = asyncio.create_task(backplane.following("x"))
    await asyncio.sleep(0)
    backplane.unfollow("x")
    async with asyncio.timeout(timeout(2)):
        await waiting


async def test_a_session_resumed_elsewhere_is_not_claimed_back_on_a_resync(
    cluster: Any,
) -> None:
    """A session moves to another server (its old server closes the ghost); when the old
    server later re-registers its names with Redis (after any blip), the name is not among
    them: once its member quits, the name is free."""
    one, two = await cluster(), await cluster()
    ghost = await _client(cluster, one, "alice")
    token = ghost._protocol.session
    await wait_until(lambda: "alice" in two.who())
    alice = BroadcastClient("127.0.0.1", two.port, name="someone")
    alice._protocol.session = token
    await alice.connect()
    assert alice.name == "alice"  # resumed on two
    await wait_until(lambda: not ghost.connected)  # one let go of the ghost
    await one._cluster.backplane._resync()  # as after a blip of one's link to Redis
    await alice.close()
    await wait_until(lambda: "alice" not in one.who() and "alice" not in two.who())
    again = await _client(cluster, two, "alice")  # not one's: two asks Redis
    assert again.name == "alice"


async def test_one_read_of_several_streams_is_delivered_in_id_order(
    cluster: Any, redis_server: RedisProcess
) -> None:
    """A server that reads behind (busy) gets entries of a room's stream and of the stream
    of the rest (a private message) in one read: they are delivered in id order, so the
    member's client, which drops an id it has passed, loses neither."""
    import redis as sync_redis

    one = await cluster()
    alice = await _client(cluster, one, "alice")
    await alice.send("first")  # the streams exist and are read
    prefix = cluster.prefix
    room = '{"o":"elsewhere","k":"batch","r":"lobby","s":"bob","t":["%s"],"ts":1.0}'
    private = '{"o":"elsewhere","k":"private","s":"bob","to":"alice","t":["psst"],"ts":1.0}'
    # A blocking client: the server's loop is busy meanwhile, as under load, so that its
    # next read finds entries in both streams (appended in id order, as the script does).
    r = sync_redis.Redis.from_url(redis_server.url)
    try:
        raw = r.get(f"{prefix}:secret")
        assert isinstance(raw, bytes)
        secret = raw.decode()
        base = int(r.incrby(f"{prefix}:ids", 3)) - 2

        def signed(ident: int) -> str:
            return hashlib.sha1(f"{secret}:{ident}".encode()).hexdigest()

        r.xadd(f"{prefix}:room:lobby", {"e": room % "a", "i": base, "k": signed(base)})
        r.xadd(f"{prefix}:room:lobby", {"e": room % "b", "i": base + 1, "k": signed(base + 1)})
        r.xadd(f"{prefix}:all", {"e": private, "i": base + 2, "k": signed(base + 2)})
    finally:
        r.close()
    got = await _messages(alice, 3, seconds=5)
    assert [(m.text, m.id) for m in got] == [("a", base), ("b", base + 1), ("psst", base + 2)]
    assert alice.statistics().duplicates == 0


async def test_a_resume_past_what_the_log_still_holds_is_told_of_the_gap() -> None:
    """A member away while its room's stream was trimmed past its last id resumes: it gets
    what the stream still holds, after a gap."""
    store = RedisProcess("--stream-node-max-entries", "2")
    store.start()
    server = BroadcastServer(
        "127.0.0.1", 0, backplane=RedisBackplane(store.url, heartbeat=0.5, stream_length=4)
    )
    clients: list[BroadcastClient] = []
    try:
        await server.start()
        alice = BroadcastClient("127.0.0.1", server.port, name="alice")
        bob = BroadcastClient("127.0.0.1", server.port, name="bob")
        for client in (alice, bob):
            await client.connect()
            clients.append(client)
        await bob.send("seen")
        assert (await receive_kind(alice, MESSAGE)).text == "seen"
        token, last = alice._protocol.session, alice._protocol.last_id
        for n in range(20):  # alice's link is as good as dead: she comes back with ``last``
            await bob.send(f"missed {n}")
        again = BroadcastClient("127.0.0.1", server.port, name="alice")
        again._protocol.session, again._protocol.last_id = token, last
        await again.connect()
        clients.append(again)
        got = await _messages(again, 1)
        while got[-1].text != "missed 19":
            got += await _messages(again, 1)
        assert got[0].kind == GAP
        assert 1 < len(got) < 21  # what the stream still holds, the newest last
        assert [m.text for m in got[1:]] == [f"missed {n}" for n in range(21 - len(got), 20)]
    finally:
        for client in clients:
            await client.close()
        await server.aclose()
        store.kill()


async def test_the_server_s_private_message_to_a_member_away_waits_for_its_resume(
    cluster: Any,
) -> None:
    """``server.send()`` to a member whose link dropped (it may resume) is accepted and
    replayed when the member comes back, as a lone server does."""
    one = await cluster()
    alice = await _client(cluster, one, "alice")
    await alice.send("hello")
    token, last = alice._protocol.session, alice._protocol.last_id
    assert alice._writer is not None
    alice._writer.transport.abort()  # her link drops; her session waits
    await wait_until(lambda: one.who() == [])
    published = one.statistics().backplane_published
    await one.send("alice", "while you were away")
    await wait_until(lambda: one.statistics().backplane_published > published)  # in the log
    again = BroadcastClient("127.0.0.1", one.port, name="alice")
    again._protocol.session, again._protocol.last_id = token, last
    await again.connect()
    cluster.clients.append(again)
    got = await receive_kind(again, PRIVATE, history=True)
    assert (got.text, got.sender, got.history) == ("while you were away", "server", True)


async def test_a_new_server_gives_a_room_s_past_as_history_and_its_news_live(
    cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that has just started (it knows no ids yet) starts reading a room for a
    member: what was said there before is history (the last 20 for a version-2 client,
    nothing for a text client), never replayed as news; what is said after is live, for
    both."""
    # What was said in the last moment before a member came counts as news (a clock a
    # little off must not turn news into history): here, only what came after.
    monkeypatch.setattr("chatcast._redis_streams._CLOCK_SLACK_MS", 0.0)
    one = await cluster()
    alice = await _client(cluster, one, "alice", room="old")
    for n in range(30):
        await alice.post(f"before {n}")
    await alice.send("before the others came")
    two = await cluster()  # a fresh server: no ids known yet
    text = await TextPeer.connect(two.port)
    text.send("/join old\n")
    await text.until(lambda line: "you are now in old" in line)
    bob = await _client(cluster, two, "bob", room="old")
    await alice.send("news")
    got = await _messages(bob, 21)
    assert [m.history for m in got] == [True] * 20 + [False]
    assert [m.text for m in got][-2:] == ["before the others came", "news"]
    try:
        assert "news" in await text.until(lambda line: line.startswith("alice:"))  # no past
    finally:
        text.writer.close()
        await text.writer.wait_closed()


async def test_a_room_s_stream_expires_when_nobody_uses_it(redis_server: RedisProcess) -> None:
    """A room's stream carries an expiry, renewed by each message: rooms nobody uses any
    more do not stay in Redis for good."""
    backplane = RedisBackplane(redis_server.url, prefix="ttl", stream_ttl=3600)
    server = BroadcastServer("127.0.0.1", 0, backplane=backplane)
    await server.start()
    r = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        async with BroadcastClient("127.0.0.1", server.port, name="alice", room="brief") as alice:
            await alice.send("once")
        ttl = await r.ttl("ttl:room:brief")
        assert 3500 < ttl <= 3600
    finally:
        await r.aclose()
        await server.aclose()
    with pytest.raises(ValueError, match="stream_ttl"):
        RedisBackplane(redis_server.url, stream_ttl=0)


async def test_a_banned_name_cannot_resume_on_another_server(
    cluster: Any, redis_server: RedisProcess
) -> None:
    """A member's server dies; its name is banned meanwhile: the session the dead server
    left in Redis does not bring the name back on another server."""
    two = await cluster()
    process, port = await start_lone_server(redis_server.url, cluster.prefix)
    try:
        mallory = BroadcastClient(
            "127.0.0.1", port, name="mallory", servers=[("127.0.0.1", two.port)],
            reconnect=True, reconnect_delay=0.05,
        )  # fmt: skip
        await mallory.connect()
        cluster.clients.append(mallory)
        await wait_until(lambda: "mallory" in two.who())
        process.send_signal(signal.SIGSTOP)  # its server hangs: the ban cannot reach it
        two.ban("mallory", reason="spam")
    finally:
        process.kill()
        await process.wait()
    with pytest.raises(ConnectionClosed, match="banned by server: spam"):
        await receive_kind(mallory, MESSAGE, seconds=20)
    assert two.statistics().resumes == 0
