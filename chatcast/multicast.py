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
  time and is signed with HMAC-SHA256 under the group key (:mod:`chatcast._datagram`). A
  keyed channel sends only signed datagrams and accepts only authentic, fresh ones that it
  has not accepted before; it counts gaps in each sender's sequence numbers as ``lost``.
  This is authenticity among key holders, not secrecy: anyone on the network reads the text.

Datagrams are unreliable and unordered across senders: the network may drop, duplicate or
reorder them; a channel adds no retransmission. It never raises on bad input: oversized,
empty, non-UTF-8, malformed, unsigned, forged and replayed datagrams are counted in
:meth:`~MulticastChannel.statistics` and skipped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import socket
import time
from typing import Any, Final, Literal

from . import _mcast_protocols as _protocols
from . import _sockets
from ._core import datagram as _datagram
from ._core.datagram import Drop
from .exceptions import ChannelClosed, MessageTooLong
from .message import Message, dump_frame

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
    "SenderStatistics",
]

logger = logging.getLogger("chatcast.multicast")

#: The lab's group.
DEFAULT_GROUP: Final = "224.1.1.1"
#: The lab's port.
DEFAULT_PORT: Final = 5004
#: The lab's TTL: two hops.
DEFAULT_TTL: Final = 2
#: Largest datagram sent or accepted by default: 8 KiB, which the lab's receivers
#: (``recv(10240)``) read whole.
DEFAULT_MAX_DATAGRAM_BYTES: Final = 8192
#: Messages a channel holds for :meth:`MulticastChannel.receive` by default.
DEFAULT_QUEUE_SIZE: Final = 1024
#: Kernel receive buffer asked for by default (4 MiB; see ``docs/multicast.md``).
DEFAULT_RECEIVE_BUFFER_BYTES: Final = _sockets.DEFAULT_RECEIVE_BUFFER_BYTES
#: The JSON field that carries the sending channel's instance id.
INSTANCE_FIELD: Final = _protocols.INSTANCE_FIELD

# UDP payload limits: 65535 - 8 (UDP header) - 20 (IPv4 header); IPv6 has no header in the
# 16-bit length field, so 65535 - 8 (RFC 8200 without jumbograms).
_MAX_UDP_PAYLOAD: Final = {socket.AF_INET: 65507, socket.AF_INET6: 65527}
# Windows' completion-based loop, where reading ahead would reorder datagrams.
_PROACTOR: Final[tuple[type, ...]] = tuple(
    loop_class
    for loop_class in (getattr(asyncio, "ProactorEventLoop", None),)
    if loop_class is not None
)


