"""The hostile-input suite: bad peers against a live server, while a good pair talks.

Each case passes when the bad peer got a clear error or was closed, the server still serves,
its per-connection buffers stayed bounded throughout, and the well-behaved pair received every
message of the other, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import Any, cast

import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatcast.client import BroadcastClient
from chatcast.message import CLOSING, INFO, MESSAGE
from chatcast.server import BroadcastServer
from tests.conftest import TextPeer, receive_kind
from tests.helpers import timeout, wait_until

Factory = Callable[..., Any]


#: The most asyncio's selector transports read at once (``max_size``), so the most one batch
#: of relayed messages can hold before stamping.
_READ_SIZE = 256 * 1024


class Pair:
    """alice and bob exchange ``count`` numbered messages each while the test attacks."""

    def __init__(self, server: BroadcastServer, count: int = 200, **options: Any) -> None:
        self.server = server
        self.count = count
        self.clients = [
            BroadcastClient("127.0.0.1", server.port, name=name, **options)
            for name in ("alice", "bob")
        ]
        self.max_pending = 0
        self.max_buffered = 0
        self._tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> Pair:
        for client in self.clients:
            await client.connect()
        alice, bob = self.clients
        self._tasks = [
            asyncio.create_task(self._send(alice)),
            asyncio.create_task(self._send(bob)),
            asyncio.create_task(self._receive(alice, "bob")),
            asyncio.create_task(self._receive(bob, "alice")),
        ]
        self._sampler = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in [*self._tasks, self._sampler]:
            task.cancel()
        await asyncio.gather(*self._tasks, self._sampler, return_exceptions=True)
        for client in self.clients:
            await client.close()

    async def _send(self, client: BroadcastClient) -> None:
        for n in range(self.count):
            await client.send(f"{client.name} {n}")
            if n % 20 == 0:
                await asyncio.sleep(0.005)  # spread the stream over the attack

    async def _receive(self, client: BroadcastClient, other: str) -> list[int]:
        numbers: list[int] = []
        while len(numbers) < self.count:
            message = await receive_kind(client, MESSAGE, seconds=60)
            if message.sender == other:
                numbers.append(int(message.text.split()[1]))
        return numbers

    async def _sample(self) -> None:
        """Track the largest per-connection buffers the server holds, every 5 ms."""
        while True:
            for conn in list(self.server._hub.peers):  # white-box: the buffers it holds
                self.max_pending = max(self.max_pending, conn.decoder.pending)
                if conn.transport is not None and not conn.transport.is_closing():
                    size = cast(asyncio.Transport, conn.transport).get_write_buffer_size()
                    size += conn.backlog.size if conn.backlog is not None else 0
                    self.max_buffered = max(self.max_buffered, size)
            await asyncio.sleep(0.005)

    async def check(self) -> None:
        """Both got every message of the other, in order; the server's buffers stayed bounded."""
        async with asyncio.timeout(timeout(60)):
            await asyncio.gather(*self._tasks[:2])
            received = await asyncio.gather(*self._tasks[2:])
        for numbers in received:
            assert numbers == list(range(self.count))
        assert self.max_pending <= self.server.max_line_bytes + 1
        # One batch may land on top of a full buffer before the bound is seen: what one read
        # of the sender held (asyncio reads at most 256 KiB), stamped with the sender's name.
        slack = _READ_SIZE + self.server.max_line_bytes
        assert self.max_buffered <= self.server.max_buffer_bytes + slack
        assert self.server.is_serving
        assert sorted(self.server.who()) == ["alice", "bob"] or {"alice", "bob"} <= set(
            self.server.who()
        )


async def _text_peer(server: BroadcastServer) -> TextPeer:
    peer = await TextPeer.connect(server.port)
    assert await peer.line() == server.welcome
    return peer


async def test_1_ten_mebibyte_line(server: BroadcastServer) -> None:
    """1. A 10 MiB line with no newline: one error, memory bounded, the pair unaffected."""
    async with Pair(server) as pair:
        peer = await _text_peer(server)
        try:
            chunk = b"M" * 65536
            for _ in range(160):
                peer.send(chunk)
                await peer.writer.drain()
            # The peer is in the lobby too: the pair's chat may come before the error.
            error = await peer.until(lambda line: line.startswith("!"))
            assert error == "! line longer than 65536 bytes"
            await pair.check()
        finally:
            await peer.close()


async def test_2_bad_bytes(server: BroadcastServer) -> None:
    """2. Invalid UTF-8, NUL, control characters, a lone CR: errors, nothing relayed."""
    async with Pair(server) as pair:
        peer = await _text_peer(server)
        peer.send(b"\xc3\x28\n\x00\x00\nbell\x07\n\x1b]0;pwned\x07\nlone\rcr\n\r\n")
        errors = [await peer.until(lambda line: line.startswith("!")) for _ in range(5)]
        assert errors[0] == "! invalid UTF-8 at byte 0"
        assert all("not allowed" in e for e in errors[1:])
        await pair.check()
        assert server.statistics().messages_in == 2 * pair.count
        await peer.close()


