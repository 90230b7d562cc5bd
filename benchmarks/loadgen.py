"""The load generator: raw non-blocking sockets and one epoll loop, in its own process.

``python -m benchmarks.loadgen burst|paced --port P ...`` runs one TCP workload and prints
``RESULT <json>``; ``python -m benchmarks.loadgen scale ...`` is one worker of the idle-client
workload, driven over stdin/stdout by :mod:`benchmarks.run`.

Counting: every chat message the load generator sends carries the marker ``#m``, which no
notice, welcome or name contains, and ends a line; a receiver counts the markers in the complete
lines it has read (the unfinished last line waits for the next read), so a message is counted
once, whatever the read boundaries and the wire form (text ``guest3: #m...`` or JSON
``"text":"#m..."``). Nothing lost is checked, not assumed: every subscriber must count exactly
``publishers x messages``, and every publisher ``(publishers - 1) x messages``.

Several servers: ``--port 4001,4002`` spreads the clients over servers joined by a backplane
(subscriber ``i`` and publisher ``j`` on server ``i`` and ``j`` modulo the number of ports);
the counting is the same, since every message must reach every server. The paced workload then
tells same-server deliveries from cross-server ones (each stamp names its publisher's server).
``--sync`` lets :mod:`benchmarks.run` read the servers' counters around the measured phase:
``MEASURE`` is printed before it and ``MEASURED`` after it, each waiting for a line ``GO``.
"""

from __future__ import annotations

import argparse
import errno
import json
import re
import select
import selectors
import socket
import sys
import time
from typing import Any

from ._util import cpu_seconds, raise_nofile

MARK = b"#m"
_STAMP = re.compile(rb"#m(\d{19})([a-z])")
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_RECV = 262144
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT


def message(publisher: int, seq: int, size: int) -> bytes:
    """One ``size``-byte chat line (LF included) with the marker and a unique id."""
    head = b"#m%02d%08d " % (publisher, seq)
    return head + b"x" * (size - 1 - len(head)) + b"\n"


def stamped(size: int, server: int = 0) -> bytes:
    """A ``size``-byte chat line carrying the send time (``time.monotonic_ns``) and the index
    of the publisher's server (a letter: ``a`` for the first)."""
    head = b"#m%019d%c " % (time.monotonic_ns(), 0x61 + server)
    return head + b"x" * (size - 1 - len(head)) + b"\n"


class Peer:
    """One client socket and what was counted on it."""

    __slots__ = (
        "carry",
        "count",
        "cross",
        "hash_last",
        "latencies",
        "outbox",
        "pending",
        "server",
        "sock",
    )

    #: Bytes read by all peers (a class-wide counter: one load generator per process).
    received = 0
    #: The one receive buffer: counting reads into it and never copies (CPU here is what
    #: limits the measurement: the relay and this process share a 2-core machine).
    buffer = bytearray(_RECV)

    def __init__(self, sock: socket.socket, carry: bytes, server: int = 0) -> None:
        self.sock = sock
        self.carry = carry
        self.server = server  # the index of the server this client is connected to
        self.count = 0
        #: Latencies (ns) of messages from publishers on this server, and on other servers.
        self.latencies: list[int] | None = None
        self.cross: list[int] = []
        self.outbox: list[bytes] = []
        self.pending = b""
        self.hash_last = False

    def read(self) -> bool:
        """Read what is there and count the markers in it. False at EOF."""
        if self.latencies is not None:
            return self.read_stamps()
        buffer = Peer.buffer
        try:
            n = self.sock.recv_into(buffer)
        except BlockingIOError:
            return True
        if not n:
            return False
        Peer.received += n
        count = buffer.count(MARK, 0, n)
        if self.hash_last and buffer[0] == 0x6D:  # "#" then "m": a marker cut in two
            count += 1
        self.hash_last = buffer[n - 1] == 0x23
        self.count += count
        return True

    def read_stamps(self) -> bool:
        """Read; parse the send time in each complete line for its latency. False at EOF."""
        try:
            data = self.sock.recv(_RECV)
        except BlockingIOError:
            return True
        if not data:
            return False
        Peer.received += len(data)
        if self.carry:
            data = self.carry + data
        end = data.rfind(b"\n") + 1
        self.carry = data[end:]
        if end and self.latencies is not None:
            now = time.monotonic_ns()
            stamps = _STAMP.findall(data, 0, end)
            self.count += len(stamps)
            own = 0x61 + self.server
            for stamp, origin in stamps:
                (self.latencies if origin[0] == own else self.cross).append(now - int(stamp))
        return True


