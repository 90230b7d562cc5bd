"""Message ids and bounded history, sans I/O.

:class:`History` numbers every room message, private message and announcement with one
server-wide counter (so ids are unique on the server and strictly increasing in every room
and every conversation) and keeps the recent ones in :class:`Log` streams: one per room, one
for announcements to everyone, and one per resumable session for its private messages
(:mod:`~chatcast._core.sessions`).

Every stream is bounded by count, bytes and age, and all of them together by a total count
and total bytes, so ten thousand busy rooms cannot exhaust memory: the oldest message of the
whole server goes first. What was evicted is remembered as ids only, for a while, so that a
client resuming from an id that is no longer kept learns exactly how many messages it missed
(:meth:`Log.missed`) instead of silence.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import repeat
from typing import Final

from .wire import MESSAGE, Message

__all__ = [
    "ANNOUNCEMENTS",
    "Entry",
    "History",
    "HistoryLimits",
    "Log",
    "entry",
    "room_entries",
    "to_message",
]

#: One kept message, as a plain tuple (cheaper to make than a Message on the hot path):
#: ``(id, timestamp, kind, sender, text, room, to)``.
Entry = tuple[int, float, str, str, str, str | None, str | None]


def entry(message: Message) -> Entry:
    """``message`` (numbered) as an :data:`Entry`."""
    assert message.id is not None
    return (
        message.id,
        message.timestamp or 0.0,
        message.kind,
        message.sender or "",
        message.text,
        message.room,
        message.to,
    )


def to_message(item: Entry, *, history: bool = True) -> Message:
    """An :data:`Entry` as the :class:`Message` it was (marked as history by default)."""
    ident, timestamp, kind, sender, text, room, to = item
    return Message(text, sender or None, kind, room, timestamp, to, None, ident, history)


def room_entries(
    first_id: int, timestamp: float, sender: str, room: str, texts: list[str]
) -> list[Entry]:
    """A batch of room messages from ``sender`` as entries numbered from ``first_id`` (C loops)."""
    n = len(texts)
    return list(
        zip(
            range(first_id, first_id + n),
            repeat(timestamp, n),
            repeat(MESSAGE, n),
            repeat(sender, n),
            texts,
            repeat(room, n),
            repeat(None, n),
            strict=True,
        )
    )


#: The stream key of announcements to everyone (no room): not a valid room name.
ANNOUNCEMENTS: Final = "*"

# What one kept message costs beyond its text, for the byte limits: the Message object, its
# strings' headers, and the deque slots (measured with sys.getsizeof on CPython 3.11).
_OVERHEAD: Final = 200

# Evicted ids are remembered for this many seconds past the message's own limits, so a gap
# can be counted exactly for any client that could still resume (its last id is at most a
# resume window plus a heartbeat old), and at most this many per stream.
_EVICTED_KEEP: Final = 100_000


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryLimits:
    """How much history a server keeps.

    Attributes:
        messages: Messages kept per room (0: no history, ids only).
        bytes: Bytes of text kept per room.
        age: Seconds a message is kept (``None``: no age limit).
        total_messages: Messages kept across all rooms and conversations.
        total_bytes: Bytes kept across all rooms and conversations.
        horizon: Seconds the ids of evicted messages are remembered, to count gaps.
    """

    messages: int = 1000
    bytes: int = 1024 * 1024
    age: float | None = 24 * 3600.0
    total_messages: int = 100_000
    total_bytes: int = 64 * 1024 * 1024
    horizon: float = 900.0

    def __post_init__(self) -> None:
        for label, value in (
            ("history messages", self.messages),
            ("history bytes", self.bytes),
            ("history total messages", self.total_messages),
            ("history total bytes", self.total_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{label} must be an integer >= 0, got {value!r}")
        if self.age is not None and not self.age > 0:
            raise ValueError(f"history age must be > 0 seconds or None, got {self.age!r}")
        if not self.horizon >= 0:
            raise ValueError(f"history horizon must be >= 0, got {self.horizon!r}")


def cost(item: Entry) -> int:
    """What keeping ``item`` counts against the byte limits."""
    return len(item[4]) + len(item[3]) + _OVERHEAD


class Log:
    """One stream of messages in id order, bounded by its owner (:class:`History`).

    Args:
        key: The room, :data:`ANNOUNCEMENTS`, or a session's private stream.
    """

    __slots__ = ("_evicted", "_ids", "bytes", "key", "messages")

    def __init__(self, key: str) -> None:
        self.key = key
        self.messages: deque[Entry] = deque()
        self._ids: deque[int] = deque()  # the ids of ``messages``, for bisection
        self.bytes = 0
        # Ids of evicted messages and when they were stamped, oldest first.
        self._evicted: deque[tuple[int, float]] = deque()

    def __len__(self) -> int:
        return len(self.messages)

    @property
    def last_id(self) -> int:
        """The id of the newest message kept or evicted (0: none yet)."""
        if self._ids:
            return self._ids[-1]
        return self._evicted[-1][0] if self._evicted else 0

    def extend(self, items: list[Entry], size: int) -> None:
        """Keep ``items`` (ids above every id here) that cost ``size`` bytes in all."""
        self.messages.extend(items)
        self._ids.extend([item[0] for item in items])
        self.bytes += size

    def evict(self) -> Entry:
        """Drop the oldest message, remembering its id; return it."""
        item = self.messages.popleft()
        self._ids.popleft()
        self.bytes -= cost(item)
        self._evicted.append((item[0], item[1]))
        if len(self._evicted) > _EVICTED_KEEP:
            self._evicted.popleft()
        return item

    def forget_evicted(self, before: float) -> None:
        """Stop remembering evicted ids stamped before ``before``."""
        evicted = self._evicted
        while evicted and evicted[0][1] < before:
            evicted.popleft()

    def after(self, last: int, limit: int | None = None) -> list[Entry]:
        """The kept messages with an id above ``last``, oldest first (at most ``limit``)."""
        start = bisect.bisect_right(self._ids, last)
        end = len(self.messages) if limit is None else min(len(self.messages), start + limit)
        return [self.messages[i] for i in range(start, end)]

    def before(self, first: int | None, limit: int) -> list[Entry]:
        """The newest ``limit`` kept messages with an id below ``first`` (``None``: any),
        oldest first."""
        end = len(self.messages) if first is None else bisect.bisect_left(self._ids, first)
        start = max(0, end - limit)
        return [self.messages[i] for i in range(start, end)]

    def missed(self, last: int) -> int:
        """How many messages with an id above ``last`` are no longer kept (evicted).

        Exact while the evicted ids are remembered (:attr:`HistoryLimits.horizon`); a
        lower bound for a ``last`` older than that.
        """
        if not self._evicted or self._evicted[-1][0] <= last:
            return 0
        ids = [i for i, _ in self._evicted]
        return len(ids) - bisect.bisect_right(ids, last)

    def oldest(self) -> Entry | None:
        """The oldest kept message, or None."""
        return self.messages[0] if self.messages else None


class History:
    """Message ids and the bounded history of every room, announcement and conversation.

    Args:
        limits: The bounds.
        next_id: The first id to give (a store restores its counter here).
        on_evict: Called with each message the bounds push out (a store deletes it).
    """

    def __init__(
        self,
        limits: HistoryLimits,
        next_id: int = 1,
        on_evict: Callable[[Entry], object] | None = None,
    ) -> None:
        self.limits = limits
        self.next_id = next_id
        self._logs: dict[str, Log] = {}
        # Every kept message's stream and id, oldest first: what the totals evict.
        self._order: deque[tuple[Log, int]] = deque()
        self.total_messages = 0
        self.total_bytes = 0
        self._on_evict = on_evict
        #: Messages evicted by the bounds (statistics).
        self.evicted = 0

    # -- ids --------------------------------------------------------------------------------

    def take_ids(self, count: int) -> int:
        """Reserve ``count`` consecutive ids; return the first."""
        first = self.next_id
        self.next_id = first + count
        return first

    @property
    def latest_id(self) -> int:
        """The last id given (0: none yet)."""
        return self.next_id - 1

    # -- keeping ----------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """False when the limits keep nothing (ids are still given)."""
        return self.limits.messages > 0 and self.limits.total_messages > 0

    def log(self, key: str) -> Log | None:
        """The stream ``key``, if it holds (or held) anything."""
        return self._logs.get(key)

    def keep(
        self,
        key: str,
        items: list[Entry],
        size: int | None = None,
        *,
        per_stream: int | None = None,
    ) -> None:
        """Keep ``items`` (numbered, in id order) in stream ``key``, then apply the bounds.

        Args:
            key: The room, :data:`ANNOUNCEMENTS` or a session's stream.
            items: What to keep.
            size: What they cost (:func:`cost`), if the caller knows it already.
            per_stream: The stream's own count limit, if not the per-room one.
        """
        if not items:
            return
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = Log(key)
        if size is None:
            size = sum(map(cost, items))
        log.extend(items, size)
        self._order.extend(zip(repeat(log), [item[0] for item in items]))
        self.total_messages += len(items)
        self.total_bytes += size
        limits = self.limits
        limit = limits.messages if per_stream is None else per_stream
        while len(log) > limit or (log.bytes > limits.bytes and len(log) > 1):
            self._evict(log)
        while self.total_messages > limits.total_messages or (
            self.total_bytes > limits.total_bytes and self.total_messages > 1
        ):
            self._evict_oldest()

    def _evict(self, log: Log) -> None:
        before = log.bytes
        message = log.evict()
        self.total_messages -= 1
        self.total_bytes -= before - log.bytes
        self.evicted += 1
        if self._on_evict is not None:
            self._on_evict(message)

    def _evict_oldest(self) -> None:
        order = self._order
        while order:
            log, ident = order.popleft()
            oldest = log.oldest()
            if oldest is not None and oldest[0] == ident:
                self._evict(log)
                return
            # Already gone (evicted by its own stream's bound, or dropped): skip it.

    def expire(self, now_wall: float) -> None:
        """Apply the age limit and forget old evicted ids (call now and then)."""
        limits = self.limits
        for key, log in list(self._logs.items()):
            if limits.age is not None:
                cutoff = now_wall - limits.age
                while log.messages and log.messages[0][1] < cutoff:
                    self._evict(log)
            log.forget_evicted(now_wall - (limits.age or 0.0) - limits.horizon)
            if not log.messages and not log._evicted:
                del self._logs[key]
        if len(self._order) > 2 * self.total_messages + 1024:
            # Compact: only the entries of messages still kept, oldest first.
            kept = [(ident, log) for log in self._logs.values() for ident in log._ids]
            kept.sort(key=lambda entry: entry[0])
            self._order = deque((log, ident) for ident, log in kept)

    def drop(self, key: str) -> None:
        """Forget stream ``key`` entirely (a session that ended: its privates go)."""
        log = self._logs.pop(key, None)
        if log is None:
            return
        self.total_messages -= len(log)
        self.total_bytes -= log.bytes
        log.messages.clear()  # its entries in the eviction order are skipped from now on
        log._ids.clear()
        log.bytes = 0

    def restore(self, messages: Iterable[Message]) -> None:
        """Load messages from a store at start, in id order, each into its room's stream."""
        for message in messages:
            assert message.id is not None
            key = message.room if message.room is not None else ANNOUNCEMENTS
            self.keep(key, [entry(message)])
            self.next_id = max(self.next_id, message.id + 1)

    def rooms(self) -> list[str]:
        """The streams that hold messages."""
        return [key for key, log in self._logs.items() if log.messages]
