"""Fixtures for tests that run a real server on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from chatcast.client import BroadcastClient
from chatcast.message import Message
from chatcast.server import BroadcastServer
from tests.helpers import timeout


class TextPeer:
    """A text-mode peer on a raw TCP connection, like ``nc``: bytes out, lines in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> TextPeer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)

    async def line(self, seconds: float = 5.0) -> str:
        """The next line, without its LF; '' at EOF."""
        async with asyncio.timeout(timeout(seconds)):
            return (await self.reader.readline()).decode().removesuffix("\n")

    async def until(self, predicate: Callable[[str], bool], seconds: float = 5.0) -> str:
        """Skip lines until one matches; fail at EOF or timeout."""
        async with asyncio.timeout(timeout(seconds)):
            while True:
                line = (await self.reader.readline()).decode()
                if not line:
                    raise AssertionError("connection closed before the expected line")
                line = line.removesuffix("\n")
                if predicate(line):
                    return line

    async def eof(self, seconds: float = 5.0) -> bytes:
        """Read everything until the server closes; return it."""
        async with asyncio.timeout(timeout(seconds)):
            return await self.reader.read()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def receive_kind(
    client: BroadcastClient, *kinds: str, seconds: float = 5.0, history: bool = False
) -> Message:
    """The next live message of one of ``kinds``, skipping others (and history, unless
    ``history``)."""
    async with asyncio.timeout(timeout(seconds)):
        while True:
            message = await client.receive()
            if message.kind in kinds and (history or not message.history):
                return message


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``server = await start_server(**options)``; closed at teardown."""
    servers: list[BroadcastServer] = []

    async def start(**options: Any) -> BroadcastServer:
        options.setdefault("join_grace", 0.05)
        server = BroadcastServer("127.0.0.1", 0, **options)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
        async with asyncio.timeout(timeout(10)):
            await server.wait_closed()


@pytest.fixture
async def server(start_server: Callable[..., Any]) -> BroadcastServer:
    """A server with default options on 127.0.0.1:0."""
    started: BroadcastServer = await start_server()
    return started


@pytest.fixture
async def connect(server: BroadcastServer) -> AsyncIterator[Callable[..., Any]]:
    """Factory for BroadcastClients of ``server``; closed at teardown."""
    clients: list[BroadcastClient] = []

    async def make(name: str | None = None, **options: Any) -> BroadcastClient:
        client = BroadcastClient("127.0.0.1", server.port, name=name, **options)
        async with asyncio.timeout(timeout(5)):
            await client.connect()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def text_peer(server: BroadcastServer) -> AsyncIterator[Callable[..., Any]]:
    """Factory for raw text-mode peers of ``server`` (welcome line already read)."""
    peers: list[TextPeer] = []

    async def make(nick: str | None = None) -> TextPeer:
        peer = await TextPeer.connect(server.port)
        peers.append(peer)
        assert await peer.line() == server.welcome
        if nick is not None:
            peer.send(f"/nick {nick}\n")
            await peer.until(lambda line: line.endswith(f"is now {nick}"))
        return peer

    yield make
    for peer in peers:
        await peer.close()


from tests.redis_cluster import cluster, redis_server  # noqa: E402, F401 - fixtures
