"""A redis-server of the test's own and a cluster of servers over it (fixtures
``redis_server`` and ``cluster``, registered in ``tests/conftest.py``).

The fixtures skip when ``redis-server`` or redis-py is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from chatcast.client import BroadcastClient
from chatcast.server import BroadcastServer
from tests.helpers import timeout

REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """A redis-server of our own on 127.0.0.1, with no persistence; can be killed and restarted."""

    def __init__(self, *options: str) -> None:
        self.port = _free_port()
        self.options = options  # more redis-server options, e.g. ("--requirepass", "x")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pause(self) -> None:
        """Stop the process (SIGSTOP): Redis hangs, connections stay open, data stays."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--protected-mode", "no",
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline_tries = int(timeout(10) / 0.02)
        for _ in range(deadline_tries):
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port)) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            subprocess.run(["sleep", "0.02"], check=True)  # polling a port, not synchronising
        raise RuntimeError("redis-server did not answer PING")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case it was paused
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    """A fresh redis-server for this test; killed after it."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    pytest.importorskip("redis", reason="redis-py is not installed (pip install chatcast[redis])")
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def cluster(redis_server: RedisProcess) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``server = await cluster(**options)`` joins a chat over ``redis_server``."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    servers: list[BroadcastServer] = []
    clients: list[BroadcastClient] = []

    async def start(**options: Any) -> BroadcastServer:
        options.setdefault("join_grace", 0.05)
        from chatcast.backplane import RedisBackplane

        backplane = RedisBackplane(redis_server.url, prefix=prefix, heartbeat=0.5)
        server = BroadcastServer("127.0.0.1", 0, backplane=backplane, **options)
        await server.start()
        servers.append(server)
        return server

    start.clients = clients  # type: ignore[attr-defined]
    start.prefix = prefix  # type: ignore[attr-defined]
    yield start
    for client in clients:
        await client.close()
    for server in servers:
        async with asyncio.timeout(timeout(10)):
            await server.aclose()


async def _client(
    cluster: Any, server: BroadcastServer, name: str, **options: Any
) -> BroadcastClient:
    client = BroadcastClient("127.0.0.1", server.port, name=name, **options)
    await client.connect()
    cluster.clients.append(client)
    return client


_LONE_SERVER = """
import asyncio, sys
from chatcast import BroadcastServer
from chatcast.backplane import RedisBackplane

async def main():
    backplane = RedisBackplane(sys.argv[1], prefix=sys.argv[2], heartbeat=0.5)
    async with BroadcastServer("127.0.0.1", 0, backplane=backplane, join_grace=0.05) as server:
        print(server.port, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def start_lone_server(url: str, prefix: str) -> tuple[asyncio.subprocess.Process, int]:
    """A server in a process of its own (``_LONE_SERVER``) on the chat ``prefix`` at ``url``:
    the process (end it by its PID) and the server's port."""
    import sys

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LONE_SERVER, url, prefix, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(timeout(20)):
            port = int(await process.stdout.readline())
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return process, port
