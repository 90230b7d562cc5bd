"""The WebSocket front door against TCP, in one run: ``python -m benchmarks.web [--quick]``.

For each kind of subscriber (``tcp``: JSON mode on the TCP port; ``ws``: the same JSON frames
over :mod:`chatcast.web`'s WebSocket, driven by the ``websockets`` client as a browser would
be), a fresh server process (``serve``: a ``BroadcastServer`` with a ``WebGateway``) and a load
process (``load``):

* **memory per idle client**: the server's RSS before and after ``--idle`` clients have said
  hello and been welcomed, divided by their number;
* **burst fan-out**: ``--subscribers`` subscribers in one room, one TCP publisher writes
  ``--messages`` 64-byte messages at once; deliveries per second until every subscriber has
  every message, and the server's CPU per 1,000 deliveries.

Prints a table and ``RESULT <json>`` (rows, and the ws/tcp ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from ._util import Child, rss_bytes

Row = dict[str, Any]


async def serve() -> None:
    """A server and its gateway; prints ``PORT tcp web``; ``CPU`` lines are answered with
    the process's CPU seconds (finer than /proc's 10 ms ticks); exits at end of stdin."""
    from chatcast import BroadcastServer
    from chatcast.web import WebGateway

    loop = asyncio.get_running_loop()
    async with (
        BroadcastServer("127.0.0.1", 0, max_clients=5000, heartbeat_interval=600) as server,
        WebGateway(server, port=0) as gateway,
    ):
        print(f"PORT {server.port} {gateway.port}", flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip() == "CPU":
                print(f"CPU {time.process_time()}", flush=True)


async def _tcp_client(port: int, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A JSON-mode TCP client, welcomed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(json.dumps({"type": "hello", "name": name}).encode() + b"\n")
    while b'"welcome"' not in await reader.readline():
        pass
    return reader, writer


async def _ws_client(port: int, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client, welcomed: websockets' client protocol does the handshake and frames
    the hello (masked, as a browser does)."""
    from websockets.client import ClientProtocol
    from websockets.frames import Frame
    from websockets.protocol import State
    from websockets.uri import parse_uri

    protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/ws"))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    protocol.send_request(protocol.connect())
    writer.write(b"".join(protocol.data_to_send()))
    said_hello = welcomed = False
    while not welcomed:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("closed before the welcome")
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Frame) and b'"welcome"' in event.data:
                welcomed = True
        if protocol.state is State.OPEN and not said_hello:
            said_hello = True
            protocol.send_text(json.dumps({"type": "hello", "name": name}).encode())
        writer.write(b"".join(protocol.data_to_send()))
    return reader, writer


async def load(kind: str, pid: int, tcp: int, web: int, idle: int, subs: int, msgs: int) -> Row:
    """Connect ``idle`` clients of ``kind``; say READY and wait for GO; burst to ``subs``.

    Deliveries are counted in the bytes received (the server's frames are unmasked, so each
    message's JSON is there as it is, in both kinds): the load process then costs the same
    per delivery for both, and the comparison is the server's.
    """
    connect = _tcp_client if kind == "tcp" else _ws_client
    port = tcp if kind == "tcp" else web
    before = rss_bytes(pid)
    clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for start in range(0, idle, 100):
        batch = range(start, min(idle, start + 100))
        clients += await asyncio.gather(*(connect(port, f"{kind}{i}") for i in batch))
    after = rss_bytes(pid)
    row: Row = {
        "workload": "web",
        "server": f"chatcast {kind}",
        "kind": kind,
        "idle_clients": idle,
        "rss_per_client_kb": (after - before) / idle / 1024,
        "subscribers": subs,
        "messages": msgs,
    }
    for _, writer in clients[subs:]:  # the burst goes to the first `subs` only
        writer.close()
    _, publisher = await _tcp_client(tcp, "publisher")
    marker = b'"type":"message"'

    async def count(reader: asyncio.StreamReader) -> int:
        got, tail = 0, b""
        while got < msgs:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data = tail + chunk
            got += data.count(marker)
            tail = data[-(len(marker) - 1) :]
        return got

    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # GO
    frame = json.dumps({"type": "message", "text": "x" * 64}).encode() + b"\n"
    started = time.perf_counter()
    counters = [asyncio.create_task(count(reader)) for reader, _ in clients[:subs]]
    publisher.write(frame * msgs)
    got = await asyncio.wait_for(asyncio.gather(*counters), 300)
    seconds = time.perf_counter() - started
    deliveries = sum(got)
    row.update(
        seconds=seconds,
        deliveries=deliveries,
        deliveries_per_s=deliveries / seconds,
        lost=subs * msgs - deliveries,
        all_counted=deliveries == subs * msgs,
    )
    publisher.close()
    for _, writer in clients[:subs]:
        writer.close()
    return row


