"""``chatcast server --workers N``: N server processes on one port, as one chat.

The parent binds nothing itself: each worker is ``chatcast server --reuse-port --worker`` on
the same port (``SO_REUSEPORT``: the kernel spreads new connections across them) with the
same backplane, which makes their rooms one. The parent forwards the lines typed on its
terminal to the first worker as announcements (the backplane carries them to every client),
shows what the first worker sees of the chat (joins, leaves, and messages unless ``--quiet``)
and every worker's log, and on Ctrl-C, SIGTERM or ``/quit`` stops every worker gracefully.
If a worker dies, the parent stops the others and exits 1: restarting is the job of the
service manager above it. If the parent dies, even by SIGKILL, its pipes to the workers
close and the workers stop: none is left serving on its own.

The backplane URL and the token reach the workers in their environment, never on a command
line (``ps`` shows command lines to every user).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys

from .console import Console
from .operator import announcements

__all__ = ["run_workers"]

# Options passed through to every worker unchanged: (attribute, flag).
_FORWARDED = (
    ("host", "--host"),
    ("welcome", "--welcome"),
    ("room", "--room"),
    ("max_clients", "--max-clients"),
    ("max_per_address", "--max-per-address"),
    ("rate", "--rate"),
    ("burst", "--burst"),
    ("idle_timeout", "--idle-timeout"),
    ("slow_consumer", "--slow-consumer"),
    ("notice_limit", "--notice-limit"),
    ("tls_cert", "--tls-cert"),
    ("tls_key", "--tls-key"),
    ("backplane_prefix", "--backplane-prefix"),
    ("backplane_stream_length", "--backplane-stream-length"),
)


def _pick_port(host: str) -> int:
    """A port that is free now, for ``--port 0``."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def run_workers(args: argparse.Namespace, where: str | None) -> int:
    """Start ``args.workers`` workers and supervise them; return the exit status.

    ``where`` is the backplane's URL without its password, for the banner.
    """
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if not args.backplane:
        raise ValueError("--workers needs --backplane: separate processes share rooms through it")
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("--workers needs SO_REUSEPORT, which this system does not have")
    port = args.port or _pick_port(args.host)
    argv = [sys.executable, "-m", "chatcast", "server", "--port", str(port), "--reuse-port"]
    argv += ["--worker"]
    for attribute, flag in _FORWARDED:
        value = getattr(args, attribute)
        if value is not None:
            argv += [flag, str(value)]
    if args.quiet:
        argv.append("--quiet")
    # Secrets stay in the environment, never on a command line.
    env = {**os.environ, "CHATCAST_BACKPLANE": args.backplane}
    if args.token:
        env["CHATCAST_TOKEN"] = args.token
    if args.op_token:
        env["CHATCAST_OP_TOKEN"] = args.op_token
    workers = [
        await asyncio.create_subprocess_exec(
            *argv,
            *(["--worker-events"] if n == 0 else []),
            # A pipe to every worker: announcements to the first, and its end (our exit,
            # however it comes) tells each worker to stop.
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,  # shown through the console: no garbled prompt
            env=env,
        )
        for n in range(args.workers)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    status = 0
    async with Console(prompt="announce> ") as console:
        console.write(
            f"chatcast server on {args.host} port {port}: {args.workers} workers, "
            f"backplane {where} (type a line to announce it; Ctrl-C to stop)"
        )
        typing = asyncio.create_task(_forward(console, workers[0], stop))
        outputs = [asyncio.create_task(_show(console, worker)) for worker in workers]
        exits = [asyncio.create_task(worker.wait()) for worker in workers]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*exits, stopper], return_when=asyncio.FIRST_COMPLETED)
        if stopper not in done:
            console.write("! a worker exited; stopping the others")
            status = 1
        typing.cancel()
        for worker in workers:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(15):
                codes = await asyncio.gather(*exits)
        except TimeoutError:
            for worker in workers:
                if worker.returncode is None:
                    worker.kill()
            codes = await asyncio.gather(*exits)
            status = 1
        stopper.cancel()
        await asyncio.gather(typing, stopper, *outputs, return_exceptions=True)
        if any(codes):
            status = 1
    return status


async def _show(console: Console, worker: asyncio.subprocess.Process) -> None:
    """Print a worker's output above the operator's prompt."""
    assert worker.stdout is not None
    while line := await worker.stdout.readline():
        console.write(line.decode(errors="replace").rstrip("\n"))


async def _forward(
    console: Console, worker: asyncio.subprocess.Process, stop: asyncio.Event
) -> None:
    """Lines typed on the parent's terminal become announcements (sent by the first worker);
    ``/quit`` stops them all, as it stops a single server; ``/help`` lists the commands."""
    assert worker.stdin is not None
    async for line, _ in announcements(console, stop):
        # As typed ("//text" too): the worker parses it again, as if typed there.
        worker.stdin.write(line.encode() + b"\n")
        await worker.stdin.drain()
