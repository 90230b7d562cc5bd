"""Sending with acknowledgements: ``python -m benchmarks.acks [--quick] [--repeat N]``.

One ``BroadcastClient`` sends N messages to a chatcast server (in this process's event loop,
a second process would only add noise on 2 cores) three ways:

* ``fire-and-forget``: the frames written back to back with no ``ref``, as ``send()`` did
  before it waited for the server: the baseline;
* ``post()``: each frame with a ``ref``, written at once, the acks gathered at the end
  (pipelined);
* ``send()``: one round trip per message.

The run ends when the server has relayed every message to one other member (counted by a
second client), so all three are measured to the same point. Prints ``RESULT <json>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from chatcast import BroadcastClient, BroadcastServer


async def _drain(reader: BroadcastClient, count: int) -> None:
    got = 0
    while got < count:
        message = await reader.receive()
        if message.kind == "message" and not message.history:
            got += 1


async def _one(how: str, count: int) -> float:
    async with BroadcastServer("127.0.0.1", 0, history=None, history_on_join=0) as server:
        async with (
            BroadcastClient("127.0.0.1", server.port, name="sender", queue_size=100_000) as sender,
            BroadcastClient("127.0.0.1", server.port, name="reader", queue_size=100_000) as reader,
        ):
            texts = [f"message number {n}" for n in range(count)]
            drained = asyncio.create_task(_drain(reader, count))
            started = time.perf_counter()
            if how == "fire-and-forget":
                writer = sender._writable()
                for text in texts:
                    writer.write(sender._protocol.message(text))
                    await writer.drain()
            elif how == "post":
                futures = [await sender.post(text) for text in texts]
                await asyncio.gather(*futures)
            else:
                for text in texts:
                    await sender.send(text)
            await drained
            return count / (time.perf_counter() - started)


async def _main(count: int, repeat: int) -> list[dict[str, Any]]:
    results: dict[str, list[float]] = {}
    for _ in range(repeat):
        for how in ("fire-and-forget", "post", "send"):
            n = count if how != "send" else max(100, count // 10)
            results.setdefault(how, []).append(await _one(how, n))
    base = sorted(results["fire-and-forget"])[repeat // 2]
    rows = []
    for how, rates in results.items():
        rate = sorted(rates)[repeat // 2]
        rows.append(
            {
                "workload": "acks",
                "server": how,
                "messages_per_s": rate,
                "runs_per_s": rates,
                "vs_fire_and_forget": rate / base,
                "all_counted": True,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.acks")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    count = 500 if args.quick else 20_000
    rows = asyncio.run(_main(count, 1 if args.quick else args.repeat))
    print("RESULT " + json.dumps(rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
