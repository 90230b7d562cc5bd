"""Moderation records, sans I/O: bans, mutes and topics as values (issue #14).

Each record is a frozen dataclass that turns into a plain dict (:meth:`BanRecord.to_dict`) and
back (:func:`parse_record`, which checks every field), so a store can keep them and the
backplane can carry them. Times are wall-clock seconds, so a record means the same after a
restart and on another server.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..exceptions import InvalidFrame
from . import commands as proto

__all__ = [
    "BanRecord",
    "MuteRecord",
    "Record",
    "TopicRecord",
    "format_duration",
    "normalize_address",
    "parse_record",
]


def normalize_address(address: str) -> str:
    """The canonical form of an IP address (``::ffff:10.0.0.5`` is ``10.0.0.5``).

    Raises:
        InvalidFrame: Not an IP address.
    """
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        raise InvalidFrame(f"not an IP address: {address[:64]!r}") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def format_duration(seconds: float) -> str:
    """``90`` is ``1m30s``, ``7200`` is ``2h``: the largest two units, to the second."""
    left = max(1, round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
        if len(parts) == 2:
            break
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class BanRecord:
    """One ban. It matches a connection by its name, its address, or either.

    Attributes:
        name: The banned name as given (matched as names are compared), or ``None``.
        address: The banned IP address (canonical form), or ``None``.
        until: Wall-clock seconds when it expires, or ``None`` for a ban until lifted.
        reason: Why, as the banned member is told.
        by: Who banned (an operator's name, or ``"server"``).
        at: Wall-clock seconds when it was made.
    """

    name: str | None
    address: str | None
    until: float | None
    reason: str
    by: str
    at: float

    def expired(self, now: float) -> bool:
        """Whether the ban is over at wall-clock time ``now``."""
        return self.until is not None and now >= self.until

    def target(self) -> str:
        """``bob``, ``@10.0.0.5`` or ``bob (@10.0.0.5)``."""
        if self.name is None:
            return f"@{self.address}"
        return self.name if self.address is None else f"{self.name} (@{self.address})"

    def refusal(self, now: float) -> str:
        """What the banned member is told: ``banned by alice (9m58s left): spamming``."""
        left = "" if self.until is None else f" ({format_duration(self.until - now)} left)"
        return f"banned by {self.by}{left}" + (f": {self.reason}" if self.reason else "")

    def describe(self, now: float) -> str:
        """One line for ``/bans``."""
        left = "until lifted" if self.until is None else format_duration(self.until - now)
        reason = f": {self.reason}" if self.reason else ""
        return f"{self.target()}, {left}, by {self.by}{reason}"

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict (``"type": "ban"``), for a store or the backplane."""
        return {"type": "ban", **asdict(self)}


@dataclass(frozen=True, slots=True)
class MuteRecord:
    """``name`` may not speak in ``room`` (set by ``by`` at ``at``, for ``reason``)."""

    room: str
    name: str
    reason: str
    by: str
    at: float

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict (``"type": "mute"``)."""
        return {"type": "mute", **asdict(self)}


@dataclass(frozen=True, slots=True)
class TopicRecord:
    """The topic of ``room`` is ``text`` (set by ``by`` at ``at``)."""

    room: str
    text: str
    by: str
    at: float

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict (``"type": "topic"``)."""
        return {"type": "topic", **asdict(self)}


Record = BanRecord | MuteRecord | TopicRecord

_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "ban": {
        "name": (str, type(None)),
        "address": (str, type(None)),
        "until": (int, float, type(None)),
        "reason": (str,),
        "by": (str,),
        "at": (int, float),
    },
    "mute": {"room": (str,), "name": (str,), "reason": (str,), "by": (str,), "at": (int, float)},
    "topic": {"room": (str,), "text": (str,), "by": (str,), "at": (int, float)},
}


def parse_record(obj: Mapping[str, Any]) -> Record:
    """The record a dict made by ``to_dict()`` stands for (extra keys are ignored).

    Raises:
        ValueError: Not such a dict: an unknown ``"type"``, a field missing or of the wrong
            type, a bad name, room or address, a ban on neither a name nor an address.
    """
    kind = obj.get("type")
    fields = _FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise ValueError(f"unknown record type {kind!r}")
    values: dict[str, Any] = {}
    for key, types in fields.items():
        value = obj.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise ValueError(f"a {kind} record needs {key!r} of type {types[0].__name__}")
        values[key] = value
    try:
        if kind == "ban":
            if values["name"] is not None:
                proto.check_name(values["name"])
            if values["address"] is not None:
                values["address"] = normalize_address(values["address"])
            if values["name"] is None and values["address"] is None:
                raise ValueError("a ban needs a name or an address")
            return BanRecord(**values)
        proto.check_name(values["room"], "room")
        if kind == "mute":
            proto.check_name(values["name"])
            return MuteRecord(**values)
        return TopicRecord(**values)
    except InvalidFrame as exc:
        raise ValueError(str(exc)) from None
