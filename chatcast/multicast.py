"""UDP multicast group chat: :class:`MulticastChannel`.

::

    async with MulticastChannel("224.1.1.1", 5004, interface="127.0.0.1", ttl=2) as channel:
        await channel.send("halo")
        message = await channel.receive()       # Message(text=..., sender=...)
        async for message in channel:
            ...

A channel sends to a group and receives everything sent to it, from other channels and from
any UDP program (the lab's ``sender.py``). ``docs/multicast.md`` ("Datagram format") is the
normative description of what goes on the wire; in short:

* **JSON form** (default): one JSON object per datagram, the object the TCP side uses,
  ``{"type": "message", "from": ..., "text": ..., "ts": ..., "seq": ..., "instance": ...}``,
  UTF-8, no terminator. ``instance`` is a random id per channel.
* **Plain form** (``plain=True``): the text as bare UTF-8, which the lab's receivers print.
* A received datagram whose first byte is not ``{``, or that is not a JSON object with a
  string ``"type"``, is a plain-text :class:`~chatcast.message.Message` whose ``sender`` is
  its source, ``"host:port"``.

* **Signed form** (``key=...``): every datagram carries sender id, epoch, sequence number and
  time and is signed with HMAC-SHA256 under the group key (:mod:`chatcast._core.datagram`). A
  keyed channel sends only signed datagrams and accepts only authentic, fresh ones that it
  has not accepted before; it counts gaps in each sender's sequence numbers as ``lost``.
  This is authenticity among key holders, not secrecy: anyone on the network reads the text.

Datagrams are unreliable and unordered across senders: the network may drop, duplicate or
reorder them; a channel adds no retransmission unless made with ``reliable=True``
(NACK-based repair on a separate repair port: each reliable sender's messages once, in
order, or a gap event; see ``docs/multicast.md``, "Reliable multicast").

It never raises on bad input: oversized, empty, non-UTF-8, malformed, unsigned, forged and
replayed datagrams are counted in :meth:`~MulticastChannel.statistics` and skipped.

This module is the asyncio face of the sans-I/O core: :mod:`chatcast._core.mcast` decides
what each datagram is and makes the ones sent, :mod:`chatcast._core.mcast_config` checks the
options; :mod:`chatcast._mcast_protocols` and :mod:`chatcast._sockets` do the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import socket
import time
from typing import Final, Literal

from . import _mcast_protocols as _protocols
from . import _sockets
from ._core import mcast as _mcast
from ._core import mcast_config as _config
from ._core.mcast import Classifier, Encoder, MulticastStatistics, SenderStatistics, source
from ._core.reliable_channel import ReliableCore
from ._core.reliable_options import ReliableOptions
from .exceptions import ChannelClosed
from .message import Message

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_MAX_DATAGRAM_BYTES",
    "DEFAULT_PORT",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_RECEIVE_BUFFER_BYTES",
    "DEFAULT_TTL",
    "INSTANCE_FIELD",
    "MulticastChannel",
    "MulticastStatistics",
    "ReliableOptions",
    "SenderStatistics",
]

logger = logging.getLogger("chatcast.multicast")

#: The lab's group.
DEFAULT_GROUP: Final = _config.DEFAULT_GROUP
#: The lab's port.
DEFAULT_PORT: Final = _config.DEFAULT_PORT
#: The lab's TTL: two hops.
DEFAULT_TTL: Final = _config.DEFAULT_TTL
#: Largest datagram sent or accepted by default: 8 KiB, which the lab's receivers
#: (``recv(10240)``) read whole.
DEFAULT_MAX_DATAGRAM_BYTES: Final = _config.DEFAULT_MAX_DATAGRAM_BYTES
#: Messages a channel holds for :meth:`MulticastChannel.receive` by default.
DEFAULT_QUEUE_SIZE: Final = _config.DEFAULT_QUEUE_SIZE
#: Kernel receive buffer asked for by default (4 MiB; see ``docs/multicast.md``).
DEFAULT_RECEIVE_BUFFER_BYTES: Final = _config.DEFAULT_RECEIVE_BUFFER_BYTES
#: The JSON field that carries the sending channel's instance id.
INSTANCE_FIELD: Final = _mcast.INSTANCE_FIELD


class MulticastChannel:
    """A group chat over UDP multicast that also talks to plain UDP programs.

    Args:
        group: The multicast group: IPv4 ``224.0.0.0/4`` (``239.0.0.0/8`` is for
            organisation-local use) or IPv6 ``ff00::/8`` (link-local ``ff02::`` needs an
            ``interface``).
        port: The UDP port, 1-65535.
        interface: Where to join and send: an address of this host (``"192.168.1.10"``,
            ``"127.0.0.1"``), an interface name (``"eth0"``), or ``None`` for the OS default
            (the interface of the route to the group, usually the default route's).
        ttl: IPv4 TTL / IPv6 hop limit of sent datagrams, 0-255: 0 stays on this host, 1 on
            the local network, each further hop needs a multicast router. Default 2, as the
            lab.
        loopback: Whether receivers on this host get what this channel sends.
        name: The sender name carried in each datagram (JSON form); ``None`` leaves it out
            and receivers show the source address instead.
        plain: Send bare UTF-8 text instead of the JSON form, as the lab's ``sender.py``
            does (no name, no timestamp). Receiving accepts both forms either way.
        echo: Hand back this channel's own datagrams from :meth:`receive` when they loop
            back (they are skipped by default).
        receive_buffer_bytes: Kernel receive buffer to ask for (default 4 MiB, so a burst is
            not dropped by the kernel while Python catches up); ``None`` for the OS default.
        max_datagram_bytes: Largest datagram sent or accepted, 1 up to the UDP limit (65507
            for IPv4, 65527 for IPv6). Default 8192.
        max_queue: Messages held for :meth:`receive`, at least 1. Default 1024. A reliable
            channel's queue holds ``reliable_options.max_held`` more, since a repair
            releases at once every message held back behind it.
        drop: What goes when a message arrives to a full queue: ``"oldest"`` (default: the
            longest-waiting message, so a reader that falls behind sees the newest) or
            ``"newest"`` (the arriving one, as the kernel does). Counted as ``overflowed``.
        key: The group key (``bytes``, or a ``str`` used as UTF-8), shared by every member;
            ``None`` (default) for unsigned datagrams. With a key, every datagram sent is
            signed (HMAC-SHA256) and carries this channel's sender id, epoch and sequence
            number, and only authentic datagrams are received: unsigned, forged, truncated,
            malformed, stale and replayed ones are skipped and counted. It proves that a
            message comes from *a* key holder, unaltered and only once; it does not hide it:
            anyone on the network can read the text. Not with ``plain``.
        reliable: Repair loss (``docs/multicast.md``, "Reliable multicast"): number what is
            sent and keep it in a bounded window for repair; notice gaps in what reliable
            senders send, ask for them (NACKs) and deliver each of their messages once. What
            cannot be repaired any more becomes a ``Message(kind="gap", sender=<sender id>,
            missed=n)``. Control and repair traffic uses ``repair_port``, so plain peers on
            the group see each message once and nothing else. Not with ``plain``.
        ordered: Reliable: deliver each sender's messages in its order, holding back those
            after a gap until it is repaired or given up (default); ``False`` delivers them
            as they come (still each once).
        repair_port: Reliable: the UDP port of the control and repair traffic, on the same
            group; default ``port + 1`` (``port - 1`` for 65535). Every reliable member must
            use the same.
        reliable_options: Reliable: the timers and bounds (:class:`ReliableOptions`).

    Raises:
        ValueError: A group that is not multicast, a port or TTL out of range, an unknown
            interface, an empty key, a key with ``plain=True``, or another argument out of
            range (the message names it).
        TypeError: An argument of the wrong type.

    Nothing touches the network until :meth:`open` (or ``async with``). A channel is used by
    one event loop; it may be opened once.
    """

    def __init__(
        self,
        group: str,
        port: int,
        *,
        interface: str | None = None,
        ttl: int = DEFAULT_TTL,
        loopback: bool = True,
        name: str | None = None,
        plain: bool = False,
        echo: bool = False,
        receive_buffer_bytes: int | None = DEFAULT_RECEIVE_BUFFER_BYTES,
        max_datagram_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
        max_queue: int = DEFAULT_QUEUE_SIZE,
        drop: Literal["oldest", "newest"] = "oldest",
        key: bytes | str | None = None,
        reliable: bool = False,
        ordered: bool = True,
        repair_port: int | None = None,
        reliable_options: ReliableOptions | None = None,
    ) -> None:
        config = _config.MulticastConfig.create(
            group,
            port,
            ttl=ttl,
            loopback=loopback,
            name=name,
            plain=plain,
            echo=echo,
            receive_buffer_bytes=receive_buffer_bytes,
            max_datagram_bytes=max_datagram_bytes,
            max_queue=max_queue,
            drop=drop,
            key=key,
            reliable=reliable,
            ordered=ordered,
            repair_port=repair_port,
            reliable_options=reliable_options,
        )
        family = socket.AF_INET if config.group.version == 4 else socket.AF_INET6
        self._interface = _sockets.resolve_interface(interface, family)
        if self._interface.index == 0 and _config.needs_interface(config.group):
            raise ValueError(
                f"the link-local group {group} needs an interface (a name such as 'eth0')"
            )
        self._config = config
        self._instance = secrets.token_hex(8)
        # The signed form's epoch: microseconds since the Unix epoch at creation. Only its
        # uniqueness matters for chatcast's own channels (their sender id is random per
        # channel); docs/multicast.md says why it is time-ordered.
        self._epoch = time.time_ns() // 1000
        since_ms = self._epoch // 1000
        self._encoder = Encoder(
            instance=self._instance,
            epoch=self._epoch,
            name=config.name,
            plain=config.plain,
            key=config.key,
            max_datagram_bytes=config.max_datagram_bytes,
            reliable_since=since_ms if config.reliable else None,
        )
        classifier = Classifier(
            instance=self._instance,
            key=config.key,
            echo=config.echo,
            max_datagram_bytes=config.max_datagram_bytes,
        )
        self._core: ReliableCore | None = None
        self._control_receiver: _protocols.ControlReceiver | None = None
        self._control_sender: _protocols.Sender | None = None
        self._control_transports: tuple[asyncio.DatagramTransport, ...] = ()
        self._timer: asyncio.TimerHandle | None = None
        self._leave_timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._receiver: _protocols.Receiver
        if config.reliable:
            # The signed form's epoch, or 0: unsigned datagrams carry no epoch.
            core = self._core = ReliableCore(
                classifier,
                instance=self._instance,
                epoch=self._epoch if config.key is not None else 0,
                since_ms=since_ms,
                key=config.key,
                options=config.reliable_options,
                ordered=config.ordered,
                joined=time.time(),
            )
            self._receiver = _protocols.ReliableReceiver(
                classifier,
                core,
                self._after_io,
                # A repair releases what was held behind the gap all at once: room for all
                # of it, so a reader that keeps up loses none of it (same bound on memory).
                max_queue=config.max_queue + config.reliable_options.max_held,
                drop_newest=config.drop == "newest",
            )
            self._control_receiver = _protocols.ControlReceiver(
                core, self._receiver, self._after_io
            )
            self._control_sender = _protocols.Sender()
        else:
            self._receiver = _protocols.Receiver(
                classifier, max_queue=config.max_queue, drop_newest=config.drop == "newest"
            )
        self._sender = _protocols.Sender()
        self._sent = 0
        self._delivered = 0
        self._granted_buffer = 0
        self._state: Literal["new", "opening", "open", "closed"] = "new"
        self._receive_transport: asyncio.DatagramTransport | None = None
        self._send_transport: asyncio.DatagramTransport | None = None
        self._local_address: tuple[str, int] | None = None

    # -- properties ---------------------------------------------------------------------

    @property
    def group(self) -> str:
        """The multicast group, normalised (``"ff05::1"``, ``"224.1.1.1"``)."""
        return str(self._config.group)

    @property
    def port(self) -> int:
        """The UDP port."""
        return self._config.port

    @property
    def ttl(self) -> int:
        """The TTL / hop limit of sent datagrams."""
        return self._config.ttl

    @property
    def name(self) -> str | None:
        """The sender name carried in sent datagrams."""
        return self._config.name

    @property
    def plain(self) -> bool:
        """True if this channel sends bare text instead of the JSON form."""
        return self._config.plain

    @property
    def instance(self) -> str:
        """This channel's random instance id, carried in every JSON-form datagram.

        With a ``key`` it is the sender id of the signed form.
        """
        return self._instance

    @property
    def max_datagram_bytes(self) -> int:
        """The largest datagram sent or accepted, in bytes."""
        return self._config.max_datagram_bytes

    @property
    def local_address(self) -> tuple[str, int] | None:
        """The source (host, port) of this channel's datagrams; ``None`` until open."""
        return self._local_address

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._state == "closed"

    def __repr__(self) -> str:
        signed = " signed" if self._config.key is not None else ""
        return (
            f"<MulticastChannel {source((self.group, self.port))} on {self._interface} "
            f"ttl={self.ttl}{signed} {self._state}>"
        )

    # -- life cycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Create the sockets, join the group and start receiving.

        Raises:
            ChannelClosed: The channel was closed already.
            RuntimeError: It was opened already.
            OSError: The OS refused to bind, join or route to the group; nothing is left
                open.
        """
        if self._state == "closed":
            raise ChannelClosed("the multicast channel is closed")
        if self._state != "new":
            raise RuntimeError("the multicast channel was opened already")
        self._state = "opening"
        try:
            transports = await _protocols.open_transports(
                self._config, self._interface, self._receiver, self._sender
            )
        except BaseException:
            self._state = "closed"
            raise
        self._receive_transport, self._send_transport, self._granted_buffer = transports
        if self._control_receiver is not None and self._control_sender is not None:
            try:
                self._control_transports = await _protocols.open_repair_transports(
                    self._config, self._interface, self._control_receiver, self._control_sender
                )
            except BaseException:
                self._state = "closed"
                self._close_transports()
                raise
        own = self._receiver.classifier.own_address
        self._local_address = (own[0], own[1])
        if self._state != "opening":
            self._close_transports()
            raise ChannelClosed("the multicast channel was closed while opening")
        self._state = "open"
        logger.info(
            "joined %s on %s (ttl %d), sending from %s",
            source((self.group, self.port)),
            self._interface,
            self.ttl,
            source(self._local_address),
        )

    def close(self) -> None:
        """Close the channel; idempotent, never raises.

        Receivers waiting in :meth:`receive` are woken with :class:`ChannelClosed`; messages
        still queued are discarded. Datagrams :meth:`send` handed over are still sent.
        Use :meth:`wait_closed` (or ``async with``) to wait until the sockets are closed.
        """
        if self._state == "closed":
            return
        self._state = "closed"
        self._close_transports()
        self._close_reliable()
        self._receiver.sock = None
        self._receiver.queue.clear()
        self._receiver.wake_all()
        self._sender.resume_writing()

    def _close_transports(self) -> None:
        for transport in (self._receive_transport, self._send_transport):
            if transport is not None:
                transport.close()

    def _close_reliable(self) -> None:
        """Say goodbye on the repair port, answer NACKs for ``linger`` seconds, then close."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = -math.inf  # never re-armed
        core, transports = self._core, self._control_transports
        if core is None or not transports:
            return
        if self._control_receiver is not None:
            self._control_receiver.deliver = False
        linger = self._config.reliable_options.linger
        if core.sender.top == 0 or linger == 0:
            for transport in transports:
                transport.close()
            return
        loop = asyncio.get_running_loop()
        self._send_leave(core, self._config.reliable_options.heartbeat_min)
        loop.call_later(linger, self._end_linger)

    def _send_leave(self, core: ReliableCore, interval: float) -> None:
        # Repeated while lingering, backing off as heartbeats do: a receiver that lost our
        # last messages *and* one leave notice still learns where we stopped.
        transports = self._control_transports
        if transports[1].is_closing():
            return
        with contextlib.suppress(OSError):
            transports[1].sendto(core.leave(time.time()))
        self._leave_timer = asyncio.get_running_loop().call_later(
            interval, self._send_leave, core, interval * 2
        )

    def _end_linger(self) -> None:
        if self._leave_timer is not None:
            self._leave_timer.cancel()
        for transport in self._control_transports:
            transport.close()

    def _after_io(self) -> None:
        """Send what the reliable core has for the repair port; re-arm its timer."""
        core = self._core
        if core is None or not self._control_transports:
            return
        closing = self._state == "closed"
        if closing:
            core.receiver.outgoing.clear()  # a closed channel asks for nothing
        out = core.take_outgoing()
        if out:
            transport = self._control_transports[1]
            for data in out:
                transport.sendto(data)
        deadline = core.deadline()
        if deadline < self._timer_at and not closing:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, deadline - time.time()), self._on_timer)

    def _on_timer(self) -> None:
        core = self._core
        assert core is not None
        self._timer = None
        self._timer_at = math.inf
        core.tick(time.time())
        ready = core.ready
        for message in ready:
            self._receiver.put(message)
        ready.clear()
        self._after_io()

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` has released the sockets.

        A reliable channel that sent something keeps its repair port open for
        ``reliable_options.linger`` seconds after :meth:`close`, to answer the NACKs of
        receivers still missing its last messages; this waits for that too.
        """
        protocols: list[_protocols.Receiver | _protocols.Sender | _protocols.ControlReceiver]
        protocols = [self._receiver, self._sender]
        if self._control_receiver is not None and self._control_sender is not None:
            protocols += [self._control_receiver, self._control_sender]
        for protocol in protocols:
            if protocol.closed is not None:
                await protocol.closed

    async def __aenter__(self) -> MulticastChannel:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    # -- sending ------------------------------------------------------------------------

    async def send(self, text: str) -> None:
        """Send ``text`` to the group as one datagram.

        Returns once the datagram is handed to the OS, which may still lose it (UDP). Waits
        only while the OS cannot take more datagrams. If cancelled while waiting, the
        datagram is still sent.

        Args:
            text: The text; any length up to the datagram limit, newlines allowed.

        Raises:
            MessageTooLong: The datagram would be over ``max_datagram_bytes``; nothing sent.
            ValueError: Empty text in plain mode (an empty datagram carries nothing and
                receivers skip it), or text that cannot be encoded (lone surrogates).
            TypeError: ``text`` is not a ``str``.
            ChannelClosed: The channel is closed.
            RuntimeError: The channel was never opened.
            OSError: The OS refused the datagram (``ENETUNREACH``, ``EPERM``...); the channel
                stays open.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        transport = self._send_transport
        if self._state == "closed":
            raise ChannelClosed("the multicast channel is closed")
        if transport is None:
            raise RuntimeError("open the channel first: async with MulticastChannel(...)")
        now = time.time()
        encoder = self._encoder
        data = encoder.encode(text, now)
        sender = self._sender
        sender.error = None
        transport.sendto(data)
        core = self._core
        if core is not None:
            # Kept for repair even if the OS refused it now: a NACK may still ask for it.
            core.sender.sent(encoder.seq, data, now)
            if core.sender.deadline < self._timer_at:
                self._after_io()
        if sender.error is not None:
            error, sender.error = sender.error, None
            raise error
        self._sent += 1
        if sender.resumed is not None:
            await asyncio.shield(sender.resumed)

    # -- receiving ----------------------------------------------------------------------

    async def receive(self) -> Message:
        """Return the next message, waiting for one if none is queued.

        Messages come in the order their datagrams arrived. Cancellation-safe: a receive
        that is cancelled takes no message from the queue. Several tasks may wait at once;
        each message goes to one of them.

        Raises:
            ChannelClosed: The channel is closed, or was closed while waiting.
            RuntimeError: The channel was never opened.
        """
        receiver = self._receiver
        while not receiver.queue:
            self._check_readable()
            await receiver.wait()
        self._delivered += 1
        return receiver.queue.popleft()

    def receive_nowait(self) -> Message | None:
        """Return the next queued message, or ``None`` if none is queued now.

        Raises:
            ChannelClosed: The channel is closed.
            RuntimeError: The channel was never opened.
        """
        self._check_readable()
        if not self._receiver.queue:
            return None
        self._delivered += 1
        return self._receiver.queue.popleft()

    def _check_readable(self) -> None:
        if self._state == "closed":
            raise ChannelClosed("the multicast channel is closed")
        if self._state == "new":
            raise RuntimeError("open the channel first: async with MulticastChannel(...)")

    def __aiter__(self) -> MulticastChannel:
        return self

    async def __anext__(self) -> Message:
        """The next message; the iteration ends when the channel is closed."""
        try:
            return await self.receive()
        except ChannelClosed:
            raise StopAsyncIteration from None

    # -- statistics ---------------------------------------------------------------------

    def statistics(self) -> MulticastStatistics:
        """Return the channel's counters now (see :class:`MulticastStatistics`)."""
        receiver = self._receiver
        classifier = receiver.classifier
        reliable: dict[str, int] = {}
        core = self._core
        if core is not None:
            rx, tx = core.receiver, core.sender
            reliable = {
                "nacks_sent": rx.nacks_sent,
                "nacked": rx.nacked,
                "nacks_suppressed": rx.suppressed,
                "nacks_received": tx.nacks_received,
                "repairs_sent": tx.repairs_sent,
                "repairs_throttled": tx.repairs_throttled,
                "repairs_received": rx.repairs_received,
                "duplicates": rx.duplicates,
                "gaps": rx.gaps,
                "missed": rx.missed,
                "held": rx.held,
                "control_received": core.control_received,
            }
        errors = receiver.errors + self._sender.errors
        if self._control_receiver is not None and self._control_sender is not None:
            errors += self._control_receiver.errors + self._control_sender.errors
        return MulticastStatistics(
            sent=self._sent,
            received=classifier.received,
            delivered=self._delivered,
            queued=len(receiver.queue),
            overflowed=receiver.overflowed,
            errors=errors,
            receive_buffer_bytes=self._granted_buffer,
            lost=classifier.lost,
            **{reason.value: count for reason, count in classifier.skipped.items()},
            **reliable,
        )

    def sender_statistics(self) -> list[SenderStatistics]:
        """Return what this channel knows of each sender now, least recently heard first.

        Only a channel with a ``key`` tracks senders (an unsigned datagram's sender id could
        be anyone's); without one the list is empty. It holds at most the 1024 most
        recently heard senders.
        """
        return self._receiver.classifier.sender_statistics()
