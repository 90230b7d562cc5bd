"""The multicast protocol, sans-I/O: the datagrams a channel sends, and what it receives.

Rules of this room (as h11's ``_state.py`` keeps its own): every decision about a datagram
lives here, in the order ``docs/multicast.md`` ("Receiving", "Receiving with a key") lists
it; the shell (:mod:`chatcast._mcast_protocols`) only moves bytes and messages between the
socket, these classes and the receive queue. No socket, no event loop, no clock: the time is
an argument, so tests drive both classes with bytes and a fake clock.

* :class:`Encoder` turns a text into the one datagram that carries it (plain, JSON or signed
  form) and numbers it; a datagram over the size limit is refused before it uses a sequence
  number.
* :class:`Classifier` turns ``(data, source address, now)`` into a
  :class:`~chatcast._core.wire.Message` or the :class:`Skip` reason it was skipped, and
  counts both. With a key it keeps, per sender, the replay window and loss count of
  :class:`~chatcast._core.datagram.ReplayGuard`, for at most ``max_senders`` senders. It
  never raises on what the network sends.
* :class:`MulticastStatistics` and :class:`SenderStatistics` are the public snapshots of
  those counters (:mod:`chatcast.multicast` exports them).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
from typing import Any, Final

from ..exceptions import InvalidFrame, MessageTooLong
from .datagram import (
    MAX_CLOCK_SKEW_MS,
    MAX_SENDERS,
    OVERHEAD,
    Drop,
    ReplayGuard,
    SenderState,
    SignedDatagram,
    Signer,
    Verifier,
)
from .mcast_config import DEFAULT_MAX_DATAGRAM_BYTES
from .wire import MESSAGE, Message, decode_message, dump_frame, parse_frame

__all__ = [
    "INSTANCE_FIELD",
    "RELIABLE_FIELD",
    "Address",
    "Classifier",
    "Encoder",
    "MulticastStatistics",
    "Origin",
    "SenderStatistics",
    "Skip",
    "decode_chat",
    "source",
]

logger = logging.getLogger("chatcast.multicast")

#: The JSON field that carries the sending channel's instance id.
INSTANCE_FIELD: Final = "instance"
#: The JSON field (in the body of the signed form) that marks a reliable sender's message;
#: its value is when the sender started, in ms since the Unix epoch by its clock.
RELIABLE_FIELD: Final = "reliable"
#: Who sent a reliable message: ``(sender id, epoch, start in ms)`` (epoch 0 unsigned).
Origin = tuple[str, int, int]
#: A datagram's source, as the OS gives it: ``(host, port)``, or for IPv6
#: ``(host, port, flowinfo, scope_id)``.
Address = tuple[Any, ...]

_SENDER_ID: Final = re.compile(r"[0-9a-f]{16}")
# "{": only datagrams that start with it are tried as the JSON form.
_OPEN_BRACE: Final = 0x7B


class Skip(enum.Enum):
    """Why :meth:`Classifier.classify` skipped a datagram; the value names its counter."""

    #: This channel's own datagram, looped back (unless ``echo``).
    OWN = "own"
    #: Empty, or a plain-text datagram holding only a line ending.
    EMPTY = "empty"
    #: Over ``max_datagram_bytes``.
    OVERSIZED = "oversized"
    #: Not UTF-8, or a JSON object with a string ``"type"`` that is not a valid message.
    INVALID = "invalid"
    #: Keyed: no signed-form marker.
    UNSIGNED = "unsigned"
    #: Keyed: shorter than its header says.
    TRUNCATED = "truncated"
    #: Keyed: a header not as specified, bytes after the tag, or sequence number 0.
    MALFORMED = "malformed"
    #: Keyed: a wrong tag (another key, or altered).
    FORGED = "forged"
    #: Keyed: authentic, but stamped too far from the receiver's clock.
    STALE = "stale"
    #: Keyed: authentic, but accepted already, too old for the window, or an older epoch.
    REPLAYED = "replayed"


_SKIP_FOR: Final = {drop: Skip(drop.value) for drop in Drop}
# The first of these per classifier is logged as a warning: they usually mean a peer
# without the key, with another key, or with a wrong clock, which the user must fix.
_WARN_ONCE: Final = {
    Skip.UNSIGNED: "it is not signed (a sender without the key?)",
    Skip.FORGED: "it is signed with another key, or was altered on the way",
    Skip.STALE: (
        "it is stamped %offset s from this host's clock, more than "
        f"{MAX_CLOCK_SKEW_MS // 1000} s: are the clocks synchronised?"
    ),
}


def source(addr: Address) -> str:
    """``"host:port"`` of a source address (IPv6: ``"[host]:port"``)."""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def decode_chat(obj: dict[str, Any]) -> Message:
    """A chat message from a datagram's JSON object.

    A multicast group has no server: a datagram that claims to be a server's notice (an
    announcement, an error, "closing", a join...) would be shown as one. Only ``message``
    is accepted.

    Raises:
        InvalidFrame: Not a valid message (see :func:`~chatcast._core.wire.decode_message`),
            or of another kind.
    """
    message = decode_message(obj)
    if message.kind != MESSAGE:
        raise InvalidFrame(f"{message.kind!r} is not a multicast message type")
    return message


@dataclasses.dataclass(frozen=True, slots=True)
class MulticastStatistics:
    """Counters of one :class:`~chatcast.multicast.MulticastChannel`, taken at one instant.

    While the channel is open, every datagram read is accounted for exactly once::

        received == (own + empty + oversized + invalid + unsigned + truncated + malformed
                     + forged + stale + replayed + overflowed + delivered + queued)

    The counters from ``unsigned`` to ``replayed``, and ``lost``, are for channels with a
    ``key``; they stay 0 without one.

    Attributes:
        sent: Datagrams handed to the OS by :meth:`~chatcast.multicast.MulticastChannel.send`.
        received: Datagrams read from the socket, whatever became of them.
        delivered: Messages returned by :meth:`~chatcast.multicast.MulticastChannel.receive`.
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
            read, so not in the sum above. A reliable channel counts them too, repaired or
            not.

    The rest are for channels with ``reliable=True`` (0 otherwise); the sum above then
    does not hold, since repairs and gap events are delivered and held messages wait:

    Attributes:
        nacks_sent: NACK datagrams this channel sent.
        nacked: Sequence numbers it asked for, over all its NACKs.
        nacks_suppressed: Sequence numbers it did not ask for (that round) because it heard
            another receiver's NACK for them first.
        nacks_received: NACKs addressed to this channel as a sender.
        repairs_sent: Repairs this channel sent as a sender.
        repairs_throttled: Repairs not sent because of the repair rate limit.
        repairs_received: Repairs that brought a message this channel was missing.
        duplicates: Messages that arrived again (repairs for others, late ones), dropped.
        gaps: Gap events delivered (``Message.kind == "gap"``).
        missed: Messages given up, over all gap events.
        held: Messages held back now, waiting for an earlier one to be repaired.
        control_received: Datagrams read on the repair port.
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
    nacks_sent: int = 0
    nacked: int = 0
    nacks_suppressed: int = 0
    nacks_received: int = 0
    repairs_sent: int = 0
    repairs_throttled: int = 0
    repairs_received: int = 0
    duplicates: int = 0
    gaps: int = 0
    missed: int = 0
    held: int = 0
    control_received: int = 0

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
    """What a keyed :class:`~chatcast.multicast.MulticastChannel` knows of one sender, now.

    Attributes:
        sender_id: The sender's id, 16 hex digits (a chatcast channel's
            :attr:`~chatcast.multicast.MulticastChannel.instance`).
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


class Encoder:
    """Makes the datagrams of one channel: one per text, numbered from 1.

    Args:
        instance: The channel's id, 16 lowercase hex digits (the signed form's sender id).
        epoch: The signed form's epoch (see :class:`~chatcast._core.datagram.Signer`).
        name: The ``from`` carried in the JSON and signed forms, or ``None``.
        plain: Send the bare text (no name, no number) instead of the JSON form.
        key: The group key: sign every datagram. Not with ``plain``.
        max_datagram_bytes: The largest datagram to make.
        reliable_since: Mark every datagram as a reliable sender's (started at this time, ms
            since the Unix epoch), so reliable receivers track and repair it. Not with
            ``plain``.

    Raises:
        ValueError: A key or ``reliable_since`` with ``plain``, or a bad instance id or
            epoch for signing.
    """

    def __init__(
        self,
        *,
        instance: str,
        epoch: int,
        name: str | None = None,
        plain: bool = False,
        key: bytes | None = None,
        max_datagram_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
        reliable_since: int | None = None,
    ) -> None:
        if key is not None and plain:
            raise ValueError("a key cannot be combined with plain=True")
        if reliable_since is not None and plain:
            raise ValueError("reliable cannot be combined with plain=True")
        self._reliable_since = reliable_since
        self._instance = instance
        self._name = name
        self._plain = plain
        self._max_bytes = max_datagram_bytes
        self._signer = None if key is None else Signer(key, instance, epoch)
        #: The sequence number of the last datagram made (JSON and signed forms); 0 at first.
        self.seq = 0

    def encode(self, text: str, now: float) -> bytes:
        """Return the datagram carrying ``text``, sent at ``now`` (seconds since the epoch).

        A datagram refused here uses no sequence number.

        Raises:
            MessageTooLong: It would be over ``max_datagram_bytes``.
            ValueError: Empty text in the plain form (receivers skip an empty datagram).
            UnicodeEncodeError: ``text`` holds a lone surrogate.
        """
        limit = self._max_bytes
        if self._signer is not None:
            # Sequence number and time are in the signed header, so the body leaves them out.
            obj = Message(text=text, sender=self._name).to_wire()
            if self._reliable_since is not None:
                obj[RELIABLE_FIELD] = self._reliable_since
            body = dump_frame(obj)[:-1]
            size = len(body) + OVERHEAD
            if size > limit:  # before signing, which caps the body length
                raise MessageTooLong(size, limit)
            data = self._signer.sign(self.seq + 1, int(now * 1000), body)
        elif self._plain:
            if not text:
                raise ValueError("plain mode cannot send an empty text")
            data = text.encode()
        else:
            wire = Message(text=text, sender=self._name, timestamp=now, seq=self.seq + 1).to_wire()
            wire[INSTANCE_FIELD] = self._instance
            if self._reliable_since is not None:
                wire[RELIABLE_FIELD] = self._reliable_since
            data = dump_frame(wire)[:-1]  # a datagram needs no line terminator
        if len(data) > limit:
            raise MessageTooLong(len(data), limit)
        if not self._plain:
            self.seq += 1
        return data


class Classifier:
    """Decides what each received datagram is, and counts it.

    Args:
        instance: The channel's id: JSON datagrams carrying it, and signed ones from this
            sender id, are the channel's own.
        key: The group key: accept only authentic, fresh, first-seen signed datagrams.
        echo: Classify the channel's own datagrams like any other instead of skipping them.
        max_datagram_bytes: Larger datagrams are skipped as ``OVERSIZED``.
        max_senders: Keyed: senders to keep replay state for; the least recently heard is
            forgotten first.
        max_skew_ms: Keyed: a datagram stamped further than this from ``now`` is ``STALE``.

    Attributes:
        own_address: The source address of the channel's own send socket; datagrams from it
            are its own. The shell sets it once the socket is bound (until then nothing is).
        received: Datagrams classified, whatever became of them.
        skipped: Datagrams skipped, per reason. ``received`` is their sum plus the messages
            returned.
        origin: Set to the :data:`Origin` of each message from a reliable sender (one
            whose datagram carries :data:`RELIABLE_FIELD`); left alone otherwise, so a
            reliable shell resets it to ``None`` before each call.
    """

    def __init__(
        self,
        *,
        instance: str,
        key: bytes | None = None,
        echo: bool = False,
        max_datagram_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
        max_senders: int = MAX_SENDERS,
        max_skew_ms: int = MAX_CLOCK_SKEW_MS,
    ) -> None:
        self.own_address: Address = ("", 0)
        self.origin: Origin | None = None
        self._name: str | None = None  # the "from" of the last signed body parsed
        self.received = 0
        self.skipped: dict[Skip, int] = dict.fromkeys(Skip, 0)
        self._instance = instance
        self._own_sender = instance.encode()
        self._echo = echo
        self._max_bytes = max_datagram_bytes
        self._verifier = None if key is None else Verifier(key)
        self._guard = ReplayGuard(max_senders=max_senders, max_skew_ms=max_skew_ms)
        self._warned: set[Skip] = set()

    @property
    def signed(self) -> bool:
        """True if this classifier has a key (and so accepts only signed datagrams)."""
        return self._verifier is not None

    @property
    def lost(self) -> int:
        """Keyed: sequence numbers that senders skipped and that have not arrived since."""
        return self._guard.lost

    def sender_statistics(self) -> list[SenderStatistics]:
        """Keyed: what is known of each sender remembered now, least recently heard first.

        Unkeyed: an empty list (an unsigned datagram's sender id could be anyone's).
        """
        return [
            SenderStatistics(
                sender_id=state.sender.decode(),
                name=state.name,
                epoch=state.epoch,
                last_seq=state.top,
                received=state.received,
                lost=state.lost,
            )
            for state in self._guard.senders()
        ]

    def classify(self, data: bytes, addr: Address, now: float) -> Message | Skip:
        """Return the message ``data`` carries, or why it is skipped; count either way.

        Args:
            data: One datagram, whole.
            addr: Its source address.
            now: This host's clock, seconds since the Unix epoch (keyed: for freshness).

        Never raises on any ``data``. Keyed, only an authentic datagram changes the state
        (its sender's window, loss count and name).
        """
        # The hot path: one call per datagram; no logging unless skipped.
        self.received += 1
        size = len(data)
        if size > self._max_bytes:
            logger.debug("skipped a datagram of %d bytes from %s", size, addr)
            return self._skip(Skip.OVERSIZED)
        if not size:
            return self._skip(Skip.EMPTY)
        own = self.own_address
        if addr[1] == own[1] and addr[0] == own[0] and not self._echo:
            # From the channel's own send socket: nobody else can send from that address.
            return self._skip(Skip.OWN)
        verifier = self._verifier
        if verifier is not None:
            return self._classify_signed(verifier, data, addr, now)
        try:
            text = data.decode()
        except UnicodeDecodeError:
            logger.debug("skipped a datagram that is not UTF-8 from %s", addr)
            return self._skip(Skip.INVALID)
        if data[0] == _OPEN_BRACE:
            return self._classify_json(text, addr)
        if text[-1] == "\n":
            # A terminal's line ending (nc -u, echo | socat): not part of the text.
            text = text[:-2] if text.endswith("\r\n") else text[:-1]
            if not text:
                return self._skip(Skip.EMPTY)
        return Message(text=text, sender=source(addr))

    def _skip(self, reason: Skip) -> Skip:
        self.skipped[reason] += 1
        return reason

    def _classify_json(self, text: str, addr: Address) -> Message | Skip:
        try:
            obj = parse_frame(text)
        except InvalidFrame:
            # "{" typed by a human, or any other non-chatcast datagram: plain text.
            return Message(text=text, sender=source(addr))
        if obj.get(INSTANCE_FIELD) == self._instance and not self._echo:
            return self._skip(Skip.OWN)
        try:
            message = decode_chat(obj)
        except InvalidFrame as exc:
            logger.debug("skipped an invalid JSON datagram from %s: %s", addr, exc)
            return self._skip(Skip.INVALID)
        if message.sender is None:
            message = dataclasses.replace(message, sender=source(addr))
        since = obj.get(RELIABLE_FIELD)
        if since is not None:
            self._mark_reliable(obj.get(INSTANCE_FIELD), 0, since, message.seq)
        return message

    def _mark_reliable(self, sender: object, epoch: int, since: object, seq: int | None) -> None:
        if (
            type(since) is int
            and since >= 0
            and isinstance(sender, str)
            and _SENDER_ID.fullmatch(sender)
            and seq is not None
            and seq >= 1
        ):
            self.origin = (sender, epoch, since)

    def classify_repair(self, data: bytes, addr: Address, now: float) -> Message | Skip:
        """Return the reliable sender's message a repair carries (``data`` without the
        repair marker), or why it is refused; counts nothing.

        Like :meth:`classify`, but no replay window (a repair is older than the window by
        nature; the reliable receiver drops what it has already) and no source-address
        check (repairs come from another socket). Sets :attr:`origin`; a message that is not
        from a reliable sender is ``INVALID``. Never raises.
        """
        self.origin = None
        if len(data) > self._max_bytes:
            return Skip.OVERSIZED
        verifier = self._verifier
        message: Message | Skip
        if verifier is not None:
            signed = verifier.verify(data)
            if not isinstance(signed, SignedDatagram):
                return _SKIP_FOR[signed]
            if signed.sender == self._own_sender and not self._echo:
                return Skip.OWN
            if abs(signed.time_ms - now * 1000) > self._guard.max_skew_ms:
                return Skip.STALE
            message = self._signed_message(signed, addr)
        else:
            try:
                obj = parse_frame(data.decode())
            except (UnicodeDecodeError, InvalidFrame):
                return Skip.INVALID
            if obj.get(INSTANCE_FIELD) == self._instance and not self._echo:
                return Skip.OWN
            try:
                message = decode_chat(obj)
            except InvalidFrame:
                return Skip.INVALID
            if message.sender is None:
                message = dataclasses.replace(message, sender=source(addr))
            since = obj.get(RELIABLE_FIELD)
            if since is not None:
                self._mark_reliable(obj.get(INSTANCE_FIELD), 0, since, message.seq)
        if self.origin is None:
            return Skip.INVALID
        return message

    def _classify_signed(
        self, verifier: Verifier, data: bytes, addr: Address, now: float
    ) -> Message | Skip:
        signed = verifier.verify(data)
        # isinstance() against the dataclass, not the enum: an enum's metaclass sends
        # isinstance() down its slow path, and this is once per datagram.
        if not isinstance(signed, SignedDatagram):
            return self._reject(_SKIP_FOR[signed], addr)
        if signed.sender == self._own_sender and not self._echo:
            return self._skip(Skip.OWN)
        now_ms = int(now * 1000)
        state = self._guard.accept(signed, now_ms)
        if not isinstance(state, SenderState):
            return self._reject(_SKIP_FOR[state], addr, (signed.time_ms - now_ms) / 1000)
        # Authentic and fresh: its sequence number is spent whatever the body holds.
        message = self._signed_message(signed, addr)
        if isinstance(message, Skip):
            self.skipped[message] += 1
            return message
        state.name = self._name
        return message

    def _signed_message(self, signed: SignedDatagram, addr: Address) -> Message | Skip:
        try:
            obj = parse_frame(signed.body.decode())
            name = obj.get("from")
            # The signed header's sequence number and time are the message's, whatever the
            # body says.
            obj["seq"] = signed.seq
            obj["ts"] = signed.time_ms / 1000
            if name is None:
                obj["from"] = source(addr)
            message = decode_chat(obj)
        except (UnicodeDecodeError, InvalidFrame) as exc:
            logger.debug("skipped a signed datagram with an invalid body from %s: %s", addr, exc)
            return Skip.INVALID
        self._name = name if isinstance(name, str) else None
        since = obj.get(RELIABLE_FIELD)
        if since is not None:
            self._mark_reliable(signed.sender.decode(), signed.epoch, since, signed.seq)
        return message

    def _reject(self, reason: Skip, addr: Address, offset: float = 0.0) -> Skip:
        self.skipped[reason] += 1
        if reason in self._warned or reason not in _WARN_ONCE:
            logger.debug("dropped a datagram from %s: %s", source(addr), reason.value)
            return reason
        self._warned.add(reason)
        hint = _WARN_ONCE[reason].replace("%offset", f"{offset:+.0f}")
        logger.warning("dropped a datagram from %s: %s", source(addr), hint)
        return reason
