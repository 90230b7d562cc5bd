"""The asyncio datagram protocols under :class:`~chatcast.multicast.MulticastChannel`.

The receive side classifies each datagram (own, oversized, not UTF-8, plain text, JSON form,
signed form) into the channel's bounded queue with no awaits and no tasks; the send side only
counts errors. Not public: :mod:`chatcast.multicast` is the interface.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import socket
import time
from typing import Any, Final

from ._core import datagram as _datagram
from ._core.datagram import Drop
from .exceptions import InvalidFrame
from .message import MESSAGE, Message, decode_message, parse_frame

__all__ = ["INSTANCE_FIELD", "Receiver", "Sender", "SignedReceiver", "source"]

logger = logging.getLogger("chatcast.multicast")

#: The JSON field that carries the sending channel's instance id.
INSTANCE_FIELD: Final = "instance"
# Datagrams read per wake-up of the event loop's reader: the one asyncio reads, plus up to
# this many more read straight from the socket (see _Receiver.datagram_received).
_DRAIN: Final = 63
# Enough for any UDP datagram, so an oversized one is seen whole and counted, not truncated.
_RECV_SIZE: Final = 65536
# "{": only datagrams that start with it are tried as the JSON form.
_OPEN_BRACE: Final = 0x7B


class Receiver(asyncio.DatagramProtocol):
    """The receive side: classifies datagrams into the bounded queue. No awaits, no tasks."""

    def __init__(
        self,
        *,
        instance: str,
        echo: bool,
        max_bytes: int,
        max_queue: int,
        drop_newest: bool,
    ) -> None:
        self.instance = instance
        self.echo = echo
        self.max_bytes = max_bytes
        self.max_queue = max_queue
        self.drop_newest = drop_newest
        self.own_address: tuple[str, int] = ("", 0)
        self.sock: socket.socket | None = None
        self.queue: collections.deque[Message] = collections.deque()
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.closed: asyncio.Future[None] | None = None
        self.received = 0
        self.own = 0
        self.empty = 0
        self.oversized = 0
        self.invalid = 0
        self.overflowed = 0
        self.errors = 0
        # Signed-form counters (see SignedReceiver); this class never touches them.
        self.drops = dict.fromkeys(Drop, 0)

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
        self._handle(data, addr)
        sock = self.sock
        if sock is None:
            return
        handle = self._handle
        for _ in range(_DRAIN):
            try:
                data, addr = sock.recvfrom(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.error_received(exc)
                return
            handle(data, addr)

    def _handle(self, data: bytes, addr: Any) -> None:
        # The hot path: one call per datagram; no awaits, no tasks, no logging unless dropped.
        self.received += 1
        size = len(data)
        if size > self.max_bytes:
            self.oversized += 1
            logger.debug("skipped a datagram of %d bytes from %s", size, addr)
            return
        if not size:
            self.empty += 1
            return
        if addr[1] == self.own_address[1] and addr[0] == self.own_address[0]:
            # From this channel's own send socket: nobody else can send from that address.
            if not self.echo:
                self.own += 1
                return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self.invalid += 1
            logger.debug("skipped a datagram that is not UTF-8 from %s", addr)
            return
        message: Message | None
        if data[0] == _OPEN_BRACE:
            message = self._decode_json(text, addr)
            if message is None:
                return
        else:
            if text[-1] == "\n":
                # A terminal's line ending (nc -u, echo | socat): not part of the text.
                text = text[:-2] if text.endswith("\r\n") else text[:-1]
                if not text:
                    self.empty += 1
                    return
            message = Message(text=text, sender=source(addr))
        queue = self.queue
        if len(queue) >= self.max_queue:
            self.overflowed += 1
            if self.drop_newest:
                return
            queue.popleft()
        queue.append(message)
        if self.waiters:
            self.wake_one()

    def _decode_json(self, text: str, addr: Any) -> Message | None:
        try:
            obj = parse_frame(text)
        except InvalidFrame:
            # "{" typed by a human, or any other non-chatcast datagram: plain text.
            return Message(text=text, sender=source(addr))
        if obj.get(INSTANCE_FIELD) == self.instance and not self.echo:
            self.own += 1
            return None
        try:
            message = _decode_chat(obj)
        except InvalidFrame as exc:
            self.invalid += 1
            logger.debug("skipped an invalid JSON datagram from %s: %s", addr, exc)
            return None
        if message.sender is None:
            message = dataclasses.replace(message, sender=source(addr))
        return message

    def enqueue(self, message: Message) -> None:
        """Queue ``message`` under the drop policy and wake a receiver.

        (:meth:`_handle` does the same inline: one call fewer per datagram.)
        """
        queue = self.queue
        if len(queue) >= self.max_queue:
            self.overflowed += 1
            if self.drop_newest:
                return
            queue.popleft()
        queue.append(message)
        if self.waiters:
            self.wake_one()

    def wake_one(self) -> None:
        """Wake the longest-waiting receiver, if any."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def wake_all(self) -> None:
        """Wake every waiting receiver (the channel is closing)."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


_WARN_ONCE: Final = {
    Drop.UNSIGNED: "it is not signed (a sender without the key?)",
    Drop.FORGED: "it is signed with another key, or was altered on the way",
    Drop.STALE: (
        "it is stamped %offset s from this host's clock, more than "
        f"{_datagram.MAX_CLOCK_SKEW_MS // 1000} s: are the clocks synchronised?"
    ),
}


class SignedReceiver(Receiver):
    """The receive side of a keyed channel: only authentic, fresh datagrams get through.

    A separate class, so the unkeyed hot path (:meth:`_Receiver._handle`) stays as it was.
    """

    def __init__(self, *, key: bytes, **options: Any) -> None:
        super().__init__(**options)
        self.verifier = _datagram.Verifier(key)
        self.guard = _datagram.ReplayGuard()
        self.own_sender = self.instance.encode()
        self.warned: set[Drop] = set()

    def _handle(self, data: bytes, addr: Any) -> None:
        self.received += 1
        size = len(data)
        if size > self.max_bytes:
            self.oversized += 1
            logger.debug("skipped a datagram of %d bytes from %s", size, addr)
            return
        if not size:
            self.empty += 1
            return
        if addr[1] == self.own_address[1] and addr[0] == self.own_address[0] and not self.echo:
            self.own += 1
            return
        signed = self.verifier.verify(data)
        if isinstance(signed, Drop):
            self._drop(signed, addr)
            return
        if signed.sender == self.own_sender and not self.echo:
            self.own += 1
            return
        state = self.guard.accept(signed, time.time_ns() // 1_000_000)
        if isinstance(state, Drop):
            self._drop(state, addr, signed)
            return
        # Authentic and fresh: its sequence number is spent whatever the body holds.
        try:
            obj = parse_frame(signed.body.decode())
            name = obj.get("from")
            # The signed header's sequence number and time are the message's, whatever the
            # body says.
            obj["seq"] = signed.seq
            obj["ts"] = signed.time_ms / 1000
            if name is None:
                obj["from"] = source(addr)
            message = _decode_chat(obj)
        except (UnicodeDecodeError, InvalidFrame) as exc:
            self.invalid += 1
            logger.debug("skipped a signed datagram with an invalid body from %s: %s", addr, exc)
            return
        state.name = name
        self.enqueue(message)

    def _drop(
        self, reason: Drop, addr: Any, signed: _datagram.SignedDatagram | None = None
    ) -> None:
        self.drops[reason] += 1
        if reason in self.warned or reason not in _WARN_ONCE:
            logger.debug("dropped a datagram from %s: %s", source(addr), reason.value)
            return
        # Once per channel and kind: these usually mean a misconfiguration (a peer without
        # the key or with another one, a host whose clock is off), which the user must fix.
        self.warned.add(reason)
        hint = _WARN_ONCE[reason]
        if signed is not None:
            offset = (signed.time_ms - time.time_ns() // 1_000_000) / 1000
            hint = hint.replace("%offset", f"{offset:+.0f}")
        logger.warning("dropped a datagram from %s: %s", source(addr), hint)


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


def source(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _decode_chat(obj: dict[str, Any]) -> Message:
    """A chat message from a datagram's JSON object.

    A multicast group has no server: a datagram that claims to be a server's notice (an
    announcement, an error, "closing", a join...) would be shown as one. Only ``message``
    is accepted.

    Raises:
        InvalidFrame: Not a valid message (see :func:`~chatcast.message.decode_message`), or
            of another kind.
    """
    message = decode_message(obj)
    if message.kind != MESSAGE:
        raise InvalidFrame(f"{message.kind!r} is not a multicast message type")
    return message
