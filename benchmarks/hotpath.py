"""The fan-out hot path alone, in one process, without sockets: ``python -m benchmarks.hotpath``.

The TCP workloads on a 2-core machine are bound by the load generator (it needs as much CPU
to read a delivery as the relay needs to write it), so they cannot tell two relays apart once
both are fast. This one feeds reads straight into chatcast's sans-I/O hub (``Hub.receive``)
and into the ceiling hub's ``data_received``, with every recipient a transport whose ``write``
only counts bytes: what remains is the Python work per read and per recipient, the part the relay
controls. Prints ``RESULT <json>``: microseconds of CPU per read, per message and per delivery.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from .baselines.ceiling import CeilingHub, _Member


class _CountingTransport(asyncio.Transport):
    """A transport that accepts everything and sends nothing."""

    def __init__(self, peer: int) -> None:
        super().__init__()
        self.bytes = 0
        self.protocol: asyncio.BaseProtocol | None = None
        self._extra = {"peername": ("127.0.0.1", 40000 + peer), "socket": None}

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.bytes += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            asyncio.get_running_loop().call_soon(protocol.connection_lost, None)

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def abort(self) -> None:
        self.close()


def _reads(lines_per_read: int, reads: int) -> list[bytes]:
    line = b"#m00000000 " + b"x" * 52 + b"\n"  # 64 bytes
    assert len(line) == 64
    return [line * lines_per_read] * reads


class _Timer:
    def cancel(self) -> None:
        pass


class _Clock:
    """Monotonic time; timers are kept, never fired (the measured reads need none)."""

    def __init__(self) -> None:
        self.timers: list[Any] = []

    def time(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Any, *args: Any) -> Any:
        self.timers.append((delay, callback, args))
        return _Timer()

    def call_soon(self, callback: Any, *args: Any) -> Any:
        return self.call_later(0.0, callback, *args)


def _chatcast(subscribers: int, lines_per_read: int, reads: int, json_subs: bool) -> float:
    """chatcast's sans-I/O hub, driven directly: no event loop, no listening socket."""
    from chatcast._core.config import ServerConfig
    from chatcast._core.hub import Hub
    from chatcast._core.peer import Peer

    hub = Hub(ServerConfig(port=0, max_clients=None, keepalive=False), _Clock())
    peers = []
    for i in range(subscribers + 1):
        peer = Peer(hub.config.max_line_bytes)
        peer.attach(_CountingTransport(i), f"127.0.0.1:{40000 + i}")
        hub.add(peer)
        hub.greet(peer)
        peers.append(peer)
    for peer in peers[1:]:
        if json_subs:
            hub.receive(peer, b'{"type":"hello"}\n')
        else:
            hub.receive(peer, b"hello\n")  # first frame: announced, out of first_frame
    sender = peers[0]
    hub.receive(sender, b"warm up\n")
    data = _reads(lines_per_read, reads)
    started = time.process_time()
    for chunk in data:
        hub.receive(sender, chunk)
    elapsed = time.process_time() - started
    assert hub.messages_in >= reads * lines_per_read
    return elapsed


def _ceiling(subscribers: int, lines_per_read: int, reads: int) -> float:
    hub = CeilingHub()
    members = [_Member(hub) for _ in range(subscribers + 1)]
    for i, member in enumerate(members):
        member.connection_made(_CountingTransport(i))
    sender = members[0]
    data = _reads(lines_per_read, reads)
    started = time.process_time()
    for chunk in data:
        sender.data_received(chunk)
    return time.process_time() - started


def measure(subscribers: int, lines_per_read: int, messages: int) -> list[dict[str, Any]]:
    reads = max(1, messages // lines_per_read)
    rows = []
    cases: list[tuple[str, float]] = [
        ("ceiling", min(_ceiling(subscribers, lines_per_read, reads) for _ in range(3))),
    ]
    for json_subs in (False, True):
        best = min(_chatcast(subscribers, lines_per_read, reads, json_subs) for _ in range(3))
        cases.append(("chatcast (JSON subs)" if json_subs else "chatcast", best))
    for name, seconds in cases:
        n = reads * lines_per_read
        rows.append(
            {
                "workload": "hotpath",
                "server": name,
                "subscribers": subscribers,
                "lines_per_read": lines_per_read,
                "messages": n,
                "us_per_read": 1e6 * seconds / reads,
                "us_per_message": 1e6 * seconds / n,
                "ns_per_delivery": 1e9 * seconds / (n * subscribers),
                "all_counted": True,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    quick = "--quick" in args
    rows = []
    for subscribers in (5,) if quick else (100, 1000):
        for lines_per_read in (1, 16, 1024):
            # About 2 M deliveries per case (one-line reads at 1000 subscribers: 2 M writes).
            messages = 200 if quick else max(lines_per_read, 2_000_000 // subscribers)
            rows += measure(subscribers, lines_per_read, messages)
    print("RESULT " + json.dumps(rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