async def test_3_slowloris(server: BroadcastServer) -> None:
    """3. One byte per second, never a full JSON frame: it costs a few bytes, nothing more."""
    async with Pair(server) as pair:
        peer = await _text_peer(server)
        peer.send('{"type":"hello","name":"loris"}\n')
        await peer.until(lambda line: '"welcome"' in line)
        for byte in b'{"type":"mess':
            peer.send(bytes([byte]))
            await peer.writer.drain()
            await asyncio.sleep(1 if byte == ord("{") else 0.2)
        await pair.check()
        assert pair.max_pending < 64
        await peer.close()


async def test_4_never_reading_client_during_flood(start_server: Factory) -> None:
    """4. A client that never reads while others flood is cut off; the pair gets everything."""
    server = await start_server(max_buffer_bytes=256 * 1024)
    async with Pair(server, count=300) as pair:
        lazy = socket.socket()
        lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lazy.connect(("127.0.0.1", server.port))
        flooder = await _text_peer(server)
        pad = "f" * 2000
        for start in range(0, 4000, 100):
            flooder.send("".join(f"{n} {pad}\n" for n in range(start, start + 100)))
            await flooder.writer.drain()
        await wait_until(lambda: server.statistics().slow_consumers == 1, 30)
        await pair.check()
        lazy.close()
        await flooder.close()


async def test_5_thousand_abandoned_connections(start_server: Factory) -> None:
    """5. 1000 connections opened and abandoned without a word: all cleaned up."""
    server = await start_server(max_clients=2000)
    async with Pair(server) as pair:
        peers = []
        for _ in range(1000):
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            peers.append(writer)
        await wait_until(lambda: server.statistics().clients == 1002, 20)
        for writer in peers:
            writer.transport.abort()
        await wait_until(lambda: server.statistics().clients == 2, 20)
        await pair.check()


async def test_6_reset_and_half_close(server: BroadcastServer) -> None:
    """6. RST in the middle of a line, and a half-closed connection."""
    async with Pair(server) as pair:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"never finished li")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        half = await _text_peer(server)
        half.writer.write_eof()
        assert await half.eof() == b""  # the server closes its side too
        await pair.check()
        await half.close()
        await wait_until(lambda: server.statistics().clients == 2)


async def test_7_hostile_json(server: BroadcastServer) -> None:
    """7. Unknown types, wrong field types, deep nesting, huge JSON, a forged from."""
    async with Pair(server) as pair:
        peer = await _text_peer(server)
        peer.send('{"type":"hello","name":"mallory"}\n')
        await peer.until(lambda line: '"welcome"' in line)
        frames = [
            '{"type":"rm -rf"}',
            '{"type":"message","text":["list"]}',
            '{"type":"message","text":"x","to":42}',
            "[" * 30000 + "]" * 30000,
            '{"type":"message","text":"' + "h" * 70000 + '"}',
            '{"type":"join","room":{"nested":{"deep":1}}}',
            '{"type":"message","text":"I am alice","from":"alice"}',
        ]
        peer.send("".join(frame + "\n" for frame in frames))
        errors = 0
        while errors < 6:
            if json.loads(await peer.line())["type"] == "error":
                errors += 1
        # The forged frame is relayed as mallory's: were it stamped "alice", bob's receiver
        # would count "I am alice" as one of alice's numbered messages and fail.
        await pair.check()
        await peer.close()


async def test_8_flooding_past_the_rate_limit(start_server: Factory) -> None:
    """8. A flooder is limited and then disconnected; the pair (under the limit) is not."""
    server = await start_server(rate=2000, burst=2000)
    async with Pair(server) as pair:
        peer = await _text_peer(server)
        peer.send("".join(f"flood {n}\n" for n in range(20000)))
        lines = (await peer.eof(seconds=20)).decode().splitlines()
        assert lines[-1] == "! flooding: too many messages over the rate limit"
        await pair.check()
        await peer.close()


async def test_9_tokens(start_server: Factory) -> None:
    """9. Wrong token, no token, token sent late: refused, counted, nothing leaks."""
    server = await start_server(token="t0ken", auth_timeout=0.5)
    async with Pair(server, token="t0ken") as pair:
        wrong = await _text_peer(server)
        wrong.send("/auth nope\n")
        none_ = await _text_peer(server)
        none_.send("hello without a token\n")
        late = await _text_peer(server)
        assert (await wrong.eof()).decode().splitlines() == ["! authentication failed"]
        none_lines = (await none_.eof()).decode().splitlines()
        assert none_lines == [
            "! authentication required: send /auth TOKEN first",
            "! authentication timeout",
        ]
        late_lines = (await late.eof()).decode().splitlines()
        late.send("/auth t0ken\n")  # too late: already closed
        assert late_lines == ["! authentication timeout"]
        await pair.check()
        assert server.statistics().auth_failures == 3
        for peer in (wrong, none_, late):
            await peer.close()


