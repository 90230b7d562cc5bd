"""What a banned address reconnecting in a loop costs the server: ``python -m benchmarks.banned``.

A chatcast server runs in a child process with ``127.0.0.9`` banned. This process connects
``--count`` times from ``127.0.0.9`` (each connection sends a hello and 4 KiB, reads the
refusal and hangs up), then as many times from ``127.0.0.1`` as a well-behaved text client
that reads the welcome and sends ``/quit`` (the baseline, measured in the same run). The
server's CPU time (``/proc``) over each phase, per connection, is the figure; the ratio
``banned / baseline`` is the claim (a refusal costs no more than the shortest visit).
Prints ``RESULT <json>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

from ._util import cpu_seconds

_SERVER = """
import asyncio, sys
from chatcast import BroadcastServer
async def main():
    server = BroadcastServer("127.0.0.1", 0, op_token="bench-op", max_clients=None)
    await server.start()
    server.ban(address="127.0.0.9", reason="bot")
    print(server.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.aclose()
asyncio.run(main())
"""


async def _banned(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.9", 0))
    writer.write(b'{"type":"hello","name":"bot"}\n' + b"x" * 4096 + b"\n")
    line = await reader.readline()
    assert line.startswith(b"! banned"), line
    writer.close()


async def _visit(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()  # the welcome
    writer.write(b"/quit\n")
    await reader.read()
    writer.close()


async def _phase(pid: int, port: int, count: int, visit: object) -> tuple[float, float]:
    assert callable(visit)
    cpu, wall = cpu_seconds(pid), time.perf_counter()
    for _ in range(count):
        await visit(port)
    await asyncio.sleep(0.5)  # let the server finish closing (lingering close: at most 2 s)
    return cpu_seconds(pid) - cpu, time.perf_counter() - wall


async def _measure(pid: int, port: int, count: int) -> dict[str, object]:
    banned_cpu, banned_wall = await _phase(pid, port, count, _banned)
    base_cpu, base_wall = await _phase(pid, port, count, _visit)
    return {
        "workload": "banned",
        "connections": count,
        "banned_us_cpu_per_connection": round(banned_cpu / count * 1e6, 1),
        "baseline_us_cpu_per_connection": round(base_cpu / count * 1e6, 1),
        "ratio": round(banned_cpu / base_cpu, 2) if base_cpu else None,
        "banned_connections_per_s": round(count / banned_wall),
        "baseline_connections_per_s": round(count / base_wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    child = subprocess.Popen(
        [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        result = asyncio.run(_measure(child.pid, port, args.count))
    finally:
        assert child.stdin is not None
        child.stdin.close()  # the server's end: it closes and exits
        child.wait(timeout=30)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