def connect(ports: list[int], count: int, *, json_mode: bool = False) -> list[Peer]:
    """Open ``count`` text-mode (or JSON-mode) clients, client ``i`` on ``ports[i % n]``;
    each has read its welcome line."""
    peers = []
    for i in range(count):
        server = i % len(ports)
        sock = socket.create_connection(("127.0.0.1", ports[server]))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed before the welcome line")
            data += chunk
        carry = data[data.index(b"\n") + 1 :]
        if json_mode:
            sock.sendall(b'{"type":"hello","room":"lobby"}\n')
        sock.setblocking(False)
        peers.append(Peer(sock, carry, server))
    return peers


class Run:
    """Subscribers and publishers on one selector."""

    def __init__(
        self, ports: list[int], subscribers: int, publishers: int, json_subs: bool
    ) -> None:
        self.subs = connect(ports, subscribers, json_mode=json_subs)
        self.pubs = connect(ports, publishers)
        self.epoll = select.epoll()
        self.peers = {peer.sock.fileno(): peer for peer in self.subs + self.pubs}
        for fd in self.peers:
            self.epoll.register(fd, _IN)
        self.closed = 0

    def pump(self, timeout: float) -> None:
        """One round: read what is readable, send what is due and writable."""
        peers = self.peers
        for fd, mask in self.epoll.poll(timeout, 1024):
            peer = peers[fd]
            if mask & _IN and not peer.read():
                self.epoll.unregister(fd)
                self.closed += 1
                continue
            if mask & _OUT:
                self.send(peer)

    def send(self, peer: Peer, limit: int = 128) -> None:
        """Send queued messages one per ``send()`` call, until the socket is full."""
        sock = peer.sock
        outbox = peer.outbox
        try:
            if peer.pending:
                sent = sock.send(peer.pending)
                peer.pending = peer.pending[sent:]
                if peer.pending:
                    return
            for _ in range(limit):
                if not outbox:
                    break
                data = outbox[-1]
                sent = sock.send(data)
                outbox.pop()
                if sent < len(data):
                    peer.pending = data[sent:]
                    return
        except BlockingIOError:
            return
        if not outbox and not peer.pending:
            self.epoll.modify(sock.fileno(), _IN)

    def want_write(self, peer: Peer) -> None:
        self.epoll.modify(peer.sock.fileno(), _IN | _OUT)

    def settle(self, seconds: float, quiet: float = 0.3, limit: float = 120.0) -> None:
        """Read for at least ``seconds``, then until nothing came for ``quiet`` seconds.

        chatcast announces each silent text-mode client to its room after its join grace
        (0.5 s): N subscribers are N x N notices, seconds of server work at 1000. The
        measurement starts after that storm, not in it.
        """
        start = time.monotonic()
        last_data = start
        while True:
            before = Peer.received
            self.pump(0.05)
            now = time.monotonic()
            if Peer.received != before:
                last_data = now
            if now - start >= seconds and now - last_data >= quiet:
                return
            if now - start > limit:
                raise RuntimeError("the server never went quiet")

    def wait_counts(self, sub_goal: int, pub_goals: list[int], deadline: float) -> float | None:
        """Pump until every subscriber has ``sub_goal`` and each publisher its goal.

        Returns the time the last subscriber got there (``None``: it did not by ``deadline``).
        """
        subs_done: float | None = None
        while True:
            if subs_done is None and all(p.count >= sub_goal for p in self.subs):
                subs_done = time.perf_counter()
            if subs_done is not None and all(
                p.count >= goal for p, goal in zip(self.pubs, pub_goals, strict=True)
            ):
                return subs_done
            now = time.monotonic()
            if now >= deadline or self.closed:
                return subs_done
            self.pump(min(0.2, deadline - now))

    def warm_up(self, size: int, deadline: float) -> None:
        """Each publisher sends one message; wait until everyone has counted them."""
        n = len(self.pubs)
        for i, pub in enumerate(self.pubs):
            pub.outbox.append(message(i, 0, size))
            self.want_write(pub)
        if self.wait_counts(n, [n - 1] * n, deadline) is None:
            raise RuntimeError(f"warm-up messages not delivered: {self.counts()}")
        for peer in self.subs + self.pubs:
            peer.count = 0

    def counts(self) -> dict[str, Any]:
        return {
            "subscriber_min": min(p.count for p in self.subs),
            "subscriber_total": sum(p.count for p in self.subs),
            "publisher_total": sum(p.count for p in self.pubs),
            "closed_by_server": self.closed,
        }

    def close(self) -> None:
        for peer in self.subs + self.pubs:
            peer.sock.close()
        self.epoll.close()


