"""Reliable multicast under real, independent loss: senders and receivers in network namespaces.

Needs Linux, root, iproute2 and nftables. Safety: everything runs in namespaces this script
makes (named ``ccrm-<pid>-...``) and deletes: a bridge namespace and one namespace per host,
joined by veth pairs, addresses from 192.0.2.0/24 (TEST-NET-1) inside the namespaces only.
In each receiver's namespace nftables drops a random share of UDP input
(``meta l4proto udp numgen random mod 10 < N drop``), so each receiver loses different
datagrams, data, repairs and other receivers' NACKs alike.

* ``python -m benchmarks.mcast_reliable run --count 10000 --rate 1000 --loss 10 --receivers 3
  --senders 1`` builds the network, runs it and prints one ``RESULT <json>`` line: per
  receiver whether it got every message of every sender once and in order, and the NACK and
  repair counters, with NACKs per lost datagram.
* ``send`` and ``receive`` are the roles it runs inside the namespaces.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Any

GROUP = "239.255.16.16"
PORT = 5004
REPAIR_PORT = 5005
#: The checkout, so children find the benchmarks package.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _nft(namespace: str, *args: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", *args], check=True, capture_output=True
    )


class Network:
    """A bridge and hosts in namespaces; :meth:`close` deletes them all."""

    def __init__(self) -> None:
        self.tag = f"ccrm-{os.getpid()}"
        self.namespaces: list[str] = []
        self.bridge = f"{self.tag}-br"

    def open(self) -> None:
        _ip("netns", "add", self.bridge)
        self.namespaces.append(self.bridge)
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", self.bridge, "link", "set", "br0", "up")

    def host(self, index: int, loss_percent: int = 0) -> tuple[str, str]:
        """A host namespace with eth0 = 192.0.2.(index+1)/24 on the bridge; return
        (namespace, address)."""
        name = f"{self.tag}-h{index}"
        _ip("netns", "add", name)
        self.namespaces.append(name)
        veth = f"ccv{os.getpid() % 100000}x{index}"
        _ip(
            "link",
            "add",
            veth,
            "netns",
            self.bridge,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            name,
        )
        _ip("-n", self.bridge, "link", "set", veth, "master", "br0", "up")
        address = f"192.0.2.{index + 1}"
        _ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "route", "add", "224.0.0.0/4", "dev", "eth0")
        if loss_percent:
            _nft(name, "add", "table", "inet", "loss")
            _nft(
                name,
                "add",
                "chain",
                "inet",
                "loss",
                "input",
                "{ type filter hook input priority 0; }",
            )
            # 10 % is "numgen random mod 10 0" (== 0); N % is "< N/10" of 10.
            rule = "0" if loss_percent == 10 else f"< {loss_percent // 10}"
            _nft(
                name,
                "add",
                "rule",
                "inet",
                "loss",
                "input",
                "meta",
                "l4proto",
                "udp",
                "numgen",
                "random",
                "mod",
                "10",
                *rule.split(),
                "drop",
            )
        return name, address

    def close(self) -> None:
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)
        self.namespaces.clear()


async def _child(namespace: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "ip",
        "netns",
        "exec",
        namespace,
        sys.executable,
        "-m",
        "benchmarks.mcast_reliable",
        *args,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )


async def _line(process: asyncio.subprocess.Process, prefix: str, seconds: float) -> str:
    assert process.stdout is not None
    async with asyncio.timeout(seconds):
        while True:
            raw = await process.stdout.readline()
            if not raw:
                raise RuntimeError("the child ended early")
            line = raw.decode().strip()
            if line.startswith(prefix):
                return line[len(prefix) :].strip()


async def run(
    count: int, rate: float, loss: int, receivers: int = 3, senders: int = 1, limit: float = 120.0
) -> dict[str, Any]:
    """Build the network, run it, delete it; return the figures."""
    net = Network()
    children: list[asyncio.subprocess.Process] = []
    try:
        net.open()
        hosts = [net.host(i, loss) for i in range(receivers)]
        sources = [net.host(receivers + i) for i in range(senders)]
        for namespace, address in hosts:
            child = await _child(
                namespace,
                "receive",
                "--interface",
                address,
                "--count",
                str(count),
                "--senders",
                str(senders),
                "--timeout",
                str(limit),
            )
            children.append(child)
            await _line(child, "READY", 30)
        started = time.monotonic()
        for k, (namespace, address) in enumerate(sources):
            children.append(
                await _child(
                    namespace,
                    "send",
                    "--interface",
                    address,
                    "--count",
                    str(count),
                    "--rate",
                    str(rate),
                    "--name",
                    f"s{k}",
                )
            )
        results = [json.loads(await _line(child, "RESULT", limit + 30)) for child in children]
        elapsed = time.monotonic() - started
    finally:
        for child in children:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()
        net.close()
    got = results[:receivers]
    sent = results[receivers:]
    lost = sum(r["lost"] for r in got)
    nacks = sum(r["stats"]["nacks_sent"] for r in got)
    return {
        "count": count,
        "rate": rate,
        "loss_percent": loss,
        "receivers": receivers,
        "senders": senders,
        "seconds": round(elapsed, 2),
        "all_ok": all(r["ok"] for r in got),
        "receivers_detail": got,
        "senders_detail": sent,
        "lost_datagrams": lost,
        "nacks_sent": nacks,
        "nacks_per_lost": round(nacks / lost, 3) if lost else 0.0,
        "repairs_sent": sum(s["stats"]["repairs_sent"] for s in sent),
        "repairs_per_lost": round(sum(s["stats"]["repairs_sent"] for s in sent) / lost, 3)
        if lost
        else 0.0,
    }


async def _receive(args: argparse.Namespace) -> dict[str, Any]:
    from chatcast.multicast import MulticastChannel

    channel = MulticastChannel(
        GROUP, PORT, interface=args.interface, ttl=1, reliable=True, repair_port=REPAIR_PORT
    )
    expected = {f"s{k}": 0 for k in range(args.senders)}
    problems: list[str] = []
    total = args.count * args.senders
    got = 0
    async with channel:
        print("READY", flush=True)
        try:
            async with asyncio.timeout(args.timeout):
                while got < total:
                    message = await channel.receive()
                    if message.kind != "message":
                        problems.append(f"{message.kind}: {message.text}")
                        got += message.missed or 0
                        continue
                    sender, _, number = message.text.partition("-")
                    if sender not in expected or int(number) != expected[sender]:
                        problems.append(
                            f"out of order: {message.text} (expected {expected.get(sender)})"
                        )
                    expected[sender] = int(number) + 1
                    got += 1
        except TimeoutError:
            problems.append(f"timed out with {got} of {total}")
        stats = channel.statistics()
        core = channel._core
        given_up = dict(core.receiver.given_up) if core is not None else {}
    return {
        "given_up": given_up,
        "ok": not problems and got == total,
        "got": got,
        "problems": problems[:10],
        # Data datagrams that never arrived on the data port (each was then repaired).
        "lost": total - stats.received,
        "stats": _stats(stats),
    }


def _stats(stats: Any) -> dict[str, int]:
    names = (
        "received",
        "lost",
        "nacks_sent",
        "nacked",
        "nacks_suppressed",
        "nacks_received",
        "repairs_sent",
        "repairs_throttled",
        "repairs_received",
        "duplicates",
        "gaps",
        "missed",
        "control_received",
    )
    return {name: getattr(stats, name) for name in names}


async def _send(args: argparse.Namespace) -> dict[str, Any]:
    from chatcast.multicast import MulticastChannel, ReliableOptions

    channel = MulticastChannel(
        GROUP,
        PORT,
        interface=args.interface,
        ttl=1,
        reliable=True,
        repair_port=REPAIR_PORT,
        name=args.name,
        reliable_options=ReliableOptions(linger=3.0),
    )
    async with channel:
        loop = asyncio.get_running_loop()
        start = loop.time()
        interval = 1.0 / args.rate
        for i in range(args.count):
            due = start + i * interval
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            await channel.send(f"{args.name}-{i}")
        stats_at_end = channel.statistics()
    final = channel.statistics()
    return {"sent": stats_at_end.sent, "stats": _stats(final)}


async def _cpu(args: argparse.Namespace) -> dict[str, Any]:
    """One sender and one receiver channel on 127.0.0.1 (TTL 0), in this process: CPU per
    message sent and received, today's mode or reliable, no loss."""
    import random

    from chatcast.multicast import MulticastChannel

    group = f"239.255.{random.randrange(256)}.{random.randrange(1, 255)}"
    port = random.randrange(20000, 60000)
    options: dict[str, Any] = {"interface": "127.0.0.1", "ttl": 0}
    if args.mode == "reliable":
        options.update(reliable=True, repair_port=port + 1)
    async with (
        MulticastChannel(group, port, **options) as rx,
        MulticastChannel(group, port, name="bench", **options) as tx,
    ):
        text = "x" * 64
        started = time.process_time()
        for _ in range(args.count // 100):
            for _ in range(100):
                await tx.send(text)
            for _ in range(100):
                await rx.receive()
        cpu = time.process_time() - started
    return {"mode": args.mode, "count": args.count, "cpu_us_per_message": cpu / args.count * 1e6}


def callgrind(mode: str, count: int) -> int:
    """Instructions for ``count`` messages in ``mode``, by callgrind, startup subtracted."""

    def instructions(n: int) -> int:
        out = f"/tmp/ccrm-callgrind-{os.getpid()}-{mode}-{n}.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "benchmarks.mcast_reliable",
                "cpu",
                "--mode",
                mode,
                "--count",
                str(n),
            ],
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        with open(out) as file:
            for line in file:
                if line.startswith(("summary:", "totals:")):
                    total = int(line.split()[1])
        os.unlink(out)
        return total

    return instructions(count) - instructions(100)