def measure(quick: bool) -> list[Row]:
    """Both kinds, each against a fresh server; rows plus a ratio row."""
    idle, subs, msgs = (50, 20, 20) if quick else (1000, 100, 10_000)
    rows: list[Row] = []
    for kind in ("tcp", "ws"):
        server = Child(["-m", "benchmarks.web", "serve"])
        try:
            tcp, web = server.expect("PORT", timeout=30).split()[-2:]
            loader = Child(
                [
                    "-m", "benchmarks.web", "load", kind, str(server.pid), tcp, web,
                    str(idle), str(subs), str(msgs),
                ]
            )  # fmt: skip
            try:
                loader.expect("READY", timeout=600)
                server.send("CPU")
                cpu0 = float(server.expect("CPU"))
                loader.send("GO")
                row: Row = json.loads(loader.expect("RESULT", timeout=600))
                server.send("CPU")
                cpu = float(server.expect("CPU")) - cpu0
            finally:
                loader.stop()
        finally:
            server.stop()
        row["server_cpu_s"] = cpu
        row["server_cpu_us_per_1k"] = cpu / max(1, row["deliveries"]) * 1e9
        rows.append(row)
    tcp_row, ws_row = rows
    rows.append(
        {
            "workload": "web",
            "server": "ws / tcp",
            "kind": "ratio",
            "memory_ratio": ws_row["rss_per_client_kb"] / max(0.01, tcp_row["rss_per_client_kb"]),
            "throughput_ratio": ws_row["deliveries_per_s"] / tcp_row["deliveries_per_s"],
            "cpu_ratio": ws_row["server_cpu_us_per_1k"]
            / max(1e-9, tcp_row["server_cpu_us_per_1k"]),
            "all_counted": True,
        }
    )
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "WebSocket vs TCP subscribers (JSON frames, 64-byte messages, one server process)",
        f"{'kind':<8}{'KB/idle client':>15}{'subs':>6}{'deliveries/s':>14}{'CPU us/1k':>11}"
        f"{'lost':>6}",
    ]
    for r in rows:
        if r["kind"] == "ratio":
            lines.append(
                f"ws/tcp: memory {r['memory_ratio']:.2f} x, throughput "
                f"{r['throughput_ratio']:.2f} x, server CPU per delivery {r['cpu_ratio']:.2f} x"
            )
        else:
            lines.append(
                f"{r['kind']:<8}{r['rss_per_client_kb']:>15.2f}{r['subscribers']:>6}"
                f"{r['deliveries_per_s']:>14,.0f}{r['server_cpu_us_per_1k']:>11.0f}{r['lost']:>6}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.web", description=__doc__)
    parser.add_argument("mode", nargs="?", default="measure", choices=("measure", "serve", "load"))
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny counts")
    args = parser.parse_args(argv)
    if args.mode == "serve":
        asyncio.run(serve())
        return 0
    if args.mode == "load":
        kind, *numbers = args.rest
        row = asyncio.run(load(kind, *(int(n) for n in numbers)))  # type: ignore[arg-type]
        print("RESULT " + json.dumps(row), flush=True)
        return 0
    rows = measure(args.quick)
    print(table(rows))
    print("RESULT " + json.dumps(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