@dataclasses.dataclass(frozen=True, slots=True)
class MulticastStatistics:
    """Counters of one :class:`MulticastChannel`, taken at one instant.

    While the channel is open, every datagram read is accounted for exactly once::

        received == (own + empty + oversized + invalid + unsigned + truncated + malformed
                     + forged + stale + replayed + overflowed + delivered + queued)

    The counters from ``unsigned`` to ``replayed``, and ``lost``, are for channels with a
    ``key``; they stay 0 without one.

    Attributes:
        sent: Datagrams handed to the OS by :meth:`~MulticastChannel.send`.
        received: Datagrams read from the socket, whatever became of them.
        delivered: Messages returned by :meth:`~MulticastChannel.receive`.
        queued: Messages waiting in the receive queue now.
        own: This channel's own datagrams, looped back and skipped (``echo=False``).
        empty: Empty datagrams (and plain ones holding only a line ending), skipped.
        oversized: Datagrams over ``max_datagram_bytes``, skipped.
        invalid: Datagrams that are not UTF-8, or JSON objects with a string ``"type"`` that
            are not a valid message (unknown type, wrong field types), skipped.
        overflowed: Messages dropped because the receive queue was full (see ``drop``).
        errors: Errors the OS reported on the sockets (logged at debug level).
        receive_buffer_bytes: The kernel receive buffer, as the OS reports it (Linux
            reports twice what it grants); 0 before the channel is open.
        unsigned: Datagrams without the signed form's marker (plain text, unsigned JSON),
            skipped.
        truncated: Signed-looking datagrams shorter than their header says, skipped.
        malformed: Signed-looking datagrams whose header is not as specified, or with bytes
            after the tag, skipped.
        forged: Well-formed datagrams with a wrong tag (another key, or altered), skipped.
        stale: Authentic datagrams stamped more than 5 minutes from this host's clock,
            skipped.
        replayed: Authentic datagrams whose sequence number was accepted already, is more
            than 64 behind the sender's newest, or belongs to an older epoch, skipped.
        lost: Sequence numbers that authentic senders skipped and that have not arrived
            since: datagrams lost on the way (or still on their way: a late one, within 64
            of the newest, is accepted and no longer counted). Not a count of datagrams
            read, so not in the sum above.
    """

    sent: int = 0
    received: int = 0
    delivered: int = 0
    queued: int = 0
    own: int = 0
    empty: int = 0
    oversized: int = 0
    invalid: int = 0
    overflowed: int = 0
    errors: int = 0
    receive_buffer_bytes: int = 0
    unsigned: int = 0
    truncated: int = 0
    malformed: int = 0
    forged: int = 0
    stale: int = 0
    replayed: int = 0
    lost: int = 0

    @property
    def dropped(self) -> int:
        """Datagrams and messages skipped for bad input or a full queue (not ``own``).

        ``lost`` is not included: those datagrams never arrived.
        """
        return (
            self.empty
            + self.oversized
            + self.invalid
            + self.overflowed
            + self.unsigned
            + self.truncated
            + self.malformed
            + self.forged
            + self.stale
            + self.replayed
        )


