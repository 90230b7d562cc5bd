"""Run one relay in this process: ``python -m benchmarks._serve KIND [--uvloop]``.

Prints ``PORT <n>`` once listening on 127.0.0.1 (port 0: the OS picks), then serves until its
standard input is closed (the benchmark's way of stopping it) or it gets SIGTERM.
KIND is ``chatcast``, ``ceiling``, ``naive`` or ``threaded``.

A line ``STATS`` on standard input is answered with ``STATS <json>``: chatcast's
``statistics()`` (backplane figures included), ``{}`` for the other relays. The same line is
printed once more when the server stops. ``--backplane redis://...`` (chatcast only) joins the
server to others through a :class:`~chatcast.backplane.RedisBackplane` with ``--prefix``.
``--history N`` (chatcast only) keeps N messages per room (0: none; default: the server's
default), ``--store FILE`` keeps them in SQLite too (its counters are ``store_*`` in ``STATS``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from ._util import raise_nofile

KINDS = ("chatcast", "ceiling", "naive", "threaded")


def _wait_stdin_then(
    callback: Callable[[], object], stats: Callable[[], object] | None = None
) -> None:
    """Call ``callback`` when standard input ends; ``stats`` at each ``STATS`` line."""

    def reader() -> None:
        try:
            for line in sys.stdin:
                if line.strip() == "STATS":
                    if stats is not None:
                        stats()
                    else:
                        print("STATS {}", flush=True)
        finally:
            callback()

    threading.Thread(target=reader, daemon=True).start()


def _serve_threaded() -> None:
    from .baselines.threaded import ThreadedRelay

    relay = ThreadedRelay()
    done = threading.Event()
    _wait_stdin_then(done.set)
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    print(f"PORT {relay.port}", flush=True)
    done.wait()
    relay.close()


async def _serve_async(
    kind: str,
    max_clients: int | None,
    backplane_url: str | None,
    prefix: str,
    options: dict[str, Any] | None = None,
    backplane_class: str = "RedisBackplane",
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    statistics: Callable[[], dict[str, Any]] = dict

    def report() -> None:
        print("STATS " + json.dumps(statistics()), flush=True)

    _wait_stdin_then(
        lambda: loop.call_soon_threadsafe(stop.set), lambda: loop.call_soon_threadsafe(report)
    )
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    close: Callable[[], object]
    if kind == "chatcast":
        from chatcast import BroadcastServer

        backplane = None
        if backplane_url is not None:
            from chatcast import backplane as backplanes

            backplane = getattr(backplanes, backplane_class)(backplane_url, prefix=prefix)
        server = BroadcastServer(
            "127.0.0.1", 0, max_clients=max_clients, backplane=backplane, **(options or {})
        )
        await server.start()
        port = server.port
        close = server.close

        def statistics() -> dict[str, Any]:
            figures = dataclasses.asdict(server.statistics())
            store = getattr(server.store, "statistics", None)  # a SQLiteStore's counters
            if store is not None:
                figures.update({f"store_{k}": v for k, v in dataclasses.asdict(store).items()})
            return figures
    elif kind == "ceiling":
        from .baselines.ceiling import CeilingHub

        hub = CeilingHub()
        await hub.start()
        port, close = hub.port, hub.close
    else:
        from .baselines.naive import NaiveRelay

        relay = NaiveRelay()
        await relay.start()
        port, close = relay.port, relay.close
    print(f"PORT {port}", flush=True)
    await stop.wait()
    report()  # before closing: a closed server has let go of its backplane
    close()
    if kind == "chatcast":
        await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._serve")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--max-clients", type=int, default=None, help="chatcast's max_clients")
    parser.add_argument("--backplane", metavar="URL", help="chatcast: a Redis backplane URL")
    parser.add_argument("--prefix", default="chatcast", help="the backplane's key prefix")
    parser.add_argument(
        "--backplane-class",
        default="RedisBackplane",
        choices=["RedisBackplane", "RedisPubSubBackplane"],
        help="chatcast: the backplane (the log, or pub/sub as before #12)",
    )
    parser.add_argument("--history", type=int, default=None, help="chatcast: messages per room")
    parser.add_argument("--store", default=None, help="chatcast: keep history in this SQLite file")
    args = parser.parse_args(argv)
    if args.backplane is not None and args.kind != "chatcast":
        parser.error("--backplane is for chatcast only")
    logging.basicConfig(level=logging.WARNING)
    raise_nofile()
    if args.kind == "threaded":
        _serve_threaded()
        return 0
    factory = None
    if args.uvloop:
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        options: dict[str, Any] = {}
        if args.history is not None:
            from chatcast import HistoryLimits

            # Bytes to match: N messages of the load generator's size fit (a replay of N).
            limits = HistoryLimits(messages=args.history, bytes=max(1 << 20, args.history * 512))
            options["history"] = limits if args.history else None
        if args.store is not None:
            options["store"] = args.store
        runner.run(
            _serve_async(
                args.kind,
                args.max_clients,
                args.backplane,
                args.prefix,
                options,
                args.backplane_class,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
