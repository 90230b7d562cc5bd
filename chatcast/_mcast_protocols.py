"""The asyncio shell under :class:`~chatcast.multicast.MulticastChannel`: sockets in, messages out.

* :func:`open_transports` builds the two sockets (:mod:`chatcast._sockets`) and hands them to
  the event loop.
* :class:`Receiver` feeds each datagram the loop (or its read-ahead) gets to the sans-I/O
  :class:`~chatcast._core.mcast.Classifier`, and puts the messages it returns in the bounded
  queue that :meth:`~chatcast.multicast.MulticastChannel.receive` reads, with no awaits and
  no tasks.
* :class:`Sender` records the send transport's errors and flow control.

Every decision about a datagram's content is the classifier's. Not public:
:mod:`chatcast.multicast` is the interface.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Final

from . import _sockets
from ._core.mcast import Classifier
from ._core.mcast_config import MulticastConfig
from ._core.reliable_channel import ReliableCore
from ._core.wire import Message

__all__ = [
    "ControlReceiver",
    "Receiver",
    "ReliableReceiver",
    "Sender",
    "open_repair_transports",
    "open_transports",
]

logger = logging.getLogger("chatcast.multicast")

# Datagrams read per wake-up of the event loop's reader: the one asyncio reads, plus up to
# this many more read straight from the socket (see Receiver.datagram_received).
_DRAIN: Final = 63
# Enough for any UDP datagram, so an oversized one is seen whole and counted, not truncated.
_RECV_SIZE: Final = 65536
# Windows' completion-based loop, where reading ahead would reorder datagrams.
_PROACTOR: Final[tuple[type, ...]] = tuple(
    loop_class
    for loop_class in (getattr(asyncio, "ProactorEventLoop", None),)
    if loop_class is not None
)


class Receiver(asyncio.DatagramProtocol):
    """The receive side: datagrams through the classifier into the bounded queue.

    Args:
        classifier: Decides what each datagram is, and counts it.
        max_queue: Messages the queue holds.
        drop_newest: On a full queue drop the arriving message instead of the oldest.

    Attributes:
        queue: Messages waiting for a reader, oldest first.
        waiters: Futures of readers parked in :meth:`wait`, longest-waiting first.
        sock: The receive socket while read-ahead is allowed, else ``None``.
        overflowed: Messages dropped because the queue was full.
        errors: Errors the OS reported on the socket.
        closed: Done once the transport let go of the socket (``None`` before it had one).
    """

    def __init__(self, classifier: Classifier, *, max_queue: int, drop_newest: bool) -> None:
        self.classifier = classifier
        self.max_queue = max_queue
        self.drop_newest = drop_newest
        self.sock: socket.socket | None = None
        self.queue: collections.deque[Message] = collections.deque()
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.closed: asyncio.Future[None] | None = None
        self.overflowed = 0
        self.errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        self.sock = None
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)

    def error_received(self, exc: Exception) -> None:
        self.errors += 1
        logger.debug("receive error: %s", exc)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # asyncio's selector transport reads one datagram per event-loop iteration, which
        # caps a channel at a fraction of what a blocking socket reads in a burst. So, having
        # been handed one, read what else is waiting straight from the (non-blocking) socket,
        # at most _DRAIN, so other callbacks still get their turn. Order is kept: these are
        # the datagrams the transport would have read next. Not with a proactor loop, whose
        # overlapped read already in flight would take a datagram out of turn.
        # The hot path: no awaits, no tasks, one classify() call per datagram, one clock
        # reading per batch (a batch takes well under the 5 minutes of allowed clock skew).
        classify = self.classifier.classify
        queue = self.queue
        now = time.time()
        sock = self.sock
        drained = 0
        while True:
            message = classify(data, addr, now)
            # Not isinstance(message, Skip): Skip's metaclass is not type, which sends
            # isinstance() down its slow path.
            if isinstance(message, Message):
                if len(queue) >= self.max_queue:
                    self.overflowed += 1
                    if not self.drop_newest:
                        queue.popleft()
                        queue.append(message)
                else:
                    queue.append(message)
                if self.waiters:
                    self.wake_one()
            if sock is None or drained == _DRAIN:
                return
            drained += 1
            try:
                data, addr = sock.recvfrom(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.error_received(exc)
                return

    def put(self, message: Message) -> None:
        """Queue ``message`` (the bounded queue's rule) and wake a reader."""
        queue = self.queue
        if len(queue) >= self.max_queue:
            self.overflowed += 1
            if self.drop_newest:
                return
            queue.popleft()
        queue.append(message)
        if self.waiters:
            self.wake_one()

    async def wait(self) -> None:
        """Wait until a message may be in the queue (or :meth:`wake_all` is called).

        Cancellation-safe: a reader cancelled after it was woken passes the wake-up on to
        the next reader, so no queued message waits for nobody.
        """
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter in self.waiters:
                self.waiters.remove(waiter)
            elif self.queue:
                self.wake_one()  # we were woken for a message we will not take
            raise

    def wake_one(self) -> None:
        """Wake the longest-waiting reader, if any."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def wake_all(self) -> None:
        """Wake every waiting reader (the channel is closing)."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


class ReliableReceiver(Receiver):
    """The data port of a reliable channel: as :class:`Receiver`, but each message from a
    reliable sender goes through the :class:`~chatcast._core.reliable_channel.ReliableCore`
    (in order, each once, gaps noticed), and ``after`` runs once per batch (it sends the
    NACKs due and re-arms the timer).
    """

    def __init__(
        self,
        classifier: Classifier,
        core: ReliableCore,
        after: Callable[[], None],
        *,
        max_queue: int,
        drop_newest: bool,
    ) -> None:
        super().__init__(classifier, max_queue=max_queue, drop_newest=drop_newest)
        self.core = core
        self.after = after

    def datagram_received(self, data: bytes, addr: Any) -> None:
        classifier = self.classifier
        classify = classifier.classify
        track = self.core.receiver.data
        ready = self.core.ready
        put = self.put
        now = time.time()
        sock = self.sock
        drained = 0
        while True:
            classifier.origin = None
            message = classify(data, addr, now)
            if isinstance(message, Message):
                origin = classifier.origin
                if origin is not None:
                    delivered = track(origin[0], origin[1], origin[2], message, now)
                    if delivered is not None:
                        put(delivered)
                    if ready:
                        for message in ready:
                            put(message)
                        ready.clear()
                else:
                    put(message)
            if sock is None or drained == _DRAIN:
                break
            drained += 1
            try:
                data, addr = sock.recvfrom(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.error_received(exc)
                break
        self.after()


class ControlReceiver(asyncio.DatagramProtocol):
    """The repair port of a reliable channel: NACKs, heartbeats, leave notices and repairs
    go to the core; repaired messages to the data receiver's queue; then ``after`` runs."""

    def __init__(self, core: ReliableCore, receiver: Receiver, after: Callable[[], None]) -> None:
        self.core = core
        self.receiver = receiver
        self.after = after
        self.errors = 0
        self.deliver = True
        self.closed: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)

    def error_received(self, exc: Exception) -> None:
        self.errors += 1
        logger.debug("repair port receive error: %s", exc)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        core = self.core
        message = core.control(data, addr, time.time())
        ready = core.ready
        if self.deliver:
            if message is not None:
                self.receiver.put(message)
            for message in ready:
                self.receiver.put(message)
        ready.clear()
        self.after()


class Sender(asyncio.DatagramProtocol):
    """The send side: records errors the transport reports and its flow control."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.errors = 0
        self.resumed: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)
        self.resume_writing()

    def error_received(self, exc: Exception) -> None:
        # Called from inside sendto() for an immediate failure (send() raises it), or later
        # for a datagram that had to wait in the transport's buffer (only counted).
        self.error = exc
        self.errors += 1
        logger.debug("send error: %s", exc)

    def pause_writing(self) -> None:
        if self.resumed is None:
            self.resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.resumed is not None:
            if not self.resumed.done():
                self.resumed.set_result(None)
            self.resumed = None


async def open_transports(
    config: MulticastConfig, interface: _sockets.Interface, receiver: Receiver, sender: Sender
) -> tuple[asyncio.DatagramTransport, asyncio.DatagramTransport, int]:
    """Open the receive and send sockets and hand them to the running loop.

    Sets the classifier's ``own_address`` to the send socket's address, and the receiver's
    ``sock`` for read-ahead (but under a proactor loop).

    Returns:
        The receive and send transports, and the receive buffer the OS reports.

    Raises:
        OSError: The OS refused to bind, join or route to the group; nothing is left open.
    """
    granted = 0

    def prepare(receive_sock: socket.socket, send_sock: socket.socket) -> None:
        nonlocal granted
        own = send_sock.getsockname()
        receiver.classifier.own_address = (own[0], own[1])
        granted = receive_sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if not isinstance(asyncio.get_running_loop(), _PROACTOR):
            receiver.sock = receive_sock

    try:
        receive_transport, send_transport = await _open_pair(
            config, config.port, interface, receiver, sender, prepare
        )
    except BaseException:
        receiver.sock = None
        raise
    return receive_transport, send_transport, granted


async def open_repair_transports(
    config: MulticastConfig,
    interface: _sockets.Interface,
    receiver: ControlReceiver,
    sender: Sender,
) -> tuple[asyncio.DatagramTransport, asyncio.DatagramTransport]:
    """Open the receive and send sockets of the repair port (``config.repair_port``).

    Raises:
        OSError: The OS refused; nothing is left open.
    """
    return await _open_pair(config, config.repair_port, interface, receiver, sender)


async def _open_pair(
    config: MulticastConfig,
    port: int,
    interface: _sockets.Interface,
    receiver: asyncio.DatagramProtocol,
    sender: asyncio.DatagramProtocol,
    prepare: Callable[[socket.socket, socket.socket], None] | None = None,
) -> tuple[asyncio.DatagramTransport, asyncio.DatagramTransport]:
    """Open a receive and a send socket on ``port`` of the group, ``prepare`` them, and hand
    them to the running loop; on any failure close what was opened and raise."""
    loop = asyncio.get_running_loop()
    receive_sock = send_sock = None
    receive_transport: asyncio.DatagramTransport | None = None
    try:
        receive_sock = _sockets.open_receive_socket(
            config.group,
            port,
            interface,
            loopback=config.loopback,
            receive_buffer_bytes=config.receive_buffer_bytes,
        )
        send_sock = _sockets.open_send_socket(
            config.group, port, interface, ttl=config.ttl, loopback=config.loopback
        )
        if prepare is not None:
            prepare(receive_sock, send_sock)
        receive_transport, _ = await loop.create_datagram_endpoint(
            lambda: receiver, sock=receive_sock
        )
        receive_sock = None  # the transport owns it now
        send_transport, _ = await loop.create_datagram_endpoint(lambda: sender, sock=send_sock)
    except BaseException:
        for sock in (receive_sock, send_sock):
            if sock is not None:
                sock.close()
        if receive_transport is not None:
            receive_transport.close()
        raise
    return receive_transport, send_transport