def _sync(args: argparse.Namespace, point: str) -> None:
    """With ``--sync``: say where we are and wait for ``GO`` (the orchestrator reads the
    servers' counters meanwhile; nothing is in flight)."""
    if args.sync:
        print(point, flush=True)
        if sys.stdin.readline().strip() != "GO":
            raise RuntimeError(f"no GO after {point}")


def _percentile(samples: list[int], q: float) -> float:
    """The ``q`` quantile of sorted nanosecond ``samples``, in milliseconds (NaN if none)."""
    if not samples:
        return float("nan")
    return samples[min(len(samples) - 1, int(q * len(samples)))] / 1e6


def burst(args: argparse.Namespace) -> dict[str, Any]:
    """Workload 1: every publisher sends ``messages`` as fast as the server takes them."""
    run = Run(args.port, args.subscribers, args.publishers, args.json_subscribers)
    try:
        run.settle(args.settle)
        run.warm_up(args.size, time.monotonic() + args.timeout)
        for i, pub in enumerate(run.pubs):
            # outbox is popped from the end: store in reverse so messages go out in order.
            pub.outbox = [message(i, seq, args.size) for seq in range(args.messages, 0, -1)]
        _sync(args, "MEASURE")
        server_cpu = cpu_seconds(args.server_pid) if args.server_pid else 0.0
        own_cpu = time.process_time()
        started = time.perf_counter()
        for pub in run.pubs:
            run.want_write(pub)
        per_sub = args.publishers * args.messages
        per_pub = (args.publishers - 1) * args.messages
        done = run.wait_counts(
            per_sub, [per_pub] * args.publishers, time.monotonic() + args.timeout
        )
        elapsed = (done if done is not None else time.perf_counter()) - started
        own_cpu = time.process_time() - own_cpu
        if args.server_pid:
            server_cpu = cpu_seconds(args.server_pid) - server_cpu
        _sync(args, "MEASURED")
        counts = run.counts()
        expected = args.subscribers * per_sub
        delivered = counts["subscriber_total"]
        ok = (
            done is not None
            and delivered == expected
            and counts["publisher_total"] == args.publishers * per_pub
        )
        return {
            "workload": "burst",
            "servers": len(args.port),
            "subscribers": args.subscribers,
            "publishers": args.publishers,
            "messages": args.publishers * args.messages,
            "expected": expected,
            "delivered": delivered,
            "lost": expected - delivered,
            "all_counted": ok,
            "seconds": elapsed,
            "deliveries_per_s": delivered / elapsed if elapsed > 0 else 0.0,
            # CPU seconds spent in the burst (clock ticks, 10 ms): the server's and ours.
            "server_cpu_s": server_cpu,
            "loadgen_cpu_s": own_cpu,
            "server_cpu_us_per_1k": 1e9 * server_cpu / delivered if delivered else 0.0,
            **counts,
        }
    finally:
        run.close()


