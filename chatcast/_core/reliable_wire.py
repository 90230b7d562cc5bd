"""Reliable multicast's control datagrams: heartbeats, leave notices, NACKs and repairs. Sans-I/O.

``docs/multicast.md`` ("Reliable multicast") is the normative description. Control traffic
goes to the *repair port* of the group (by default the data port + 1), never to the data port,
so plain UDP peers (the lab's ``receiver1.py``) and unreliable channels never see it.

* A **repair** is ``chatcast-repair1 `` followed by the original data datagram, byte for byte
  (JSON or signed form). A signed original carries its own tag, so a repair needs no signature
  of its own and cannot be forged by someone without the key.
* Every other control datagram is ``chatcast-ctl1 `` followed by one compact JSON object and,
  with a key, a space and the HMAC-SHA256 (64 lowercase hex digits) of every byte before it.
  Its ``time`` (milliseconds since the Unix epoch) is checked against the receiver's clock
  like a data datagram's, so an old one cannot be replayed more than 5 minutes later.

:class:`ControlCodec` encodes and decodes them; decoding never raises, it names the reason
a datagram was refused (the same names as a data datagram's skip counters).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from typing import Any, Final

from .datagram import MAX_CLOCK_SKEW_MS, check_key

__all__ = [
    "CONTROL_MARKER",
    "HEARTBEAT",
    "LEAVE",
    "MAX_CONTROL_BYTES",
    "MAX_NACK_RANGES",
    "MAX_NACK_SEQS",
    "NACK",
    "REPAIR_MARKER",
    "Control",
    "ControlCodec",
]

#: The first bytes of a repair; the original datagram follows.
REPAIR_MARKER: Final = b"chatcast-repair1 "
#: The first bytes of a heartbeat, leave notice or NACK.
CONTROL_MARKER: Final = b"chatcast-ctl1 "
#: An idle sender's "my last sequence number is ...".
HEARTBEAT: Final = "heartbeat"
#: A sender's "I am leaving; my last sequence number is ...".
LEAVE: Final = "leave"
#: A receiver's "please send these sequence numbers again".
NACK: Final = "nack"
_KINDS: Final = frozenset({HEARTBEAT, LEAVE, NACK})
#: Largest heartbeat, leave or NACK accepted (a NACK of 32 ranges of 20-digit numbers,
#: signed, is about 1,650 bytes).
MAX_CONTROL_BYTES: Final = 2048
#: Ranges one NACK may carry.
MAX_NACK_RANGES: Final = 32
#: Sequence numbers one NACK may ask for, over all its ranges.
MAX_NACK_SEQS: Final = 1024
_U64: Final = (1 << 64) - 1
_TAG_BYTES: Final = 65  # a space and 64 hex digits
_HEX: Final = frozenset(b"0123456789abcdef")


@dataclasses.dataclass(frozen=True, slots=True)
class Control:
    """One heartbeat, leave notice or NACK.

    Attributes:
        kind: :data:`HEARTBEAT`, :data:`LEAVE` or :data:`NACK`.
        sender: The data sender it is about (16 hex digits): the one speaking (heartbeat,
            leave) or the one asked (NACK).
        epoch: That sender's epoch (0 for unsigned senders).
        time_ms: When it was sent, by the sending host's clock.
        top: Heartbeat, leave: the last sequence number sent (0: none yet).
        low: Heartbeat, leave: the lowest sequence number the sender can still repair
            (``top + 1`` when it can repair none).
        since_ms: Heartbeat, leave: when the sender started (its clock).
        linger_ms: Leave: how long the sender still answers NACKs.
        ranges: NACK: inclusive ``(first, last)`` ranges of sequence numbers wanted.
        origin: NACK: the asking channel's id (so it can skip its own NACKs looped back).
    """

    kind: str
    sender: str
    epoch: int
    time_ms: int
    top: int = 0
    low: int = 0
    since_ms: int = 0
    linger_ms: int = 0
    ranges: tuple[tuple[int, int], ...] = ()
    origin: str = ""

    def seqs(self) -> int:
        """How many sequence numbers a NACK asks for."""
        return sum(last - first + 1 for first, last in self.ranges)


class ControlCodec:
    """Encodes and decodes control datagrams, signed under ``key`` when one is given.

    Args:
        key: The group key; ``None`` for unsigned control datagrams.
        max_skew_ms: Keyed: a control datagram stamped further than this from the
            receiver's clock is ``"stale"``.
    """

    def __init__(self, key: bytes | None = None, *, max_skew_ms: int = MAX_CLOCK_SKEW_MS) -> None:
        self._mac = None if key is None else hmac.new(check_key(key), digestmod=hashlib.sha256)
        self._max_skew_ms = max_skew_ms

    @property
    def signed(self) -> bool:
        """True if control datagrams are signed (and only signed ones accepted)."""
        return self._mac is not None

    def encode(self, control: Control) -> bytes:
        """Return the datagram carrying ``control``."""
        obj: dict[str, Any] = {
            "type": control.kind,
            "sender": control.sender,
            "epoch": control.epoch,
            "time": control.time_ms,
        }
        if control.kind == NACK:
            obj["ranges"] = [list(pair) for pair in control.ranges]
            obj["origin"] = control.origin
        else:
            obj["top"] = control.top
            obj["low"] = control.low
            obj["since"] = control.since_ms
            if control.kind == LEAVE:
                obj["linger"] = control.linger_ms
        data = CONTROL_MARKER + json.dumps(obj, separators=(",", ":")).encode()
        if self._mac is not None:
            mac = self._mac.copy()
            mac.update(data)
            data += b" " + mac.hexdigest().encode()
        return data

    def decode(self, data: bytes, now_ms: int) -> Control | str:
        """Return the control datagram in ``data``, or the name of why it was refused.

        Reasons: ``"oversized"``, ``"unsigned"`` (no marker, or keyed and no tag),
        ``"forged"`` (wrong tag), ``"stale"`` (keyed: stamped too far from ``now_ms``),
        ``"malformed"`` (anything else). Never raises.
        """
        if len(data) > MAX_CONTROL_BYTES:
            return "oversized"
        if not data.startswith(CONTROL_MARKER):
            return "unsigned"
        body = data[len(CONTROL_MARKER) :]
        if self._mac is not None:
            tag = body[-64:]
            if len(body) < _TAG_BYTES or body[-_TAG_BYTES] != 0x20 or not _HEX.issuperset(tag):
                return "unsigned"
            mac = self._mac.copy()
            mac.update(data[:-_TAG_BYTES])
            if not hmac.compare_digest(mac.hexdigest().encode(), tag):
                return "forged"
            body = body[:-_TAG_BYTES]
        try:
            obj = json.loads(body)
            control = _parse(obj)
        except (ValueError, TypeError, KeyError, RecursionError):
            return "malformed"
        if self._mac is not None and abs(control.time_ms - now_ms) > self._max_skew_ms:
            return "stale"
        return control


def _u64(obj: dict[str, Any], key: str) -> int:
    value = obj[key]
    if type(value) is not int or not 0 <= value <= _U64:
        raise ValueError(f"{key} must be an integer in 0..2**64-1")
    return value


def _sender(obj: dict[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str) or len(value) != 16 or not _HEX.issuperset(value.encode()):
        raise ValueError(f"{key} must be 16 lowercase hex digits")
    return value


def _parse(obj: Any) -> Control:
    if not isinstance(obj, dict) or obj.get("type") not in _KINDS:
        raise ValueError("not a control object")
    kind = obj["type"]
    sender, epoch, time_ms = _sender(obj, "sender"), _u64(obj, "epoch"), _u64(obj, "time")
    if kind == NACK:
        raw = obj["ranges"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_NACK_RANGES:
            raise ValueError("ranges must be a list of 1 to 32 pairs")
        ranges = []
        total = 0
        for pair in raw:
            if not isinstance(pair, list) or len(pair) != 2:
                raise ValueError("a range is a [first, last] pair")
            first, last = pair
            if type(first) is not int or type(last) is not int or not 1 <= first <= last <= _U64:
                raise ValueError("a range is 1 <= first <= last")
            total += last - first + 1
            if total > MAX_NACK_SEQS:
                raise ValueError("too many sequence numbers in one NACK")
            ranges.append((first, last))
        return Control(
            kind, sender, epoch, time_ms, ranges=tuple(ranges), origin=_sender(obj, "origin")
        )
    top, low, since = _u64(obj, "top"), _u64(obj, "low"), _u64(obj, "since")
    if low > top + 1:
        raise ValueError("low must be at most top + 1")
    linger = _u64(obj, "linger") if kind == LEAVE else 0
    return Control(kind, sender, epoch, time_ms, top=top, low=low, since_ms=since, linger_ms=linger)
