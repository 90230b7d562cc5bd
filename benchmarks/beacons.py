"""Beacon flood: what thousands of fake servers a second cost a discovery listener.

``python -m benchmarks.beacons [--count N] [--max-servers M]``

Safety: every datagram is sent on interface 127.0.0.1 with TTL 0, so none leaves this host.

Three measurements, each against a baseline taken in the same run:

1. **Per beacon, sans I/O**: :class:`~chatcast._core.beacon.BeaconDecoder` plus
   :class:`~chatcast._core.beacon.ServerTable` on N beacons of N different fake ids (every one
   a new server, the worst case), unsigned and signed; baseline: ``json.loads`` of the same
   bodies, the least any JSON beacon costs.
2. **Memory**: what the decoder and the table hold (``tracemalloc``) after N fake ids,
   against after ``max_servers`` ids: bounded means equal.
3. **End to end**: a sender process floods N beacons (fake ids) at 127.0.0.1 as fast as it
   can; a :func:`chatcast.discover` listener in this process counts them. Reported: beacons
   handled per second and this process's CPU per beacon, the servers listed at the end, and
   how many the kernel dropped (sent - received) when the listener fell behind; baseline: a
   raw blocking ``recv`` loop on a socket joined the same way, fed the same flood.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import tracemalloc
from typing import Any

from chatcast._core.beacon import Beacon, BeaconDecoder, BeaconEncoder, ServerTable, encode_body
from chatcast._sockets import Interface, open_receive_socket, parse_group
from chatcast.discovery import DEFAULT_DISCOVERY_GROUP, discover

INTERFACE = "127.0.0.1"
PORT = 47067  # not the default 5067: a real listener on this host is not flooded


def fake(i: int) -> Beacon:
    return Beacon(f"{i + 1:016x}", f"fake{i}", host="192.0.2.9", tcp=8080, clients=i % 50)


def per_beacon(count: int, max_servers: int) -> dict[str, Any]:
    bodies = [encode_body(fake(i)) for i in range(count)]
    now = time.time()
    signed = [BeaconEncoder(f"{i + 1:016x}", epoch=1, key=b"k").encode(fake(i), now)
              for i in range(count)]  # fmt: skip
    started = time.perf_counter()
    for body in bodies:
        json.loads(body)
    baseline = time.perf_counter() - started
    result: dict[str, Any] = {"json_loads_us": baseline / count * 1e6}
    for label, data, key in (("unsigned", bodies, None), ("signed", signed, b"k")):
        decoder = BeaconDecoder(key=key, max_servers=max_servers)
        table = ServerTable(max_servers=max_servers)
        started = time.perf_counter()
        for i, datagram in enumerate(data):
            beacon = decoder.decode(datagram, now)
            assert isinstance(beacon, Beacon)
            table.update(beacon, "192.0.2.9", float(i))
        elapsed = time.perf_counter() - started
        assert len(table) == max_servers
        result[f"{label}_us"] = elapsed / count * 1e6
        result[f"{label}_x_json"] = elapsed / baseline
    return result


def memory(count: int, max_servers: int) -> dict[str, int]:
    def held(ids: int) -> int:
        tracemalloc.start()
        decoder, table = (
            BeaconDecoder(max_servers=max_servers),
            ServerTable(max_servers=max_servers),
        )
        for i in range(ids):
            beacon = decoder.decode(encode_body(fake(i)), time.time())
            assert isinstance(beacon, Beacon)
            table.update(beacon, "192.0.2.9", float(i))
        size, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del decoder, table
        return size

    return {"bytes_after_max_servers": held(max_servers), "bytes_after_count": held(count)}


SENDER = """\
import socket, sys, time
sys.path[:0] = [{path!r}]
from benchmarks.beacons import fake
from chatcast._core.beacon import encode_body
count = int(sys.argv[1])
bodies = [encode_body(fake(i)) for i in range(count)]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, bytes([0]))
print("READY", flush=True)
started = time.monotonic()
for body in bodies:
    sock.sendto(body, ({group!r}, {port}))