def paced(args: argparse.Namespace) -> dict[str, Any]:
    """Workload 2: ``rate`` messages/s in total, each stamped; latency at every subscriber."""
    run = Run(args.port, args.subscribers, args.publishers, args.json_subscribers)
    try:
        run.settle(args.settle)
        run.warm_up(args.size, time.monotonic() + args.timeout)
        _sync(args, "MEASURE")
        for peer in run.subs:
            peer.latencies = []
            peer.carry = b""  # the server was quiet: no line is cut here
        total = int(args.rate * args.duration)
        interval_ns = int(1e9 / args.rate)
        own_cpu = time.process_time()
        started = time.monotonic_ns()
        sent = 0
        npubs = len(run.pubs)
        while sent < total:
            now = time.monotonic_ns()
            due = min(total, (now - started) // interval_ns + 1)
            while sent < due:
                pub = run.pubs[sent % npubs]
                pub.outbox.insert(0, stamped(args.size, pub.server))
                if len(pub.outbox) == 1 and not pub.pending:
                    run.send(pub)
                    if pub.outbox or pub.pending:
                        run.want_write(pub)
                sent += 1
            next_due = started + sent * interval_ns
            run.pump(max(0.0, (next_due - time.monotonic_ns()) / 1e9))
        # Publisher i sent the messages whose number is i modulo npubs; it gets the others.
        per_pub = [total - len(range(i, total, npubs)) for i in range(npubs)]
        run.wait_counts(total, per_pub, time.monotonic() + args.timeout)
        own_cpu = time.process_time() - own_cpu
        _sync(args, "MEASURED")
        pubs_ok = all(p.count == want for p, want in zip(run.pubs, per_pub, strict=True))
        counts = run.counts()
        expected = args.subscribers * total
        delivered = counts["subscriber_total"]
        same = sorted(x for p in run.subs for x in (p.latencies or ()))
        cross = sorted(x for p in run.subs for x in p.cross)
        samples = sorted(same + cross)
        split: dict[str, Any] = {}
        if len(args.port) > 1:
            # Same-server deliveries (publisher and subscriber on one server) and cross-server
            # ones (through the backplane), told apart by the server letter in each stamp.
            for label, part in (("same", same), ("cross", cross)):
                split[f"{label}_deliveries"] = len(part)
                split[f"{label}_p50_ms"] = _percentile(part, 0.50)
                split[f"{label}_p99_ms"] = _percentile(part, 0.99)
                split[f"{label}_p999_ms"] = _percentile(part, 0.999)
                split[f"{label}_max_ms"] = part[-1] / 1e6 if part else float("nan")

        def pct(q: float) -> float:
            return _percentile(samples, q)

        return {
            "workload": "paced",
            "servers": len(args.port),
            "subscribers": args.subscribers,
            "publishers": args.publishers,
            "rate": args.rate,
            "messages": total,
            "expected": expected,
            "delivered": delivered,
            "lost": expected - delivered,
            "all_counted": delivered == expected and len(samples) == expected and pubs_ok,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "p999_ms": pct(0.999),
            "max_ms": samples[-1] / 1e6 if samples else float("nan"),
            "loadgen_cpu_s": own_cpu,
            **split,
            **counts,
        }
    finally:
        run.close()


# -- scale: one worker of the idle-client workload ----------------------------------------


class _Idle:
    __slots__ = ("buf", "index", "sock", "state")

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.index = index
        self.state = 0  # 0 connecting, 1 awaiting welcome, 2 awaiting room, 3 in, -1 dead
        self.buf = b""


def scale(args: argparse.Namespace) -> int:
    """Connect ``count`` idle clients when told ``GO``; keep them until told ``CLOSE``.

    Modes: ``text`` (welcome line, then ``/join rK``; in once ``you are now in`` arrives),
    ``json`` (welcome line, then a hello naming room ``rK``; in at the ``welcome`` frame),
    ``bare`` (in at the welcome line; for relays without rooms). Prints
    ``DONE <json>`` (monotonic times of the first connect, the last welcome, the last client
    in its room) and, at ``CLOSE``, ``CLOSED <json>`` (how many the server had dropped).
    """
    limit = raise_nofile(args.count + 1000)
    if limit < args.count + 100:
        print(f"ERROR RLIMIT_NOFILE is {limit}", flush=True)
        return 1
    sel = selectors.DefaultSelector()
    stdin_fd = sys.stdin.fileno()
    sel.register(stdin_fd, _READ, None)
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return 1
    clients: list[_Idle] = []
    started = time.monotonic()
    next_index = 0
    opening = 0
    welcomed = entered = failed = dropped = 0
    last_welcome = last_in = started
    done_sent = False
    room_size = args.room_size

    def open_more() -> None:
        nonlocal next_index, opening
        while opening < args.inflight and next_index < args.count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            client = _Idle(sock, args.first + next_index)
            next_index += 1
            err = sock.connect_ex(("127.0.0.1", args.port))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, f"connect: {errno.errorcode.get(err, err)}")
            sel.register(sock, _WRITE, client)
            clients.append(client)
            opening += 1

    open_more()
    while True:
        if not done_sent and entered + failed >= args.count:
            done_sent = True
            report = {
                "started": started,
                "last_welcome": last_welcome,
                "last_in": last_in,
                "welcomed": welcomed,
                "entered": entered,
                "failed": failed,
            }
            print("DONE " + json.dumps(report), flush=True)
        for key, _mask in sel.select(1.0 if done_sent else 0.5):
            client: _Idle | None = key.data
            if client is None:
                line = sys.stdin.readline().strip()
                if line in ("CLOSE", ""):
                    alive = sum(1 for c in clients if c.state == 3)
                    for c in clients:
                        c.sock.close()
                    print("CLOSED " + json.dumps({"alive": alive, "dropped": dropped}), flush=True)
                    return 0
                continue
            sock = client.sock
            if client.state == 0:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    failed += 1
                    opening -= 1
                    client.state = -1
                    sel.unregister(sock)
                    sock.close()
                    open_more()
                    continue
                client.state = 1
                sel.modify(sock, _READ, client)
                continue
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                if client.state == 3:
                    dropped += 1
                else:
                    failed += 1
                    opening -= 1
                    open_more()
                client.state = -1
                sel.unregister(sock)
                continue
            if client.state == 3:
                continue  # idle: notices from the room are read and ignored
            client.buf += data
            if client.state == 1 and b"\n" in client.buf:
                welcomed += 1
                last_welcome = time.monotonic()
                client.buf = client.buf[client.buf.index(b"\n") + 1 :]
                room = f"r{client.index // room_size}".encode()
                if args.mode == "bare":
                    client.state = 2
                elif args.mode == "text":
                    sock.send(b"/join " + room + b"\n")
                    client.state = 2
                elif args.mode == "json2":  # protocol version 2: a resumable session
                    sock.send(b'{"type":"hello","version":2,"room":"' + room + b'"}\n')
                    client.state = 2
                else:
                    sock.send(b'{"type":"hello","room":"' + room + b'"}\n')
                    client.state = 2
            if client.state == 2:
                buf = client.buf
                if (
                    args.mode == "bare"
                    or (args.mode == "text" and b"you are now in" in buf)
                    or (args.mode in ("json", "json2") and b'"type":"welcome"' in buf)
                ):
                    client.state = 3
                    client.buf = b""
                    entered += 1
                    last_in = time.monotonic()
                    opening -= 1
                    open_more()
                elif len(buf) > 65536:
                    client.buf = buf[-256:]