async def test_10_tls_port_spoken_to_in_plain_text(start_server: Factory) -> None:
    """10. Plain text and garbage on the TLS port: closed; TLS clients unaffected."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    server = await start_server(ssl=server_context)
    async with Pair(server, ssl=client_context) as pair:
        plain = await TextPeer.connect(server.port)
        plain.send("hello, is this chat?\n")
        garbage = await TextPeer.connect(server.port)
        garbage.send(os.urandom(4096))
        assert await plain.eof() == b""
        assert await garbage.eof() == b""
        await pair.check()
        await plain.close()
        await garbage.close()


async def test_11_sigterm_while_clients_send() -> None:
    """11. SIGTERM to `chatcast server` mid-send: notices, nothing accepted lost, clean close."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatcast",
        "server",
        "--port",
        "0",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(timeout(10)):
            banner = (await process.stdout.readline()).decode()
        port = int(banner.split(" port ")[1].split()[0])
        alice = BroadcastClient("127.0.0.1", port, name="alice")
        bob = BroadcastClient("127.0.0.1", port, name="bob")
        await alice.connect()
        await bob.connect()

        async def send_forever() -> int:
            sent = 0
            with contextlib.suppress(Exception):
                while True:
                    await alice.send(f"m {sent}")
                    sent += 1
                    if sent == 300:
                        process.send_signal(signal.SIGTERM)
            return sent

        sender = asyncio.create_task(send_forever())
        numbers: list[int] = []
        async with asyncio.timeout(timeout(20)):
            async for message in bob:
                if message.kind == MESSAGE:
                    numbers.append(int(message.text.split()[1]))
                last = message
            sent = await sender
        assert last.kind == CLOSING
        assert numbers == list(range(len(numbers)))  # in order, no gaps
        assert len(numbers) >= 300 - 1
        assert sent >= len(numbers)
        async with asyncio.timeout(timeout(10)):
            assert await process.wait() == 0
        await alice.close()
        await bob.close()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_12_restart_under_reconnecting_clients(start_server: Factory) -> None:
    """12. The server restarts; reconnecting clients rejoin with their names and rooms."""
    server = await start_server(close_timeout=1)
    port = server.port
    options: dict[str, Any] = {"reconnect": True, "reconnect_delay": 0.05}
    alice = BroadcastClient("127.0.0.1", port, name="alice", room="den", **options)
    bob = BroadcastClient("127.0.0.1", port, name="bob", room="den", **options)
    await alice.connect()
    await bob.connect()
    await server.aclose("restarting")
    restarted = BroadcastServer("127.0.0.1", port, join_grace=0.05)
    await restarted.start()
    try:
        for client in (alice, bob):
            while (await receive_kind(client, INFO, seconds=10)).text != "reconnected":
                pass
        assert restarted.who("den") == ["alice", "bob"]
        await alice.send("after restart")
        assert (await receive_kind(bob, MESSAGE)).text == "after restart"
    finally:
        await alice.close()
        await bob.close()
        await restarted.aclose()


# -- fuzzing ----------------------------------------------------------------------------------


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.text(max_size=200).map(lambda t: (t + "\n").encode("utf-8", "surrogatepass")),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                lambda inner: (
                    st.lists(inner, max_size=4)
                    | st.dictionaries(
                        st.sampled_from(["type", "text", "to", "room", "name", "from"]),
                        inner,
                        max_size=4,
                    )
                ),
                max_leaves=10,
            ).map(lambda obj: (json.dumps(obj) + "\n").encode()),
        ),
        max_size=12,
    )
)
def test_fuzz_live_server(chunks: list[bytes]) -> None:
    """Random bytes and random JSON at a live server: it survives and the pair still talks."""

    async def scenario() -> None:
        server = BroadcastServer("127.0.0.1", 0, join_grace=0.01)
        async with server:
            async with Pair(server, count=20) as pair:
                for hello in (b"", b'{"type":"hello"}\n'):
                    peer = await TextPeer.connect(server.port)
                    peer.send(hello + b"".join(chunks))
                    await peer.writer.drain()
                    await peer.close()
                await pair.check()

    asyncio.run(_bounded(scenario(), 30))


async def _bounded(coro: Awaitable[None], seconds: float) -> None:
    async with asyncio.timeout(timeout(seconds)):
        await coro