def _cpu_child(mode: str, count: int) -> float:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.mcast_reliable",
            "cpu",
            "--mode",
            mode,
            "--count",
            str(count),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    return float(json.loads(line[7:])["cpu_us_per_message"])


def workload(quick: bool) -> list[dict[str, Any]]:
    """The ``reliable`` workload of ``python -m benchmarks``: CPU per message, reliable over
    today's mode at 0 % loss (medians of alternating runs in fresh processes), and, with root
    and nftables and not ``quick``, the namespace loss runs (10,000 messages at 1,000/s)."""
    import shutil
    import statistics

    rows: list[dict[str, Any]] = []
    count, runs = (2000, 1) if quick else (20000, 5)
    samples: dict[str, list[float]] = {"plain": [], "reliable": []}
    for _ in range(runs):
        for mode in samples:
            samples[mode].append(_cpu_child(mode, count))
    plain, reliable = (statistics.median(samples[m]) for m in ("plain", "reliable"))
    rows.append(
        {
            "workload": "reliable",
            "server": "MulticastChannel",
            "what": "cpu",
            "count": count,
            "plain_us_per_message": plain,
            "reliable_us_per_message": reliable,
            "ratio": reliable / plain,
            "target": 1.2,
            "all_counted": True,
        }
    )
    can_netns = (
        sys.platform.startswith("linux")
        and os.geteuid() == 0
        and shutil.which("ip") is not None
        and shutil.which("nft") is not None
    )
    if can_netns and not quick:
        n = 10_000
        for loss, senders in ((10, 1), (30, 1), (10, 2)):
            result = asyncio.run(run(n, 1000.0, loss, 3, senders, limit=120.0))
            rows.append(
                {
                    "workload": "reliable",
                    "server": "MulticastChannel",
                    "what": "netns loss",
                    "count": n,
                    "loss_percent": loss,
                    "senders": senders,
                    "all_counted": result["all_ok"],
                    "lost_datagrams": result["lost_datagrams"],
                    "nacks_sent": result["nacks_sent"],
                    "nacks_per_lost": result["nacks_per_lost"],
                    "repairs_per_lost": result["repairs_per_lost"],
                    # Why a receiver gave messages up, if it did (empty when all arrived).
                    "given_up": [r["given_up"] for r in result["receivers_detail"]],
                    "problems": [r["problems"][:3] for r in result["receivers_detail"]],
                    "seconds": result["seconds"],
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mcast_reliable")
    parser.add_argument("role", choices=("run", "send", "receive", "cpu", "callgrind"))
    parser.add_argument("--mode", choices=("plain", "reliable"), default="plain")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--loss", type=int, default=10, help="percent, a multiple of 10")
    parser.add_argument("--receivers", type=int, default=3)
    parser.add_argument("--senders", type=int, default=1)
    parser.add_argument("--interface", default="")
    parser.add_argument("--name", default="s0")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.role == "run":
        result = asyncio.run(
            run(args.count, args.rate, args.loss, args.receivers, args.senders, args.timeout)
        )
    elif args.role == "cpu":
        result = asyncio.run(_cpu(args))
    elif args.role == "callgrind":
        counts = {mode: callgrind(mode, args.count) for mode in ("plain", "reliable")}
        result = {
            "count": args.count,
            "instructions_per_message": {m: n / (args.count - 100) for m, n in counts.items()},
            "ratio": counts["reliable"] / counts["plain"],
        }
    elif args.role == "receive":
        result = asyncio.run(_receive(args))
    else:
        result = asyncio.run(_send(args))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
