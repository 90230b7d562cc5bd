"""Per-server backplane cost as servers are added (issue #12): ``python -m benchmarks.sharding``.

For each number of servers N (``--servers 1,2,4,8``) and each backplane class
(``--classes``, dotted names), a fresh set of processes on one ``redis-server`` of the
benchmark's own and a fresh key prefix:

* N chatcast servers (``serve``: a ``BroadcastServer`` on 127.0.0.1 port 0 whose backplane is
  ``Class(url, prefix=prefix)``); server ``i`` hosts the rooms ``r{i*R}`` .. ``r{i*R+R-1}``
  (``--rooms`` R, 10 by default), each with ``--members`` members and one publisher, all
  connected to that server only;
* one load process (``load``): JSON clients; each publisher sends ``--rate`` messages a second
  (5) to its room for ``--duration`` seconds (8), the rooms' sends spread over the period, and
  every member checks that it got every message of its room, once, and nothing of another.

Total traffic grows with N; each server's own share stays the same. Between ``READY`` (all
clients in, the joins settled) and ``RESULT`` (every message sent and delivered, or the
timeout) the orchestrator reads each server's CPU time (``time.process_time()``) and
``statistics().backplane_received``, and Redis's CPU (``/proc``). A server whose backplane
reads every envelope of every room does more work per server as N grows; one that reads only
the rooms it hosts does not: the ``x{max} / x{min}`` row is that ratio (flat is about 1.0).

A class name that does not exist in its module falls back to
``chatcast.backplane.RedisBackplane`` (before issue #12, the pub/sub design had no other
name); every row names the class the servers actually used.

Prints a table and ``RESULT <json>`` (the rows; ratio rows have ``kind`` ``"ratio"``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import logging
import signal
import sys
import time
import uuid
from typing import Any

from . import _redis
from ._serve import _wait_stdin_then
from ._util import Child, cpu_seconds, raise_nofile
from .run import RESULTS, Server

Row = dict[str, Any]

NEW = "chatcast.backplane.RedisBackplane"
OLD = "chatcast.backplane.RedisPubSubBackplane"
FALLBACK = NEW  # the name of the pub/sub design before issue #12

logger = logging.getLogger("benchmarks.sharding")


def _short(dotted: str) -> str:
    """``Class`` of ``module.Class``."""
    return dotted.rpartition(".")[2]


# -- the server process ---------------------------------------------------------------------


def resolve(dotted: str) -> type[Any]:
    """The class named ``module.Class``; ``FALLBACK`` if the module has no such name.

    Raises:
        ValueError: ``dotted`` names no module.
        ImportError: The module (or the fallback's) cannot be imported.
    """
    module, _, name = dotted.rpartition(".")
    if not module:
        raise ValueError(f"a backplane class is module.Class, got {dotted!r}")
    cls = getattr(importlib.import_module(module), name, None)
    if cls is None:
        logger.warning("%s does not exist: using %s", dotted, FALLBACK)
        module, _, name = FALLBACK.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
    if not isinstance(cls, type):
        raise ValueError(f"{dotted} is not a class")
    return cls


def _has(dotted: str) -> bool:
    """Whether ``module.Class`` exists (where it is defined does not matter)."""
    module, _, name = dotted.rpartition(".")
    return hasattr(importlib.import_module(module), name)


async def serve(class_name: str, url: str, prefix: str) -> None:
    """A server with a backplane of ``class_name``; prints ``PORT n``; answers ``STATS`` lines
    with its statistics, CPU seconds, monotonic time and backplane class; exits at end of
    stdin or on SIGTERM."""
    from chatcast import BroadcastServer

    cls = resolve(class_name)
    backplane = cls(url, prefix=prefix)
    server = BroadcastServer("127.0.0.1", 0, backplane=backplane)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def report() -> None:
        figures = dataclasses.asdict(server.statistics())
        figures.update(
            cpu_s=time.process_time(),
            at=time.monotonic(),
            backplane_class=class_name if _has(class_name) else FALLBACK,
        )
        print("STATS " + json.dumps(figures), flush=True)

    _wait_stdin_then(
        lambda: loop.call_soon_threadsafe(stop.set), lambda: loop.call_soon_threadsafe(report)
    )
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await server.start()
    print(f"PORT {server.port}", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()


class ShardServer(Server):
    """A :class:`~benchmarks.run.Server` started by :func:`serve` (the same ``PORT`` and
    ``STATS`` lines) with a backplane class chosen by name."""

    def __init__(self, class_name: str, url: str, prefix: str) -> None:
        args = ["-m", "benchmarks.sharding", "serve", "--backplane-class", class_name]
        args += ["--url", url, "--prefix", prefix]
        self.name = _short(class_name)
        self.child = Child(args, stderr_to=RESULTS / "server-sharding.log")
        self.pid = self.child.pid
        self.port = 0


# -- the load process -----------------------------------------------------------------------


@dataclasses.dataclass
class _Member:
    room: str
    count: int  # messages its room will get
    seqs: set[int] = dataclasses.field(default_factory=set)
    duplicates: int = 0
    foreign: int = 0
    latencies_ns: list[int] = dataclasses.field(default_factory=list)
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class _Load:
    def __init__(self) -> None:
        self.frame = asyncio.Event()  # set at every frame read
        self.writers: list[asyncio.StreamWriter] = []

    async def connect(self, port: int, name: str, room: str) -> asyncio.StreamReader:
        """A JSON client in ``room``, welcomed."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.writers.append(writer)
        hello = {"type": "hello", "name": name, "room": room}
        writer.write(json.dumps(hello).encode() + b"\n")
        while b'"type":"welcome"' not in (line := await reader.readline()).replace(b" ", b""):
            if not line:
                raise ConnectionError(f"{name}: closed before the welcome")
        return reader

    async def read(self, reader: asyncio.StreamReader, member: _Member | None) -> None:
        """Read frames until the connection ends; a member records its room's messages."""
        while line := await reader.readline():
            self.frame.set()
            if member is None or not line.startswith(b"{"):
                continue
            frame = json.loads(line)
            if frame.get("type") != "message":
                continue
            room, seq, sent = frame["text"].split()[:3]
            if room != member.room or frame.get("room") != member.room:
                member.foreign += 1
                continue
            if int(seq) in member.seqs:
                member.duplicates += 1
                continue
            member.seqs.add(int(seq))
            member.latencies_ns.append(time.perf_counter_ns() - int(sent))
            if len(member.seqs) == member.count:
                member.done.set()

    async def settle(self, quiet: float = 0.3, limit: float = 5.0) -> None:
        """Wait until no frame has come for ``quiet`` s (join notices), at most ``limit`` s."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            self.frame.clear()
            try:
                await asyncio.wait_for(self.frame.wait(), quiet)
            except TimeoutError:
                return


async def _publish(
    writer: asyncio.StreamWriter, room: str, count: int, rate: float, start: float, size: int
) -> None:
    loop = asyncio.get_running_loop()
    for seq in range(count):
        delay = start + seq / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        text = f"{room} {seq} {time.perf_counter_ns()} "
        frame = {"type": "message", "text": text.ljust(size, "x")}
        writer.write(json.dumps(frame).encode() + b"\n")
        await writer.drain()


async def load(args: argparse.Namespace) -> Row:
    """Connect every room's members and publisher (room ``r{i*R+k}`` on ``ports[i]``); say
    ``READY``, wait for ``GO``, publish, wait for every delivery or the timeout."""
    loop = asyncio.get_running_loop()
    ports: list[int] = [int(p) for p in args.ports.split(",")]
    count = max(1, round(args.rate * args.duration))
    state = _Load()
    members: list[_Member] = []
    publishers: list[tuple[str, asyncio.StreamWriter]] = []
    readers: list[asyncio.Task[None]] = []
    for i, port in enumerate(ports):
        for k in range(args.rooms):
            room = f"r{i * args.rooms + k}"
            for j in range(args.members):
                member = _Member(room, count)
                reader = await state.connect(port, f"m{j}-{room}", room)
                readers.append(asyncio.create_task(state.read(reader, member)))
                members.append(member)
            reader = await state.connect(port, f"p-{room}", room)
            readers.append(asyncio.create_task(state.read(reader, None)))
            publishers.append((room, state.writers[-1]))
    await state.settle()
    print("READY", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # GO
    start = loop.time() + 0.05
    started = time.monotonic()
    await asyncio.gather(
        *(
            _publish(w, room, count, args.rate, start + n / len(publishers) / args.rate, args.size)
            for n, (room, w) in enumerate(publishers)
        )
    )
    sent_s = time.monotonic() - started
    waiting = asyncio.gather(*(m.done.wait() for m in members))
    try:
        await asyncio.wait_for(waiting, args.timeout)
    except TimeoutError:
        pass
    delivered = sum(len(m.seqs) for m in members)
    latencies = sorted(ns for m in members for ns in m.latencies_ns)

    def pct(q: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1e6 if latencies else 0.0
        )

    row: Row = {
        "messages": count * len(publishers),
        "expected": count * len(members),
        "delivered": delivered,
        "lost": count * len(members) - delivered,
        "duplicates": sum(m.duplicates for m in members),
        "foreign": sum(m.foreign for m in members),
        "send_s": sent_s,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }
    row["all_counted"] = (row["lost"], row["duplicates"], row["foreign"]) == (0, 0, 0)
    return row


async def _load_main(args: argparse.Namespace) -> None:
    row = await load(args)
    print("RESULT " + json.dumps(row), flush=True)
    # Stay connected until told: disconnects would be measured otherwise.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# -- the orchestrator -----------------------------------------------------------------------


def _snapshot(servers: list[ShardServer], redis: _redis.RedisServer) -> tuple[list[Row], float]:
    return [server.statistics() for server in servers], cpu_seconds(redis.pid)


def run_once(args: argparse.Namespace, redis: _redis.RedisServer, class_name: str, n: int) -> Row:
    """One run of ``n`` fresh servers with ``class_name`` on ``redis``, a fresh prefix."""
    prefix = f"shard-{uuid.uuid4().hex[:8]}"
    servers: list[ShardServer] = []
    try:
        for _ in range(n):
            servers.append(ShardServer(class_name, redis.url, prefix))
        for server in servers:
            server.wait_ready()
        loader = Child(
            [
                "-m", "benchmarks.sharding", "load",
                "--ports", ",".join(str(s.port) for s in servers),
                f"--rooms={args.rooms}", f"--members={args.members}", f"--rate={args.rate}",
                f"--duration={args.duration}", f"--size={args.size}", f"--timeout={args.timeout}",
            ]
        )  # fmt: skip
        try:
            loader.expect("READY", timeout=60)
            before, redis0 = _snapshot(servers, redis)
            t0 = time.monotonic()
            loader.send("GO")
            result: Row = json.loads(
                loader.expect("RESULT", timeout=args.duration + args.timeout + 30)
            )
            after, redis1 = _snapshot(servers, redis)
            window = time.monotonic() - t0
        finally:
            loader.stop()
    finally:
        for server in servers:
            server.stop()
    pairs = list(zip(before, after, strict=True))
    cpu = [(a["cpu_s"] - b["cpu_s"]) / (a["at"] - b["at"]) * 100 for b, a in pairs]
    envelopes = [
        (a["backplane_received"] - b["backplane_received"]) / (a["at"] - b["at"]) for b, a in pairs
    ]

    def delta(key: str) -> int:
        return sum(int(a[key]) - int(b[key]) for b, a in pairs)

    used = after[0]["backplane_class"]
    result.update(
        workload="sharding",
        kind="run",
        server=f"{_short(used)} x{n}",
        backplane=used,
        backplane_requested=class_name,
        servers=n,
        rooms=n * args.rooms,
        members_per_room=args.members,
        rate=args.rate,
        duration=args.duration,
        window_s=window,
        server_cpu_pct=cpu,
        server_cpu_pct_mean=sum(cpu) / n,
        server_cpu_pct_max=max(cpu),
        envelopes_received_per_s=envelopes,
        envelopes_received_per_s_mean=sum(envelopes) / n,
        envelopes_received_per_s_max=max(envelopes),
        envelopes_published=delta("backplane_published"),
        envelopes_received=delta("backplane_received"),
        backplane_failures=delta("backplane_failures"),
        redis_cpu_pct=(redis1 - redis0) / window * 100,
    )
    result["all_counted"] = bool(result["all_counted"]) and not result["backplane_failures"]
    return result


def ratios(rows: list[Row]) -> list[Row]:
    """Per requested class: mean per-server CPU and envelopes/s at the most servers over the
    fewest."""
    out: list[Row] = []
    runs = [r for r in rows if r["kind"] == "run"]
    for name in dict.fromkeys(r["backplane_requested"] for r in runs):
        mine = sorted(
            (r for r in runs if r["backplane_requested"] == name), key=lambda r: r["servers"]
        )
        low, high = mine[0], mine[-1]
        if low is high or not low["server_cpu_pct_mean"]:
            continue
        out.append(
            {
                "workload": "sharding",
                "kind": "ratio",
                "server": f"{_short(high['backplane'])} x{high['servers']}/x{low['servers']}",
                "backplane": high["backplane"],
                "backplane_requested": name,
                "servers": [low["servers"], high["servers"]],
                "cpu_ratio": high["server_cpu_pct_mean"] / low["server_cpu_pct_mean"],
                # One server alone receives no envelope: the two figures, not their ratio.
                "envelopes_per_s": [
                    low["envelopes_received_per_s_mean"],
                    high["envelopes_received_per_s_mean"],
                ],
                "all_counted": True,
            }
        )
    return out


def targets(rows: list[Row]) -> list[Row]:
    """For :func:`benchmarks.run._ratios`: the CPU ratio of each class, with a target (at most
    1.5: flat, with room for eight processes sharing two cores) for ``RedisBackplane`` only."""
    return [
        {
            "what": f"sharding x{r['servers'][1]}/x{r['servers'][0]} CPU/server: "
            + "->".join(dict.fromkeys(_short(r[k]) for k in ("backplane_requested", "backplane"))),
            "ratio": r["cpu_ratio"],
            "target": 1.5 if r["backplane_requested"] == NEW else None,
            "met": r["cpu_ratio"] <= 1.5 if r["backplane_requested"] == NEW else None,
        }
        for r in rows
        if r.get("workload") == "sharding" and r["kind"] == "ratio"
    ]


def table(rows: list[Row]) -> str:
    runs = [r for r in rows if r.get("workload") == "sharding" and r["kind"] == "run"]
    if not runs:
        return ""
    r0 = runs[0]
    lines = [
        f"Sharding: each server hosts {r0['rooms'] // r0['servers']} rooms of "
        f"{r0['members_per_room']} members + 1 publisher at {r0['rate']:g} msg/s per room, "
        f"{r0['duration']:g} s (per-server CPU and envelopes received: mean / max)",
        f"{'backplane (requested -> used)':<44}{'N':>3}{'CPU %':>14}{'env/s':>14}"
        f"{'Redis %':>9}{'delivered':>10}{'lost':>6}{'p99 ms':>8}",
    ]
    for r in runs:
        asked, used = (_short(r[k]) for k in ("backplane_requested", "backplane"))
        label = asked if asked == used else f"{asked} -> {used}"
        lines.append(
            f"{label:<44}{r['servers']:>3}"
            f"{r['server_cpu_pct_mean']:>7.1f} /{r['server_cpu_pct_max']:>5.1f}"
            f"{r['envelopes_received_per_s_mean']:>7.0f} /{r['envelopes_received_per_s_max']:>5.0f}"
            f"{r['redis_cpu_pct']:>9.1f}{r['delivered']:>10}{r['lost']:>6}{r['p99_ms']:>8.1f}"
        )
    for r in rows:
        if r.get("workload") == "sharding" and r["kind"] == "ratio":
            lines.append(
                f"  per-server CPU {r['server']} ({_short(r['backplane_requested'])}):"
                f" {r['cpu_ratio']:.2f} x; envelopes received/s per server"
                f" {r['envelopes_per_s'][0]:.0f} -> {r['envelopes_per_s'][1]:.0f}"
            )
    return "\n".join(lines)


def measure(args: argparse.Namespace) -> list[Row]:
    """Every N for every class (the classes taking turns at each N), then the ratio rows."""
    rows: list[Row] = []
    with _redis.RedisServer(log=RESULTS / "redis.log") as redis:
        for n in args.servers:
            for class_name in args.classes:
                row = run_once(args, redis, class_name, n)
                rows.append(row)
                mark = "ok" if row["all_counted"] else "NOT ALL COUNTED"
                print(
                    f"  {row['server']:<26} (for {_short(class_name)}): per-server CPU "
                    f"{row['server_cpu_pct_mean']:.1f} % (max {row['server_cpu_pct_max']:.1f}), "
                    f"{row['envelopes_received_per_s_mean']:.0f} envelopes/s, "
                    f"lost {row['lost']} [{mark}]",
                    file=sys.stderr,
                    flush=True,
                )
    return rows + ratios(rows)


def _numbers(text: str) -> list[int]:
    numbers = [int(n) for n in text.split(",") if n.strip()]
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"server counts are integers >= 1, got {text!r}")
    return sorted(set(numbers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sharding", description=__doc__)
    parser.add_argument("mode", nargs="?", default="measure", choices=("measure", "serve", "load"))
    parser.add_argument("--quick", action="store_true", help="smoke run: N in 1,2, 2 s")
    parser.add_argument("--servers", type=_numbers, help="server counts (default 1,2,4,8)")
    parser.add_argument(
        "--classes", default=f"{NEW},{OLD}", help="comma-separated backplane classes"
    )
    parser.add_argument("--rooms", type=int, default=10, help="rooms per server")
    parser.add_argument("--members", type=int, default=3, help="members per room")
    parser.add_argument("--rate", type=float, default=5.0, help="messages/s per room")
    parser.add_argument("--duration", type=float, help="seconds of sending (default 8)")
    parser.add_argument("--size", type=int, default=64, help="message text length")
    parser.add_argument("--timeout", type=float, default=20.0, help="s to wait for deliveries")
    parser.add_argument("--output", help="also write the rows (JSON) here")
    # serve and load
    parser.add_argument("--backplane-class", default=NEW, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="chatcast", help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rooms < 1 or args.members < 1 or not args.rate > 0 or args.size < 40:
        parser.error("--rooms and --members must be >= 1, --rate > 0, --size >= 40")
    if args.servers is None:
        args.servers = [1, 2] if args.quick else [1, 2, 4, 8]
    if args.duration is None:
        args.duration = 2.0 if args.quick else 8.0
    logging.basicConfig(level=logging.WARNING)
    raise_nofile()
    if args.mode == "serve":
        if args.url is None:
            parser.error("serve needs --url")
        asyncio.run(serve(args.backplane_class, args.url, args.prefix))
        return 0
    if args.mode == "load":
        if args.ports is None:
            parser.error("load needs --ports")
        asyncio.run(_load_main(args))
        return 0
    args.classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    why = _redis.missing()
    if why is not None:
        print(f"skipped: {why}", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    rows = measure(args)
    print(table(rows))
    print("RESULT " + json.dumps(rows), flush=True)
    if args.output is not None:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["all_counted"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
