"""The lab's design: one thread per client, ``recv(1024)``, ``sendall`` to every other client.

Unlike the lab's server it keeps the partial line a ``recv(1024)`` cut off and relays only
complete lines, so the load generator can count deliveries; and it gives each client a send
lock, so two senders' ``sendall`` calls never interleave inside one line.
"""

from __future__ import annotations

import socket
import threading

from . import WELCOME


class ThreadedRelay:
    """A blocking relay on ``host:port`` (0: any free port, read back from :attr:`port`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._listener = socket.create_server((host, port), backlog=1024)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._clients: dict[socket.socket, threading.Lock] = {}
        self._counter = 0

    def serve_forever(self) -> None:
        """Accept clients until :meth:`close`; each gets a daemon thread."""
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._counter += 1
            name = f"guest{self._counter}"
            threading.Thread(target=self._handle, args=(conn, name), daemon=True).start()

    def close(self) -> None:
        """Stop accepting (client threads are daemons and die with the process)."""
        self._listener.close()

    def _handle(self, conn: socket.socket, name: str) -> None:
        prefix = (name + ": ").encode()
        with self._lock:
            self._clients[conn] = threading.Lock()
        pending = b""
        try:
            conn.sendall(WELCOME)
            while True:
                data = conn.recv(1024)
                if not data:
                    break
                pending += data
                if b"\n" not in data:
                    continue
                *lines, pending = pending.split(b"\n")
                out = b"".join([prefix + line + b"\n" for line in lines])
                with self._lock:
                    others = [(c, lk) for c, lk in self._clients.items() if c is not conn]
                for other, lock in others:
                    try:
                        with lock:
                            other.sendall(out)
                    except OSError:
                        pass
        except OSError:
            pass
        finally:
            with self._lock:
                self._clients.pop(conn, None)
            conn.close()
