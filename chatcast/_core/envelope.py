"""The backplane envelope: one event crossing from one server to the others, sans I/O.

A compact JSON object (``docs/scaling.md``). :class:`Envelope` is public as
``chatcast.backplane.Envelope``; the transport (Redis) lives in :mod:`chatcast.backplane`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ANNOUNCEMENT",
    "BATCH",
    "JOIN",
    "KINDS",
    "LEAVE",
    "MODERATION",
    "NICK",
    "PRIVATE",
    "RESUMED",
    "Envelope",
]

#: Envelope kinds.
BATCH: Final = "batch"  # room messages: texts from one sender in one room
PRIVATE: Final = "private"
ANNOUNCEMENT: Final = "announcement"
JOIN: Final = "join"
LEAVE: Final = "leave"
NICK: Final = "nick"
#: A moderation action (#14): ``texts`` holds it as one JSON object (a ban, an unban, a
#: kick, a mute, an unmute or a topic), ``sender`` who took it.
MODERATION: Final = "mod"
#: A member of the origin server resumed its session there (``sender``: its name): a server
#: still holding that name for a ghost connection lets go of it.
RESUMED: Final = "resumed"
#: Every envelope kind.
KINDS: Final = frozenset({BATCH, PRIVATE, ANNOUNCEMENT, JOIN, LEAVE, NICK, MODERATION, RESUMED})


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event crossing the backplane, from the server ``origin``.

    Attributes:
        origin: The id of the server it comes from.
        kind: ``"batch"`` (room messages), ``"private"``, ``"announcement"``, ``"join"``,
            ``"leave"`` or ``"nick"``.
        room: The room, where there is one.
        sender: The sender's name (the old name, for ``"nick"``).
        texts: The texts (one per message for a batch; the new name for ``"nick"``; the
            reason for ``"leave"``).
        to: The recipient of a private message.
        ts: The server's timestamp.
        seq: The origin server's own sequence number for it (a backplane log uses it to
            append each envelope once, however often it is retried).
        id: The id of its first message, given by the backplane's log (not part of the
            wire form: the log keeps it beside the envelope).
    """

    origin: str
    kind: str
    room: str | None = None
    sender: str | None = None
    texts: tuple[str, ...] = ()
    to: str | None = None
    ts: float | None = None
    seq: int | None = None
    id: int | None = None

    def encode(self) -> bytes:
        """The wire form: one compact JSON object."""
        obj: dict[str, Any] = {"o": self.origin, "k": self.kind, "t": list(self.texts)}
        for key, value in (
            ("r", self.room),
            ("s", self.sender),
            ("to", self.to),
            ("ts", self.ts),
            ("q", self.seq),
        ):
            if value is not None:
                obj[key] = value
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> Envelope:
        """Parse the wire form.

        Raises:
            ValueError: Not an envelope (bad JSON, unknown kind, wrong field types).
        """
        obj = json.loads(data)
        if not isinstance(obj, dict) or obj.get("k") not in KINDS:
            raise ValueError("not a chatcast envelope")
        texts = obj.get("t", [])
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError("envelope texts must be strings")
        fields = {key: obj.get(key) for key in ("o", "r", "s", "to")}
        if not isinstance(fields["o"], str) or not all(
            value is None or isinstance(value, str) for value in fields.values()
        ):
            raise ValueError("envelope fields must be strings")
        ts = obj.get("ts")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float)):
            raise ValueError("envelope ts must be a number")
        seq = obj.get("q")
        if seq is not None and (seq.__class__ is not int or seq < 0):
            raise ValueError("envelope seq must be a non-negative integer")
        return cls(
            origin=fields["o"],
            kind=obj["k"],
            room=fields["r"],
            sender=fields["s"],
            texts=tuple(texts),
            to=fields["to"],
            ts=None if ts is None else float(ts),
            seq=seq,
        )
