"""Workload 4, multicast: a raw blocking sender and two kinds of receiver, each a process.

Safety: every socket here names interface 127.0.0.1 and sends with TTL 0 or 1 only, so no
datagram leaves this host (``--ttl`` refuses anything else).

* ``python -m benchmarks.mcast send --group G --port P --count N [--rate R]``: a blocking
  socket sends N datagrams of ``--size`` bytes (unpaced, or R per second), prints
  ``RESULT <json>`` with its start and end times (``time.monotonic``, system-wide on Linux).
* ``python -m benchmarks.mcast receive --kind raw|chatcast ...``: prints ``READY`` once joined,
  then ``RESULT <json>`` (datagrams received, first and last receive time) when ``--count``
  arrived or nothing came for ``--idle`` seconds. ``raw`` is a blocking ``recv_into`` loop on
  a socket built exactly like :class:`~chatcast.MulticastChannel`'s (same buffer, same join);
  ``chatcast`` is ``async for message in channel`` over a :class:`~chatcast.MulticastChannel`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from typing import Any

INTERFACE = "127.0.0.1"


def _payload(seq: int, size: int) -> bytes:
    head = b"#m%08d " % seq
    return head + b"x" * (size - len(head))


def send(args: argparse.Namespace) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(INTERFACE))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, bytes([args.ttl]))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, bytes([1]))
    address = (args.group, args.port)
    payloads = [_payload(i, args.size) for i in range(min(args.count, 1000))]
    count = args.count
    sendto = sock.sendto
    started = time.monotonic()
    if not args.rate:
        for i in range(count):
            sendto(payloads[i % 1000], address)
    else:
        # Paced: catch up to the schedule every 100 us at most, so the rate holds on average
        # and bursts never exceed a few datagrams.
        interval = 1.0 / args.rate
        sent = 0
        while sent < count:
            due = min(count, int((time.monotonic() - started) / interval) + 1)
            while sent < due:
                sendto(payloads[sent % 1000], address)
                sent += 1
            if sent < count:
                pause = started + sent * interval - time.monotonic()
                if pause > 0.0002:
                    time.sleep(pause - 0.0001)
    ended = time.monotonic()
    sock.close()
    return {"sent": count, "started": started, "ended": ended}


def _receive_raw(args: argparse.Namespace) -> dict[str, Any]:
    from chatcast import _sockets

    group = _sockets.parse_group(args.group)
    interface = _sockets.resolve_interface(INTERFACE, socket.AF_INET)
    sock = _sockets.open_receive_socket(group, args.port, interface)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    sock.setblocking(True)
    sock.settimeout(args.idle)
    buf = bytearray(65536)
    recv_into = sock.recv_into
    print("READY", flush=True)
    count = 0
    first = last = 0.0
    sock.settimeout(args.timeout)
    try:
        recv_into(buf)
        first = last = time.monotonic()
        count = 1
        sock.settimeout(args.idle)
        while count < args.count:
            recv_into(buf)
            count += 1
            if not count & 255:
                last = time.monotonic()
        last = time.monotonic()
    except TimeoutError:
        pass  # ``last`` is within 256 datagrams of the last one
    sock.close()
    return {"received": count, "first": first, "last": last, "rcvbuf": granted}


async def _receive_chatcast(args: argparse.Namespace) -> dict[str, Any]:
    from chatcast.multicast import MulticastChannel

    channel = MulticastChannel(args.group, args.port, interface=INTERFACE, ttl=args.ttl)
    count = 0
    first = last = 0.0
    async with channel:
        print("READY", flush=True)
        loop = asyncio.get_running_loop()

        def watchdog(seen: int, deadline: float) -> None:
            # Ends the run once nothing arrived for ``idle`` seconds (or by ``timeout``).
            if count >= args.count or loop.time() >= deadline:
                channel.close()
            elif count == seen and count:
                channel.close()
            else:
                loop.call_later(args.idle, watchdog, count, deadline)

        loop.call_later(args.idle, watchdog, -1, loop.time() + args.timeout)
        async for _message in channel:
            if not count:
                first = time.monotonic()
            count += 1
            if not count & 255:
                last = time.monotonic()
            if count >= args.count:
                last = time.monotonic()
                break
        stats = channel.statistics()
    return {
        "received": count,
        "first": first,
        "last": last,
        "rcvbuf": stats.receive_buffer_bytes,
        "kernel_read": stats.received,
        "overflowed": stats.overflowed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mcast")
    parser.add_argument("role", choices=("send", "receive"))
    parser.add_argument("--group", default="239.255.77.77")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rate", type=float, default=0.0, help="datagrams/s; 0: unpaced")
    parser.add_argument("--ttl", type=int, default=0, choices=(0, 1))
    parser.add_argument("--kind", choices=("raw", "chatcast"), default="raw")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--idle", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.role == "send":
        result = send(args)
    elif args.kind == "raw":
        result = _receive_raw(args)
    else:
        factory = None
        if args.uvloop:
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            result = runner.run(_receive_chatcast(args))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
