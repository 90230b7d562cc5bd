"""The client's receive path: ``python -m benchmarks.client_receive``.

CPU time a receiving process spends per chat message, for :class:`~chatcast.BroadcastClient`
(``await client.receive()`` N times, default ``queue_size``) and, in the same run against the
same feeder, for the bare loop that any client must at least do (``await reader.readline()``
then ``json.loads``). Both rates run by default: 50,000 messages/s (what issue #10 measured)
and unpaced. Three kinds of process, so each one's CPU is its own:

* the **feeder** (``feed``): a plain asyncio server that plays a chatcast server: it sends the
  welcome line, reads the hello, answers ``welcome``, then writes N pre-encoded ``message``
  frames, byte for byte what the server relays (``{"type":"message","from":...,"text":...,
  "room":...,"ts":...}``), paced at ``--rate`` messages per second (catching up to the schedule
  about every millisecond), or as fast as the socket takes them with ``--rate 0``;
* a **receiver** (``receive --kind client|bare``), one per measurement, which times
  ``time.process_time()`` from the end of its hello to its N-th message and prints
  ``RESULT <json>``;
* this orchestrator, which alternates the two receivers ``--repeat`` times, keeps each one's
  best run (least disturbed by the rest of the machine), and prints a table and
  ``RESULT <json>`` with µs of CPU per message for each and their ratio.

Set ``CHATCAST_BENCH_PATH`` to a directory holding another ``chatcast`` package to measure it
instead (before/after comparisons); only the public API is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from ._util import Child

WELCOME_TEXT = "Selamat datang di Server..."


def _frames(count: int) -> list[bytes]:
    """``count`` distinct message frames, encoded as the server's relay encodes them."""
    stamp = round(time.time(), 3)
    name, room = json.dumps("alice"), json.dumps("lobby")
    frames = []
    head = '{"type":"message","from":' + name + ',"text":'
    tail = ',"room":' + room + ',"ts":' + repr(stamp) + "}\n"
    for i in range(count):
        text = json.dumps(f"message {i:07d} in a chat of ordinary length, about eighty bytes")
        frames.append((head + text + tail).encode())
    return frames


# -- the feeder -----------------------------------------------------------------------------


async def _feed(args: argparse.Namespace) -> None:
    frames = _frames(args.messages)
    blob = b"".join(frames)
    offsets = [0]
    for frame in frames:
        offsets.append(offsets[-1] + len(frame))
    count, rate = args.messages, args.rate
    welcome = json.dumps(
        {"type": "welcome", "name": "bench", "room": "lobby", "text": WELCOME_TEXT,
         "version": 1, "heartbeat": 30.0},
        separators=(",", ":"),
    ).encode() + b"\n"  # fmt: skip

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(WELCOME_TEXT.encode() + b"\n")
            await reader.readline()  # the hello (or the bare loop's stand-in)
            writer.write(welcome)
            await writer.drain()
            started = time.monotonic()
            sent = 0
            while sent < count and not writer.is_closing():
                due = count if not rate else min(count, int((time.monotonic() - started) * rate))
                if due > sent:
                    writer.write(blob[offsets[sent] : offsets[due]])
                    sent = due
                    await writer.drain()
                if sent < count and rate:
                    await asyncio.sleep(0.001)
            await reader.read()  # until the receiver hangs up
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    # Stopped by closing stdin.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


# -- the receivers --------------------------------------------------------------------------


async def _receive_client(port: int, count: int) -> dict[str, Any]:
    from chatcast import BroadcastClient

    client = BroadcastClient("127.0.0.1", port, name="bench")
    await client.connect()
    receive = client.receive
    try:
        cpu, wall = time.process_time(), time.monotonic()
        for _ in range(count):
            message = await receive()
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        assert message.kind == "message", message
        assert message.text.startswith(f"message {count - 1:07d} "), message
    finally:
        await client.close()
    return {"cpu_s": cpu, "wall_s": wall}


async def _receive_bare(port: int, count: int) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()  # the welcome line
    writer.write(b'{"type":"hello","name":"bench"}\n')
    json.loads(await reader.readline())  # the welcome frame
    readline, loads = reader.readline, json.loads
    try:
        cpu, wall = time.process_time(), time.monotonic()
        for _ in range(count):
            obj = loads(await readline())
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        assert obj["type"] == "message", obj
        assert obj["text"].startswith(f"message {count - 1:07d} "), obj
    finally:
        writer.close()
        await writer.wait_closed()
    return {"cpu_s": cpu, "wall_s": wall}


def _receive(args: argparse.Namespace) -> dict[str, Any]:
    run = _receive_client if args.kind == "client" else _receive_bare
    result = asyncio.run(run(args.port, args.messages))
    n = args.messages
    result.update(kind=args.kind, messages=n, us_per_message=1e6 * result["cpu_s"] / n)
    result["rate"] = n / result["wall_s"] if result["wall_s"] else 0.0
    return result


# -- the orchestrator -----------------------------------------------------------------------


def measure(messages: int, rate: float, repeat: int) -> dict[str, Any]:
    """Run the feeder once and each receiver ``repeat`` times; return the best of each."""
    feeder = Child(["-m", "benchmarks.client_receive", "feed", f"--messages={messages}",
                    f"--rate={rate}"])  # fmt: skip
    best: dict[str, dict[str, Any]] = {}
    try:
        port = int(feeder.expect("PORT"))
        for _ in range(repeat):
            for kind in ("bare", "client"):
                receiver = Child(["-m", "benchmarks.client_receive", "receive", f"--kind={kind}",
                                  f"--port={port}", f"--messages={messages}"])  # fmt: skip
                try:
                    result = json.loads(receiver.expect("RESULT", timeout=120))
                finally:
                    receiver.stop()
                if kind not in best or result["us_per_message"] < best[kind]["us_per_message"]:
                    best[kind] = result
    finally:
        feeder.stop()
    bare, client = best["bare"]["us_per_message"], best["client"]["us_per_message"]
    return {
        "workload": "client_receive",
        "messages": messages,
        "rate": rate,
        "repeat": repeat,
        "bare_us_per_message": bare,
        "client_us_per_message": client,
        "ratio": client / bare,
        "bare_achieved_rate": best["bare"]["rate"],
        "client_achieved_rate": best["client"]["rate"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.client_receive")
    parser.add_argument("role", nargs="?", choices=("run", "feed", "receive"), default="run")
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=50_000.0, help="messages/s; 0: unpaced")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kind", choices=("client", "bare"), default="client")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.role == "feed":
        asyncio.run(_feed(args))
        return 0
    if args.role == "receive":
        print("RESULT " + json.dumps(_receive(args)), flush=True)
        return 0
    if args.quick:
        args.messages, args.repeat = 2000, 1
    rows = [measure(args.messages, rate, args.repeat) for rate in dict.fromkeys((args.rate, 0.0))]
    for row in rows:
        paced = f"{row['rate']:,.0f}/s" if row["rate"] else "unpaced"
        print(
            f"{row['messages']:,} messages {paced}: bare loop {row['bare_us_per_message']:.2f} "
            f"µs/msg, BroadcastClient {row['client_us_per_message']:.2f} µs/msg, "
            f"ratio {row['ratio']:.2f} x"
        )
    print("RESULT " + json.dumps(rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
