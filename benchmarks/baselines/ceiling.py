"""A bare :class:`asyncio.Protocol` hub: what pure-Python asyncio fan-out can do here.

Each read is cut at its last LF; the complete lines are stamped with the sender's name in one
``bytes.replace`` (the same bytes as splitting, prefixing and joining them) and the joined batch
is written once to every other transport. No UTF-8 check, no limits, no rooms, no slow-consumer
bound: everything chatcast adds is missing, on purpose.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from . import WELCOME


class _Member(asyncio.Protocol):
    __slots__ = ("hub", "partial", "prefix", "separator", "transport")

    def __init__(self, hub: CeilingHub) -> None:
        self.hub = hub
        self.partial = b""
        hub.counter += 1
        self.prefix = f"guest{hub.counter}: ".encode()
        self.separator = b"\n" + self.prefix
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance() check: uvloop's TCP transport is not a subclass of
        # asyncio.Transport, though it implements it (chatcast[speed]).
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.hub.members[self] = transport.write
        transport.write(WELCOME)

    def data_received(self, data: bytes) -> None:
        if self.partial:
            data = self.partial + data
        end = data.rfind(b"\n")
        if end < 0:
            self.partial = data
            return
        self.partial = data[end + 1 :]
        batch = self.prefix + data[:end].replace(b"\n", self.separator) + b"\n"
        for member, write in self.hub.members.items():
            if member is not self:
                write(batch)

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.members.pop(self, None)


class CeilingHub:
    """The hub; :meth:`start` binds, :attr:`port` tells where."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self.members: dict[_Member, Callable[[bytes], object]] = {}
        self.counter = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Member(self), self._host, self._port, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for member in list(self.members):
            if member.transport is not None:
                member.transport.abort()
