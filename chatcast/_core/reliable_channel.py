"""One reliable channel's protocol, sans-I/O: :class:`ReliableCore`.

It puts together what a reliable :class:`~chatcast.multicast.MulticastChannel` needs besides
today's classifier: the sending half (:class:`~chatcast._core.reliable_sender.RepairSender`),
the receiving half (:class:`~chatcast._core.reliable.RepairReceiver`) and the control codec,
and sorts the datagrams of the repair port between them. The shell calls:

* :meth:`ReliableCore.sent` after each datagram sent on the data port;
* :meth:`ReliableCore.message` for each message the classifier returns from the data port;
* :meth:`ReliableCore.control` for each datagram of the repair port;
* :meth:`ReliableCore.tick` at :meth:`ReliableCore.deadline`;

then sends :meth:`ReliableCore.take_outgoing` on the repair port and queues
:attr:`ReliableCore.ready`. Nothing here raises on what the network sends.
"""

from __future__ import annotations

import logging
import random

from .mcast import Address, Classifier, Skip, source
from .reliable import RepairReceiver
from .reliable_options import ReliableOptions
from .reliable_sender import RepairSender
from .reliable_wire import NACK, REPAIR_MARKER, Control, ControlCodec
from .wire import Message

__all__ = ["ReliableCore"]

logger = logging.getLogger("chatcast.multicast")

_REPAIR_PREFIX = len(REPAIR_MARKER)


class ReliableCore:
    """The reliable protocol of one channel.

    Args:
        classifier: The channel's classifier (it checks what repairs carry).
        instance: The channel's sender id.
        epoch: Its epoch (0 unsigned).
        since_ms: When it started, ms since the Unix epoch.
        key: The group key: control datagrams are signed, and only signed ones accepted.
        options: Timers and bounds.
        ordered: Deliver each sender's messages in order.
        joined: When the channel joined the group, seconds since the Unix epoch.
        rng: Random generator for NACK delays (tests seed one).

    Attributes:
        control_received: Datagrams read from the repair port.
        control_skipped: Of those, the ones refused, per reason (``"own"``, ``"forged"``...).
        ready: Messages (and gap events) to deliver after the one a call returned.
    """

    def __init__(
        self,
        classifier: Classifier,
        *,
        instance: str,
        epoch: int,
        since_ms: int,
        key: bytes | None,
        options: ReliableOptions,
        ordered: bool,
        joined: float,
        rng: random.Random | None = None,
    ) -> None:
        self.classifier = classifier
        self._instance = instance
        self.codec = ControlCodec(key)
        self.sender = RepairSender(
            instance=instance, epoch=epoch, since_ms=since_ms, options=options, codec=self.codec
        )
        self.receiver = RepairReceiver(
            instance=instance,
            options=options,
            codec=self.codec,
            ordered=ordered,
            joined=joined,
            rng=rng,
        )
        self.ready = self.receiver.ready
        self.control_received = 0
        self.control_skipped: dict[str, int] = {}

    def sent(self, seq: int, data: bytes, now: float) -> None:
        """Keep datagram ``data`` (number ``seq``), just sent, for repair."""
        self.sender.sent(seq, data, now)

    def message(self, message: Message, now: float) -> Message | None:
        """A message from the data port: return it if it is to be delivered now.

        Reads and resets the classifier's ``origin``: a message without one is not from a
        reliable sender and is returned as is.
        """
        classifier = self.classifier
        origin = classifier.origin
        if origin is None:
            return message
        classifier.origin = None
        return self.receiver.data(origin[0], origin[1], origin[2], message, now)

    def control(self, data: bytes, addr: Address, now: float) -> Message | None:
        """A datagram from the repair port; return a repaired message to deliver now."""
        self.control_received += 1
        if data.startswith(REPAIR_MARKER):
            message = self.classifier.classify_repair(data[_REPAIR_PREFIX:], addr, now)
            origin = self.classifier.origin
            if isinstance(message, Skip) or origin is None:
                reason = message.value if isinstance(message, Skip) else "invalid"
                self._skip(reason, addr)
                return None
            self.classifier.origin = None
            return self.receiver.data(origin[0], origin[1], origin[2], message, now, repair=True)
        control = self.codec.decode(data, int(now * 1000))
        if not isinstance(control, Control):
            self._skip(control, addr)
            return None
        if control.kind == NACK:
            if control.origin == self._instance:
                self._skip("own", addr)
                return None
            self.sender.nack(control, now)
        elif control.sender == self._instance:
            self._skip("own", addr)
            return None
        self.receiver.control(control, now)
        return None

    def _skip(self, reason: str, addr: Address) -> None:
        self.control_skipped[reason] = self.control_skipped.get(reason, 0) + 1
        logger.debug("skipped a repair-port datagram from %s: %s", source(addr), reason)

    def tick(self, now: float) -> None:
        """Run the timers that are due (NACKs, give-ups, heartbeats)."""
        self.receiver.tick(now)
        self.sender.tick(now)

    def deadline(self) -> float:
        """When :meth:`tick` must run next (``inf``: not until something happens)."""
        return min(self.receiver.deadline(), self.sender.deadline)

    def leave(self, now: float) -> bytes:
        """The leave notice to send when the channel closes."""
        return self.sender.leave(now)

    def take_outgoing(self) -> list[bytes]:
        """The datagrams to send on the repair port now (and forget them)."""
        out = self.sender.outgoing + self.receiver.outgoing
        self.sender.outgoing.clear()
        self.receiver.outgoing.clear()
        return out
