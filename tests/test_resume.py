"""Messages are never lost silently: resume after a link dies without a FIN, on real sockets.

A proxy between the client and the server can *black-hole* its connections: from then on it
forwards nothing either way and closes nothing, as when Wi-Fi goes or a laptop lid closes.
The server keeps believing in the old connection (a ghost holding the name); the client
notices the silence, reconnects through the proxy, and resumes with its session token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chatcast import BroadcastClient, HistoryLimits, Message, Refused
from chatcast.message import GAP, INFO, MESSAGE, PRIVATE

from .conftest import receive_kind
from .helpers import timeout, wait_until


class BlackHoleProxy:
    """A TCP proxy to ``port`` whose current connections can be made to go silent."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self._links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._holes: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def black_hole(self) -> None:
        """Forward nothing more on the connections open now, and close none of them."""
        for down, up in self._links:
            self._holes.update((down, up))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._links.append((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                if sink not in self._holes:
                    sink.write(data)
            if sink not in self._holes:
                sink.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for down, up in self._links:
            down.transport.abort()
            up.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def proxy_to() -> AsyncIterator[Any]:
    proxies: list[BlackHoleProxy] = []

    async def make(port: int) -> BlackHoleProxy:
        proxy = BlackHoleProxy(port)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.close()


async def _until_info(client: BroadcastClient, starts: str) -> Message:
    return await _until(client, lambda m: m.kind == INFO and m.text.startswith(starts))


async def _until(client: BroadcastClient, test: Any, seconds: float = 10.0) -> Message:
    async with asyncio.timeout(timeout(seconds)):
        while True:
            message = await client.receive()
            if test(message):
                return message


async def _silent_drop(start_server: Any, proxy_to: Any, **options: Any) -> tuple[Any, ...]:
    """A server whose heartbeat would hold a ghost for 30 s, alice behind a proxy (her
    client notices silence within about 0.75 s), bob direct. Returns them, with alice's
    link black-holed after one message she saw."""
    server = await start_server(heartbeat_interval=0.5, heartbeat_timeout=30, **options)
    proxy = await proxy_to(server.port)
    alice = BroadcastClient("127.0.0.1", proxy.port, name="alice", room="den", reconnect=True)
    bob = BroadcastClient("127.0.0.1", server.port, name="bob", room="den")
    await alice.connect()
    await bob.connect()
    await bob.send("before")
    assert (await receive_kind(alice, MESSAGE)).text == "before"
    proxy.black_hole()
    return server, proxy, alice, bob


async def test_a_silent_drop_resumes_with_every_message_once_in_order(
    start_server: Any, proxy_to: Any
) -> None:
    server, _, alice, bob = await _silent_drop(start_server, proxy_to)
    await bob.send("a private one", to="alice")
    for n in range(20):
        await bob.send(f"missed {n}")
    await _until_info(alice, "disconnected")
    reconnected = await _until_info(alice, "reconnected")
    back_at = time.monotonic()
    assert reconnected.kind == INFO
    # Back under her own name at once, not after the server's 30 s heartbeat: the session
    # was resumed and the ghost connection closed.
    assert alice.name == "alice"
    assert server.statistics().resumes == 1
    await wait_until(lambda: server.statistics().clients == 2)
    assert time.monotonic() - back_at < 2.0
    assert server.who("den") == ["alice", "bob"]
    got: list[Message] = []
    async with asyncio.timeout(timeout(10)):
        while len(got) < 21:
            message = await alice.receive()
            if message.kind in (MESSAGE, PRIVATE):
                got.append(message)
    assert [m.text for m in got] == ["a private one"] + [f"missed {n}" for n in range(20)]
    assert all(m.history for m in got)
    ids = [m.id for m in got if m.id is not None]
    assert ids == sorted(ids)
    assert len(set(ids)) == 21
    await bob.send("live")
    live = await receive_kind(alice, MESSAGE)
    assert (live.text, live.history) == ("live", False)
    assert server.statistics().resumes == 1
    # Nothing twice: the next message is the next live one.
    await bob.send("and again")
    assert (await receive_kind(alice, MESSAGE)).text == "and again"
    await alice.close()
    await bob.close()


async def test_a_resume_past_the_history_gets_a_gap_with_the_count(
    start_server: Any, proxy_to: Any
) -> None:
    _, _, alice, bob = await _silent_drop(start_server, proxy_to, history=HistoryLimits(messages=5))
    for n in range(20):
        await bob.send(f"m{n}")
    await _until_info(alice, "reconnected")
    gap = await _until(alice, lambda m: m.kind == GAP)
    assert (gap.missed, gap.room) == (15, "den")
    rest = [await receive_kind(alice, MESSAGE, history=True) for _ in range(5)]
    assert [m.text for m in rest] == [f"m{n}" for n in range(15, 20)]
    await alice.close()
    await bob.close()


async def test_send_returns_the_accepted_message_and_raises_a_refusal(
    start_server: Any,
) -> None:
    server = await start_server()
    async with (
        BroadcastClient("127.0.0.1", server.port, name="alice") as alice,
        BroadcastClient("127.0.0.1", server.port, name="bob") as bob,
    ):
        accepted = await alice.send("hello")
        assert (accepted.text, accepted.sender, accepted.room) == ("hello", "alice", "lobby")
        seen = await receive_kind(bob, MESSAGE)
        assert seen.id == accepted.id
        with pytest.raises(Refused, match="no such user: carol"):
            await alice.send("psst", to="carol")
        # Pipelined: many posts, one answer each, in order.
        futures = [await alice.post(f"p{n}") for n in range(200)]
        results = await asyncio.gather(*futures)
        ids = [m.id for m in results if m.id is not None]
        assert ids == sorted(ids)
        assert len(set(ids)) == 200


async def test_history_from_the_client(start_server: Any) -> None:
    server = await start_server()
    async with BroadcastClient("127.0.0.1", server.port, name="alice", room="den") as alice:
        sent = [await alice.send(f"m{n}") for n in range(10)]
    async with BroadcastClient("127.0.0.1", server.port, name="bob", room="den") as bob:
        # On joining: the last messages, marked as history.
        joined = [await receive_kind(bob, MESSAGE, history=True) for _ in range(10)]
        assert [m.text for m in joined] == [f"m{n}" for n in range(10)]
        assert all(m.history for m in joined)
        latest = await bob.history(limit=3)
        assert [m.text for m in latest] == ["m7", "m8", "m9"]
        older = await bob.history(limit=3, before=latest[0].id)
        assert [m.text for m in older] == ["m4", "m5", "m6"]
        newer = await bob.history(after=sent[7].id)
        assert [m.text for m in newer] == ["m8", "m9"]
        assert await bob.history("nowhere") == []
        with pytest.raises(Refused, match="ahead of this server"):
            await bob.history(after=10**9)
        with pytest.raises(ValueError, match="limit"):
            await bob.history(limit=501)


async def test_the_cli_client_resumes_too(start_server: Any, proxy_to: Any) -> None:
    """`chatcast client --reconnect` behind a link that dies silently: back under its name,
    every missed message shown once, marked as history."""
    import sys

    server = await start_server(heartbeat_interval=0.5, heartbeat_timeout=30)
    proxy = await proxy_to(server.port)
    cli = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "chatcast", "client", "--port", str(proxy.port)],
        *["--name", "alice", "--reconnect"],
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert cli.stdin is not None
    assert cli.stdout is not None
    seen: list[str] = []

    async def until(test: Any) -> str:
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
        async with BroadcastClient("127.0.0.1", server.port, name="bob") as bob:
            await bob.send("before")
            await until(lambda line: line.endswith("bob: before"))
            proxy.black_hole()
            for n in range(5):
                await bob.send(f"missed {n}")
            await until(lambda line: "reconnected" in line)
            await until(lambda line: line.endswith("missed 4"))
            await bob.send("live")
            await until(lambda line: line.endswith("bob: live"))
        replayed = [line for line in seen if "missed" in line and "bob:" in line]
        assert replayed == [f"[history] bob: missed {n}" for n in range(5)]
        assert server.statistics().resumes == 1
    finally:
        cli.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            cli.terminate()
        await cli.wait()
