"""Signed multicast datagrams: the format, signing, verification and replay protection.

Sans-I/O: no sockets, no asyncio, no clock (callers pass the time in). ``docs/multicast.md``
("Datagram format", "Signed datagrams") is the normative description; in short, a signed
datagram is ASCII header, JSON body, ASCII tag::

    chatcast-hmac1 SENDER EPOCH SEQ TIME LEN BODY TAG
    |   marker    |16 hex|16 hex|16 hex|16 hex|4 hex| LEN bytes |64 hex|

fields separated by one space, and ``TAG`` the lowercase hex HMAC-SHA256, under the group
key, of every byte before it. The header is fixed-width, so a receiver finds the body and the
tag by position and checks the tag over exactly the bytes it then parses.

* :class:`Signer` makes them; :class:`Verifier` checks structure and tag (stateless);
  :class:`ReplayGuard` checks freshness: the timestamp against the receiver's clock, and the
  sequence number against a 64-wide sliding window per sender and epoch (RFC 4303, section
  3.4.3), counting gaps as loss.
* Every rejection is a :class:`Drop` value, never an exception: a receiver counts it and moves
  on.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import hashlib
import hmac
import re
from typing import Final

__all__ = [
    "HEADER_BYTES",
    "MARKER",
    "MAX_CLOCK_SKEW_MS",
    "MAX_SENDERS",
    "OVERHEAD",
    "TRAILER_BYTES",
    "WINDOW",
    "Drop",
    "ReplayGuard",
    "SenderState",
    "SignedDatagram",
    "Signer",
    "Verifier",
    "check_key",
]

#: The first bytes of every signed datagram; the ``1`` is the format's version.
MARKER: Final = b"chatcast-hmac1 "
#: Marker, then sender, epoch, sequence number and time (16 hex digits each) and the body
#: length (4 hex digits), each followed by one space.
HEADER_BYTES: Final = len(MARKER) + 4 * 17 + 5
#: A space and the 64 hex digits of the HMAC-SHA256 tag.
TRAILER_BYTES: Final = 1 + 64
#: What signing adds to the body: 153 bytes.
OVERHEAD: Final = HEADER_BYTES + TRAILER_BYTES
#: Width of the replay window, in sequence numbers (IPsec's default, RFC 4303).
WINDOW: Final = 64
#: Senders a receiver keeps replay state for; the least recently heard is forgotten first.
MAX_SENDERS: Final = 1024
#: A datagram stamped further than this from the receiver's clock is stale: 5 minutes, as
#: Kerberos' default clock skew (RFC 4120, section 10).
MAX_CLOCK_SKEW_MS: Final = 300_000

_U64: Final = (1 << 64) - 1
_MAX_BODY: Final = 0xFFFF
_FULL_WINDOW: Final = (1 << WINDOW) - 1
_SPACE: Final = 0x20
# Lowercase only, fixed width: each header has exactly one spelling.
_HEADER: Final = re.compile(
    re.escape(MARKER)
    + rb"([0-9a-f]{16}) ([0-9a-f]{16}) ([0-9a-f]{16}) ([0-9a-f]{16}) ([0-9a-f]{4}) "
)
_SENDER_ID: Final = re.compile(r"[0-9a-f]{16}")


class Drop(enum.Enum):
    """Why a datagram was not accepted; the value is the name of its counter."""

    #: Does not start with the marker: plain text, unsigned JSON, anything else.
    UNSIGNED = "unsigned"
    #: Starts with the marker but is shorter than its header says.
    TRUNCATED = "truncated"
    #: Starts with the marker but the header is not as specified, or bytes follow the tag,
    #: or (signed, so only from a key holder) its sequence number is 0.
    MALFORMED = "malformed"
    #: Well-formed, but the tag is wrong: another key, or altered on the way.
    FORGED = "forged"
    #: Authentic, but stamped more than :data:`MAX_CLOCK_SKEW_MS` from the receiver's clock.
    STALE = "stale"
    #: Authentic, but its sequence number was accepted already, is older than the window, or
    #: its epoch is older than the sender's newest.
    REPLAYED = "replayed"


@dataclasses.dataclass(frozen=True, slots=True)
class SignedDatagram:
    """An authentic datagram, as :meth:`Verifier.verify` returns it.

    Attributes:
        sender: The sender id: 16 lowercase hex digits (ASCII bytes).
        epoch: The sender's epoch; a greater one means the sender restarted.
        seq: The sequence number within the epoch, from 1.
        time_ms: When it was sent: milliseconds since the Unix epoch, by the sender's clock.
        body: The body (the JSON form of the message, UTF-8), not yet parsed.
    """

    sender: bytes
    epoch: int
    seq: int
    time_ms: int
    body: bytes


def check_key(key: object) -> bytes:
    """Return ``key`` as the bytes to sign with.

    Args:
        key: ``bytes`` (or ``bytearray``) used as is, or a ``str``, encoded as UTF-8.

    Raises:
        TypeError: Not bytes or str.
        ValueError: Empty, or a str that is not encodable as UTF-8.
    """
    if isinstance(key, str):
        try:
            key = key.encode()
        except UnicodeEncodeError:
            raise ValueError("key must be encodable as UTF-8 (it holds a lone surrogate)") from None
    elif isinstance(key, bytearray):
        key = bytes(key)
    elif not isinstance(key, bytes):
        raise TypeError(f"key must be bytes or str, got {type(key).__name__}")
    if not key:
        raise ValueError("key must not be empty (use e.g. secrets.token_urlsafe(16))")
    return key


def _new_mac(key: bytes) -> hmac.HMAC:
    # Keyed once; each datagram copies it, which skips re-hashing the key (RFC 2104 ipad and
    # opad blocks) every time.
    return hmac.new(check_key(key), digestmod=hashlib.sha256)


class Signer:
    """Makes the signed datagrams of one sender and epoch.

    Args:
        key: The group key (see :func:`check_key`).
        sender: The sender id, 16 lowercase hex digits.
        epoch: The epoch, 0 to 2**64 - 1; a sender that keeps its id across restarts must use
            a greater one each time it starts its sequence numbers again at 1.

    Raises:
        ValueError: A bad key, sender id or epoch.
    """

    def __init__(self, key: bytes, sender: str, epoch: int) -> None:
        if not isinstance(sender, str) or not _SENDER_ID.fullmatch(sender):
            raise ValueError(f"sender must be 16 lowercase hex digits, got {sender!r}")
        _check_u64("epoch", epoch)
        self._mac = _new_mac(key)
        self._prefix = MARKER + b"%s %016x " % (sender.encode(), epoch)

    def sign(self, seq: int, time_ms: int, body: bytes) -> bytes:
        """Return the signed datagram carrying ``body``.

        Args:
            seq: The sequence number, 1 to 2**64 - 1.
            time_ms: Milliseconds since the Unix epoch, 0 to 2**64 - 1.
            body: At most 65535 bytes.

        Raises:
            ValueError: A value out of range.
        """
        if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= _U64:
            raise ValueError(f"seq must be in 1..{_U64}, got {seq!r}")
        _check_u64("time_ms", time_ms)
        if len(body) > _MAX_BODY:
            raise ValueError(f"body must be at most {_MAX_BODY} bytes, got {len(body)}")
        signed = b"%s%016x %016x %04x %s " % (self._prefix, seq, time_ms, len(body), body)
        mac = self._mac.copy()
        mac.update(signed)
        return signed + mac.hexdigest().encode()


class Verifier:
    """Checks datagrams' structure and tag under one key. Holds no per-datagram state.

    Args:
        key: The group key (see :func:`check_key`).
    """

    def __init__(self, key: bytes) -> None:
        self._mac = _new_mac(key)

    def verify(self, data: bytes) -> SignedDatagram | Drop:
        """Return the authentic datagram in ``data``, or why it is not one.

        The checks, in order (the first that fails decides): the marker (else
        ``UNSIGNED``); at least a header and a tag (else ``TRUNCATED``); the header's syntax
        (else ``MALFORMED``); the length the header gives (shorter: ``TRUNCATED``, longer:
        ``MALFORMED``); the space before the tag (``MALFORMED``); the tag (``FORGED``); a
        sequence number of at least 1 (``MALFORMED``). Never raises.
        """
        if not data.startswith(MARKER):
            return Drop.UNSIGNED
        size = len(data)
        if size < OVERHEAD:
            return Drop.TRUNCATED
        match = _HEADER.match(data)
        if match is None:
            return Drop.MALFORMED
        sender, epoch, seq, time_ms, length = match.groups()
        expected = OVERHEAD + int(length, 16)
        if size != expected:
            return Drop.TRUNCATED if size < expected else Drop.MALFORMED
        if data[-TRAILER_BYTES] != _SPACE:
            return Drop.MALFORMED
        mac = self._mac.copy()
        mac.update(memoryview(data)[:-64])
        if not hmac.compare_digest(mac.hexdigest().encode(), data[-64:]):
            return Drop.FORGED
        number = int(seq, 16)
        if not number:
            return Drop.MALFORMED
        return SignedDatagram(
            sender, int(epoch, 16), number, int(time_ms, 16), data[HEADER_BYTES:-TRAILER_BYTES]
        )


@dataclasses.dataclass(slots=True)
class SenderState:
    """What a :class:`ReplayGuard` remembers of one sender.

    Attributes:
        sender: The sender id (ASCII hex bytes).
        epoch: Its newest epoch seen.
        top: The highest sequence number accepted in that epoch.
        window: Bit ``i`` set: sequence number ``top - i`` is spent (accepted, or from before
            this receiver first heard the epoch).
        received: Datagrams accepted from this sender, all epochs.
        lost: Sequence numbers skipped and not received since, all epochs.
        name: The name (``"from"``) of its latest message; set by the caller.
    """

    sender: bytes
    epoch: int
    top: int
    window: int = _FULL_WINDOW
    received: int = 1
    lost: int = 0
    name: str | None = None


class ReplayGuard:
    """Freshness of authentic datagrams: timestamps, replay windows, loss counts.

    Per sender it keeps the newest epoch and a window of the last :data:`WINDOW` sequence
    numbers. The first datagram of an epoch is accepted and spends everything below it (so
    nothing older than a receiver's first contact is accepted); a gap is counted as lost,
    and a late datagram that fills it, still inside the window, is accepted once and no
    longer counted lost. A greater epoch from a known sender is a restart: its window starts
    again. A smaller one is replayed.

    State is made only for authentic datagrams (the caller verifies first), and for at most
    ``max_senders`` senders; the least recently heard is forgotten first.

    Args:
        max_senders: Senders to keep state for, at least 1.
        max_skew_ms: Largest accepted difference between a datagram's time and ``now_ms``.

    Attributes:
        lost: Sequence numbers skipped and not received since, over all senders (including
            forgotten ones).
    """

    def __init__(
        self, *, max_senders: int = MAX_SENDERS, max_skew_ms: int = MAX_CLOCK_SKEW_MS
    ) -> None:
        if max_senders < 1:
            raise ValueError(f"max_senders must be >= 1, got {max_senders}")
        self.max_senders = max_senders
        self.max_skew_ms = max_skew_ms
        self.lost = 0
        self._senders: collections.OrderedDict[bytes, SenderState] = collections.OrderedDict()

    def accept(self, datagram: SignedDatagram, now_ms: int) -> SenderState | Drop:
        """Accept ``datagram`` (return its sender's state) or say why not (``STALE``,
        ``REPLAYED``). Accepting spends its sequence number."""
        if abs(datagram.time_ms - now_ms) > self.max_skew_ms:
            return Drop.STALE
        senders = self._senders
        sender, epoch, seq = datagram.sender, datagram.epoch, datagram.seq
        state = senders.get(sender)
        if state is None:
            state = senders[sender] = SenderState(sender, epoch, seq)
            if len(senders) > self.max_senders:
                senders.popitem(last=False)
            return state
        senders.move_to_end(sender)
        if epoch != state.epoch:
            if epoch < state.epoch:
                return Drop.REPLAYED
            state.epoch, state.top, state.window = epoch, seq, _FULL_WINDOW
        elif seq > state.top:
            shift = seq - state.top
            state.window = ((state.window << shift) | 1) & _FULL_WINDOW if shift < WINDOW else 1
            state.top = seq
            if shift > 1:
                state.lost += shift - 1
                self.lost += shift - 1
        else:
            offset = state.top - seq
            if offset >= WINDOW:
                return Drop.REPLAYED
            bit = 1 << offset
            if state.window & bit:
                return Drop.REPLAYED
            state.window |= bit
            state.lost -= 1  # a gap counted when the window jumped past it
            self.lost -= 1
        state.received += 1
        return state

    def senders(self) -> list[SenderState]:
        """The senders remembered now, least recently heard first (live objects)."""
        return list(self._senders.values())


def _check_u64(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64:
        raise ValueError(f"{what} must be in 0..{_U64}, got {value!r}")
