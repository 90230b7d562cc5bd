"""A ``redis-server`` of the benchmark's own, for the cross-server workload.

It listens on a free port of 127.0.0.1, keeps nothing on disk (``--save "" --appendonly no``)
and is stopped by its PID at the end. :func:`missing` says why the workload cannot run here
(no ``redis-server`` binary, or no redis-py for chatcast's backplane).
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import time
from pathlib import Path


def missing() -> str | None:
    """Why a Redis backplane cannot be benchmarked here, or ``None`` if it can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (Debian: apt-get install redis-server)"
    if importlib.util.find_spec("redis") is None:
        return "redis-py is not installed (pip install 'chatcast[redis]')"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` process on 127.0.0.1 with no persistence; :meth:`stop` ends it."""

    def __init__(self, log: Path | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        # The port is picked free, then bound by redis-server: another program could take it
        # in between, so a start that fails is tried again on another port.
        for _ in range(3):
            self.port = _free_port()
            stdout = log.open("ab") if log is not None else subprocess.DEVNULL
            try:
                self.proc = subprocess.Popen(
                    [
                        binary,
                        "--bind", "127.0.0.1",
                        "--port", str(self.port),
                        "--save", "",
                        "--appendonly", "no",
                        "--protected-mode", "yes",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            finally:
                if log is not None and not isinstance(stdout, int):
                    stdout.close()
            self.pid = self.proc.pid
            if self._wait_ready(10.0):
                return
            self.stop()
        raise RuntimeError("redis-server did not start (see the log in benchmarks/results/)")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if self.command("PING") == b"+PONG":
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def command(self, *args: str) -> bytes:
        """Send one command (RESP) and return its reply: the line of a simple reply, or the
        payload of a bulk string."""
        request = b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(request)
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("redis-server closed the connection")
                data += chunk
            line, _, rest = data.partition(b"\r\n")
            if not line.startswith(b"$"):
                return line
            size = int(line[1:])
            while len(rest) < size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("redis-server closed the connection")
                rest += chunk
            return rest[:size]

    def publish_calls(self) -> int:
        """Envelopes published so far: PUBLISH commands (pub/sub) and XADD commands (the log's
        appends, made by its script), from ``INFO commandstats``: a check on the envelope
        counts the servers report."""
        calls = 0
        for line in self.command("INFO", "commandstats").decode().splitlines():
            if line.startswith(("cmdstat_publish:", "cmdstat_xadd:")):
                fields = dict(f.split("=", 1) for f in line.split(":", 1)[1].split(","))
                calls += int(fields["calls"])
        return calls

    def stop(self) -> None:
        """End this redis-server (by its PID: SIGTERM, then SIGKILL after 10 s)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