def _ports(text: str) -> list[int]:
    """``4001`` or ``4001,4002``: the servers' ports."""
    return [int(port) for port in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen")
    sub = parser.add_subparsers(dest="workload", required=True)
    for name in ("burst", "paced"):
        p = sub.add_parser(name)
        p.add_argument(
            "--port", type=_ports, required=True, help="a port, or ports joined by a backplane"
        )
        p.add_argument("--sync", action="store_true", help="MEASURE/MEASURED, wait for GO")
        p.add_argument("--subscribers", type=int, default=100)
        p.add_argument("--publishers", type=int, default=10)
        p.add_argument("--size", type=int, default=64, help="bytes per message, LF included")
        p.add_argument("--settle", type=float, default=1.0, help="quiet seconds before start")
        p.add_argument("--timeout", type=float, default=120.0)
        p.add_argument("--json-subscribers", action="store_true")
        p.add_argument("--server-pid", type=int, default=0, help="to read its CPU time")
        if name == "burst":
            p.add_argument("--messages", type=int, default=1000, help="per publisher")
        else:
            p.add_argument("--rate", type=float, default=2000.0, help="messages/s in total")
            p.add_argument("--duration", type=float, default=5.0)
    p = sub.add_parser("scale")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--first", type=int, default=0, help="index of this worker's first client")
    p.add_argument("--mode", choices=("text", "json", "json2", "bare"), default="text")
    p.add_argument("--room-size", type=int, default=100)
    p.add_argument("--inflight", type=int, default=256)
    args = parser.parse_args(argv)
    if args.workload == "scale":
        return scale(args)
    raise_nofile(args.subscribers + args.publishers + 1000)
    result = burst(args) if args.workload == "burst" else paced(args)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
