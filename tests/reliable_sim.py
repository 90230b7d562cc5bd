"""A fake network for the sans-I/O reliable multicast core: nodes, loss, latency, a fake clock.

Each :class:`Node` is what a reliable channel is without its sockets: an ``Encoder``, a
``Classifier`` and a ``ReliableCore``. :class:`Net` moves their datagrams with a per-receiver
loss rate and random latency (so datagrams also arrive out of order), and runs each core's
timers at its deadline, all on one fake clock. Deterministic for a given seed.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any

from chatcast._core.mcast import Classifier, Encoder
from chatcast._core.reliable_channel import ReliableCore
from chatcast._core.reliable_options import ReliableOptions
from chatcast._core.wire import Message

#: The fake clock starts here (seconds since the Unix epoch).
T0 = 1_700_000_000.0
KEY = b"kunci reliable"


class Node:
    """One reliable channel, minus sockets."""

    def __init__(
        self,
        net: Net,
        index: int,
        *,
        key: bytes | None,
        options: ReliableOptions,
        ordered: bool,
        joined: float,
        name: str,
    ) -> None:
        self.net = net
        self.index = index
        self.instance = f"{index + 1:016x}"
        self.address = ("10.0.0.1", 40000 + index)
        epoch = 7 if key is not None else 0
        since_ms = int(joined * 1000)
        self.encoder = Encoder(
            instance=self.instance, epoch=epoch, name=name, key=key, reliable_since=since_ms
        )
        self.classifier = Classifier(instance=self.instance, key=key)
        self.classifier.own_address = self.address
        self.core = ReliableCore(
            self.classifier,
            instance=self.instance,
            epoch=epoch,
            since_ms=since_ms,
            key=key,
            options=options,
            ordered=ordered,
            joined=joined,
            rng=random.Random(net.seed * 1000 + index),
        )
        self.got: list[Message] = []
        #: Loss rate of datagrams arriving at this node.
        self.loss = 0.0
        #: Until then this node handles nothing (a starved process): what arrives waits.
        self.stalled_until = 0.0

    def send(self, text: str) -> None:
        now = self.net.now
        data = self.encoder.encode(text, now)
        self.core.sent(self.encoder.seq, data, now)
        self.net.broadcast(self, "data", data)
        self.after()

    def deliver(self, port: str, data: bytes, addr: tuple[str, int]) -> None:
        now = self.net.now
        if now < self.stalled_until:
            self.net.at(self.stalled_until, functools.partial(self.deliver, port, data, addr))
            return
        if port == "data":
            message = self.classifier.classify(data, addr, now)
            if isinstance(message, Message):
                out = self.core.message(message, now)
            else:
                out = None
        else:
            out = self.core.control(data, addr, now)
        if out is not None:
            self.got.append(out)
        self.after()

    def after(self) -> None:
        self.got.extend(self.core.ready)
        self.core.ready.clear()
        for data in self.core.take_outgoing():
            self.net.broadcast(self, "control", data)
        self.net.wake(self)

    def tick(self) -> None:
        if self.net.now < self.stalled_until:
            self.net.at(self.stalled_until, self.tick)
            return
        self.core.tick(self.net.now)
        self.after()

    def texts(self, sender: str | None = None) -> list[str]:
        return [m.text for m in self.got if m.kind == "message" and m.sender in (None, sender)]


class Net:
    """The fake network and clock."""

    def __init__(self, seed: int = 0, *, latency: tuple[float, float] = (0.001, 0.001)) -> None:
        self.seed = seed
        self.random = random.Random(seed)
        self.now = T0
        self.latency = latency
        self.nodes: list[Node] = []
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._timers: dict[int, float] = {}
        #: Datagrams sent per port ("data", "control").
        self.sent: dict[str, int] = {"data": 0, "control": 0}
        #: If set, decides per (sender, receiver, port, data) whether a datagram is dropped.
        self.drop: Callable[[Node, Node, str, bytes], bool] | None = None

    def node(
        self,
        *,
        key: bytes | None = None,
        options: ReliableOptions | None = None,
        ordered: bool = True,
        name: str | None = None,
    ) -> Node:
        index = len(self.nodes)
        node = Node(
            self,
            index,
            key=key,
            options=options or ReliableOptions(),
            ordered=ordered,
            joined=self.now,
            name=name or f"n{index}",
        )
        self.nodes.append(node)
        return node

    def at(self, when: float, action: Callable[[], Any]) -> None:
        heapq.heappush(self._events, (when, next(self._order), action))

    def broadcast(self, source: Node, port: str, data: bytes) -> None:
        self.sent[port] += 1
        for node in self.nodes:
            if node is source:
                continue
            if self.drop is not None:
                if self.drop(source, node, port, data):
                    continue
            elif node.loss and self.random.random() < node.loss:
                continue
            delay = self.random.uniform(*self.latency)
            self.at(self.now + delay, functools.partial(node.deliver, port, data, source.address))

    def wake(self, node: Node) -> None:
        deadline = node.core.deadline()
        if deadline != float("inf") and self._timers.get(node.index) != deadline:
            self._timers[node.index] = deadline
            self.at(max(deadline, self.now), node.tick)

    def run(self, seconds: float) -> None:
        """Run events for ``seconds`` of fake time (idle senders heartbeat for ever)."""
        until = self.now + seconds
        while self._events and self._events[0][0] <= until:
            when, _, action = heapq.heappop(self._events)
            self.now = max(self.now, when)
            action()
        self.now = until

    def send_paced(self, node: Node, texts: list[str], interval: float) -> None:
        start = self.now
        for i, text in enumerate(texts):
            self.at(start + i * interval, functools.partial(node.send, text))