print(time.monotonic() - started, flush=True)
"""


def _flood(count: int) -> subprocess.Popen[str]:
    """Start the sender; return once it is about to send (its beacons are made)."""
    code = SENDER.format(path=sys.path[0] or ".", group=DEFAULT_DISCOVERY_GROUP, port=PORT)
    sender = subprocess.Popen([sys.executable, "-c", code, str(count)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert sender.stdout is not None
    assert sender.stdout.readline() == "READY\n"
    return sender


def raw_receiver(count: int) -> dict[str, Any]:
    sock = open_receive_socket(
        parse_group(DEFAULT_DISCOVERY_GROUP), PORT, Interface(address=INTERFACE, spec=INTERFACE),
        receive_buffer_bytes=None,
    )  # fmt: skip
    sock.setblocking(True)
    sock.settimeout(0.5)
    received = 0
    sender = _flood(count)
    cpu = time.process_time()
    started = time.monotonic()
    last = started
    try:
        while True:
            sock.recv(2048)
            received += 1
            last = time.monotonic()
    except TimeoutError:
        pass
    cpu = time.process_time() - cpu
    sender.wait()
    sock.close()
    return {"received": received, "per_s": received / max(last - started, 1e-9),
            "cpu_us": cpu / max(received, 1) * 1e6}  # fmt: skip


async def chatcast_receiver(count: int, max_servers: int) -> dict[str, Any]:
    async with discover(interface=INTERFACE, port=PORT, max_servers=max_servers) as found:
        sender = await asyncio.to_thread(_flood, count)
        cpu = time.process_time()
        started = time.monotonic()
        last, seen = started, 0
        while True:  # until 0.5 s pass with nothing new
            await asyncio.sleep(0.5)
            received = found.statistics().received
            if received == seen:
                break
            seen, last = received, time.monotonic()
        cpu = time.process_time() - cpu  # the idle 0.5 s at the end costs no CPU
        stats = found.statistics()
        sender.wait()
    return {"received": stats.received, "per_s": stats.received / max(last - started - 0.5, 1e-9),
            "cpu_us": cpu / max(stats.received, 1) * 1e6, "servers": stats.servers,
            "evicted": stats.evicted, "changes_overflowed": stats.overflowed}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.beacons", description=__doc__)
    parser.add_argument("--count", type=int, default=100_000, help="fake ids (default 100000)")
    parser.add_argument("--max-servers", type=int, default=256)
    args = parser.parse_args(argv)
    results = {
        "per_beacon": per_beacon(args.count, args.max_servers),
        "memory": memory(args.count, args.max_servers),
        "raw": raw_receiver(args.count),
        "chatcast": asyncio.run(chatcast_receiver(args.count, args.max_servers)),
    }
    p, m, raw, cc = results["per_beacon"], results["memory"], results["raw"], results["chatcast"]
    print(f"per beacon, sans I/O ({args.count} new fake ids, table of {args.max_servers}):")
    print(f"  json.loads baseline  {p['json_loads_us']:.2f} us")
    print(f"  unsigned             {p['unsigned_us']:.2f} us  ({p['unsigned_x_json']:.1f} x json)")
    print(f"  signed (HMAC)        {p['signed_us']:.2f} us  ({p['signed_x_json']:.1f} x json)")
    print(f"memory held: after {args.max_servers} ids {m['bytes_after_max_servers']:,} B, "
          f"after {args.count} ids {m['bytes_after_count']:,} B")  # fmt: skip
    print(f"flood over 127.0.0.1 ({args.count} beacons sent):")
    print(f"  raw recv loop  received {raw['received']:,}  {raw['per_s']:,.0f}/s  "
          f"CPU {raw['cpu_us']:.1f} us/beacon")  # fmt: skip
    print(f"  discover()     received {cc['received']:,}  {cc['per_s']:,.0f}/s  "
          f"CPU {cc['cpu_us']:.1f} us/beacon ({cc['cpu_us'] / raw['cpu_us']:.1f} x raw), "
          f"servers listed {cc['servers']}, evicted {cc['evicted']:,}")  # fmt: skip
    print("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
