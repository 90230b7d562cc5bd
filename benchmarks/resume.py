"""Blocking-socket helpers for the ``replay`` workload (see :func:`benchmarks.run.replay`).

A *victim* JSON client connects, notes its session token and the newest id, and drops its
connection; a *filler* sends the messages it then misses; a *resumer* comes back with the
token, in a thread of the orchestrator, while the paced load runs, and reads the replay.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any


def _lines(sock: socket.socket) -> Any:
    """Yield the lines read from ``sock`` (without LF) until it closes."""
    buf = b""
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return
        buf += data
        *lines, buf = buf.split(b"\n")
        yield from lines


def victim(port: int, name: str = "victim") -> tuple[str, int]:
    """Connect as ``name`` (JSON, version 2), then drop the connection: return its session
    token and the last id it saw."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(json.dumps({"type": "hello", "version": 2, "name": name}).encode() + b"\n")
        for line in _lines(sock):
            if line.startswith(b"{"):
                frame = json.loads(line)
                if frame["type"] == "welcome":
                    return str(frame["session"]), int(frame["last"])
    raise RuntimeError("no welcome")


def fill(port: int, count: int, size: int = 64) -> None:
    """Send ``count`` room messages from a text-mode client, and wait until the server has
    read them all (its answer to a ``/who`` after them)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"/nick filler\n")
        line = b"x" * (size - 1) + b"\n"
        for start in range(0, count, 1000):
            sock.sendall(line * min(1000, count - start))
        sock.sendall(b"/who\n")
        for text in _lines(sock):
            if text.startswith(b"* in "):
                return
    raise RuntimeError("the filler's connection ended early")


class Resumer(threading.Thread):
    """Resume ``session`` and read until ``expect`` replayed messages have come."""

    def __init__(self, port: int, session: str, last: int, expect: int) -> None:
        super().__init__(daemon=True)
        self.port, self.session, self.last, self.expect = port, session, last, expect
        self.go = threading.Event()
        self.replayed = 0
        self.seconds = float("nan")
        self.error: str | None = None

    def run(self) -> None:
        self.go.wait()
        started = time.perf_counter()
        hello = {"type": "hello", "version": 2, "session": self.session, "last": self.last}
        try:
            with socket.create_connection(("127.0.0.1", self.port)) as sock:
                sock.sendall(json.dumps(hello).encode() + b"\n")
                for line in _lines(sock):
                    if b'"history":true' in line:
                        self.replayed += 1
                        if self.replayed >= self.expect:
                            self.seconds = time.perf_counter() - started
                            return
        except OSError as exc:
            self.error = str(exc)