@dataclasses.dataclass(frozen=True, slots=True)
class SenderStatistics:
    """What a keyed :class:`MulticastChannel` knows of one sender, taken at one instant.

    Attributes:
        sender_id: The sender's id, 16 hex digits (a chatcast channel's
            :attr:`~MulticastChannel.instance`).
        name: The ``from`` of its latest message, or ``None``.
        epoch: Its current epoch (a new one each time it starts its sequence numbers again).
        last_seq: The highest sequence number received in that epoch.
        received: Its datagrams accepted, all epochs.
        lost: Its sequence numbers skipped and not received since.
    """

    sender_id: str
    name: str | None
    epoch: int
    last_seq: int
    received: int
    lost: int


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
        max_queue: Messages held for :meth:`receive`, at least 1. Default 1024.
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
    ) -> None:
        self._group = _sockets.parse_group(group)
        family = socket.AF_INET if self._group.version == 4 else socket.AF_INET6
        self._port = _sockets.check_port(port)
        self._ttl = _sockets.check_ttl(ttl)
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty str or None, got {name!r}")
        limit = _MAX_UDP_PAYLOAD[family]
        _check_int("max_datagram_bytes", max_datagram_bytes, 1, limit)
        _check_int("max_queue", max_queue, 1, None)
        if receive_buffer_bytes is not None:
            _check_int("receive_buffer_bytes", receive_buffer_bytes, 1, None)
        if drop not in ("oldest", "newest"):
            raise ValueError(f"drop must be 'oldest' or 'newest', got {drop!r}")
        signing_key = None if key is None else _datagram.check_key(key)
        if signing_key is not None and plain:
            raise ValueError(
                "a key cannot be combined with plain=True: signed datagrams are always in the "
                "JSON form"
            )
        self._interface = _sockets.resolve_interface(interface, family)
        if self._interface.index == 0 and _sockets.needs_interface(self._group):
            raise ValueError(
                f"the link-local group {group} needs an interface (a name such as 'eth0')"
            )
        self._loopback = bool(loopback)
        self._name = name
        self._plain = bool(plain)
        self._echo = bool(echo)
        self._receive_buffer_bytes = receive_buffer_bytes
        self._max_datagram_bytes = max_datagram_bytes
        self._instance = secrets.token_hex(8)
        # The signed form's epoch: microseconds since the Unix epoch at creation. Only its
        # uniqueness matters for chatcast's own channels (their sender id is random per
        # channel); docs/multicast.md says why it is time-ordered.
        self._epoch = time.time_ns() // 1000
        self._signer = (
            None
            if signing_key is None
            else _datagram.Signer(signing_key, self._instance, self._epoch)
        )
        self._seq = 0
        self._sent = 0
        self._delivered = 0
        self._granted_buffer = 0
        self._state: Literal["new", "opening", "open", "closed"] = "new"
        options: dict[str, Any] = {
            "instance": self._instance,
            "echo": self._echo,
            "max_bytes": max_datagram_bytes,
            "max_queue": max_queue,
            "drop_newest": drop == "newest",
        }
        self._receiver = (
            _protocols.Receiver(**options)
            if signing_key is None
            else _protocols.SignedReceiver(key=signing_key, **options)
        )
        self._sender = _protocols.Sender()
        self._receive_transport: asyncio.DatagramTransport | None = None
        self._send_transport: asyncio.DatagramTransport | None = None
        self._local_address: tuple[str, int] | None = None

    # -- properties ---------------------------------------------------------------------

    @property
    def group(self) -> str:
        """The multicast group, normalised (``"ff05::1"``, ``"224.1.1.1"``)."""
        return str(self._group)

    @property
    def port(self) -> int:
        """The UDP port."""
        return self._port

    @property
    def ttl(self) -> int:
        """The TTL / hop limit of sent datagrams."""
        return self._ttl

    @property
    def name(self) -> str | None:
        """The sender name carried in sent datagrams."""
        return self._name

    @property
    def plain(self) -> bool:
        """True if this channel sends bare text instead of the JSON form."""
        return self._plain

    @property
    def instance(self) -> str:
        """This channel's random instance id, carried in every JSON-form datagram.

        With a ``key`` it is the sender id of the signed form.
        """
        return self._instance

    @property
    def max_datagram_bytes(self) -> int:
        """The largest datagram sent or accepted, in bytes."""
        return self._max_datagram_bytes

    @property
    def local_address(self) -> tuple[str, int] | None:
        """The source (host, port) of this channel's datagrams; ``None`` until open."""
        return self._local_address

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._state == "closed"

    def __repr__(self) -> str:
        signed = " signed" if self._signer is not None else ""
        return (
            f"<MulticastChannel {_protocols.source((self.group, self._port))} on {self._interface} "
            f"ttl={self._ttl}{signed} {self._state}>"
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
        loop = asyncio.get_running_loop()
        receive_sock = send_sock = None
        try:
            receive_sock = _sockets.open_receive_socket(
                self._group,
                self._port,
                self._interface,
                loopback=self._loopback,
                receive_buffer_bytes=self._receive_buffer_bytes,
            )
            send_sock = _sockets.open_send_socket(
                self._group, self._port, self._interface, ttl=self._ttl, loopback=self._loopback
            )
            own = send_sock.getsockname()
            self._local_address = self._receiver.own_address = (own[0], own[1])
            self._granted_buffer = receive_sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            receiver, sender = self._receiver, self._sender
            if not isinstance(loop, _PROACTOR):
                receiver.sock = receive_sock
            receive_transport, _ = await loop.create_datagram_endpoint(
                lambda: receiver, sock=receive_sock
            )
            self._receive_transport = receive_transport
            receive_sock = None  # the transport owns it now
            send_transport, _ = await loop.create_datagram_endpoint(lambda: sender, sock=send_sock)
            self._send_transport = send_transport
            send_sock = None
        except BaseException:
            for sock in (receive_sock, send_sock):
                if sock is not None:
                    sock.close()
            self._state = "closed"
            self._close_transports()
            raise
        if self._state != "opening":
            self._close_transports()
            raise ChannelClosed("the multicast channel was closed while opening")
        self._state = "open"
        logger.info(
            "joined %s on %s (ttl %d), sending from %s",
            _protocols.source((self.group, self._port)),
            self._interface,
            self._ttl,
            _protocols.source(self._local_address),
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
        self._receiver.sock = None
        self._receiver.queue.clear()
        self._receiver.wake_all()
        self._sender.resume_writing()

    def _close_transports(self) -> None:
        for transport in (self._receive_transport, self._send_transport):
            if transport is not None:
                transport.close()

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` has released both sockets."""
        for protocol in (self._receiver, self._sender):
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
        data = self._encode(text)
        sender = self._sender
        sender.error = None
        transport.sendto(data)
        if sender.error is not None:
            error, sender.error = sender.error, None
            raise error
        self._sent += 1
        if sender.resumed is not None:
            await asyncio.shield(sender.resumed)

    def _encode(self, text: str) -> bytes:
        if self._signer is not None:
            # Sequence number and time are in the signed header, so the body leaves them out.
            body = dump_frame(Message(text=text, sender=self._name).to_wire())[:-1]
            size = len(body) + _datagram.OVERHEAD
            if size > self._max_datagram_bytes:  # before signing, which caps the body length
                raise MessageTooLong(size, self._max_datagram_bytes)
            data = self._signer.sign(self._seq + 1, time.time_ns() // 1_000_000, body)
        elif self._plain:
            if not text:
                raise ValueError("plain mode cannot send an empty text")
            data = text.encode()
        else:
            wire = Message(
                text=text, sender=self._name, timestamp=time.time(), seq=self._seq + 1
            ).to_wire()
            wire[INSTANCE_FIELD] = self._instance
            data = dump_frame(wire)[:-1]  # a datagram needs no line terminator
        if len(data) > self._max_datagram_bytes:
            raise MessageTooLong(len(data), self._max_datagram_bytes)
        if not self._plain:
            self._seq += 1
        return data

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
        queue = receiver.queue
        while not queue:
            if self._state == "closed":
                raise ChannelClosed("the multicast channel is closed")
            if self._state == "new":
                raise RuntimeError("open the channel first: async with MulticastChannel(...)")
            waiter = asyncio.get_running_loop().create_future()
            receiver.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in receiver.waiters:
                    receiver.waiters.remove(waiter)
                elif queue:
                    receiver.wake_one()  # we were woken for a message we will not take
                raise
        self._delivered += 1
        return queue.popleft()

    def receive_nowait(self) -> Message | None:
        """Return the next queued message, or ``None`` if none is queued now.

        Raises:
            ChannelClosed: The channel is closed.
            RuntimeError: The channel was never opened.
        """
        if self._state == "closed":
            raise ChannelClosed("the multicast channel is closed")
        if self._state == "new":
            raise RuntimeError("open the channel first: async with MulticastChannel(...)")
        if not self._receiver.queue:
            return None
        self._delivered += 1
        return self._receiver.queue.popleft()

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
        r = self._receiver
        return MulticastStatistics(
            sent=self._sent,
            received=r.received,
            delivered=self._delivered,
            queued=len(r.queue),
            own=r.own,
            empty=r.empty,
            oversized=r.oversized,
            invalid=r.invalid,
            overflowed=r.overflowed,
            errors=r.errors + self._sender.errors,
            receive_buffer_bytes=self._granted_buffer,
            unsigned=r.drops[Drop.UNSIGNED],
            truncated=r.drops[Drop.TRUNCATED],
            malformed=r.drops[Drop.MALFORMED],
            forged=r.drops[Drop.FORGED],
            stale=r.drops[Drop.STALE],
            replayed=r.drops[Drop.REPLAYED],
            lost=r.guard.lost if isinstance(r, _protocols.SignedReceiver) else 0,
        )

    def sender_statistics(self) -> list[SenderStatistics]:
        """Return what this channel knows of each sender now, least recently heard first.

        Only a channel with a ``key`` tracks senders (an unsigned datagram's sender id could
        be anyone's); without one the list is empty. It holds at most the 1024 most
        recently heard senders.
        """
        receiver = self._receiver
        if not isinstance(receiver, _protocols.SignedReceiver):
            return []
        return [
            SenderStatistics(
                sender_id=state.sender.decode(),
                name=state.name,
                epoch=state.epoch,
                last_seq=state.top,
                received=state.received,
                lost=state.lost,
            )
            for state in receiver.guard.senders()
        ]


def _check_int(what: str, value: object, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{what} must be {allowed}, got {value}")
