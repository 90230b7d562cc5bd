"""The tutorial asyncio relay: ``readline()``, then ``write()`` + ``await drain()`` per client."""

from __future__ import annotations

import asyncio

from . import WELCOME


class NaiveRelay:
    """An :func:`asyncio.start_server` relay; :meth:`start` binds, :attr:`port` tells where."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._writers: set[asyncio.StreamWriter] = set()
        self._counter = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self._host, self._port, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._counter += 1
        prefix = f"guest{self._counter}: ".encode()
        self._writers.add(writer)
        try:
            writer.write(WELCOME)
            await writer.drain()
            while line := await reader.readline():
                out = prefix + line if line.endswith(b"\n") else prefix + line + b"\n"
                for other in list(self._writers):
                    if other is not writer:
                        try:
                            other.write(out)
                            await other.drain()
                        except ConnectionError:
                            self._writers.discard(other)
        except (ConnectionError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
