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
import heapq
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Final

from .wire import MESSAGE, Message

__all__ = [
    "ANNOUNCEMENTS",
    "Entry",
    "History",
    "HistoryLimits",
    "Log",
    "batch_cost",
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

# What one kept message costs beyond its text and sender, for the byte limits: the entry
# tuple, its strings' headers and the slots that index it (measured with sys.getsizeof).
_OVERHEAD: Final = 200

# The ids of evicted messages remembered per stream, to count a gap exactly, as a multiple
# of the stream's own limit (and at least this many): a client that comes back later than
# that learns a lower bound.
_REMEMBER_FACTOR: Final = 10
_REMEMBER_MIN: Final = 1000
# And at most this many in all streams together (8 bytes each): past it the streams that
# remember the most forget half.
_REMEMBER_TOTAL: Final = 1_000_000
# A stream that has held nothing for this long (seconds) is forgotten, remembered ids and all.
_FORGET_EMPTY: Final = 3600.0

_ID: Final = itemgetter(0)
_SENDER: Final = itemgetter(3)
_TEXT: Final = itemgetter(4)


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryLimits:
    """How much history a server keeps.

    Attributes:
        messages: Messages kept per room (0: no history, ids only).
        bytes: Bytes of text kept per room.
        age: Seconds a message is kept (``None``: no age limit).
        total_messages: Messages kept across all rooms and conversations.
        total_bytes: Bytes kept across all rooms and conversations.
    """

    messages: int = 1000
    bytes: int = 1024 * 1024
    age: float | None = 24 * 3600.0
    total_messages: int = 100_000
    total_bytes: int = 64 * 1024 * 1024

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


def cost(item: Entry) -> int:
    """What keeping ``item`` counts against the byte limits."""
    return len(item[4]) + len(item[3]) + _OVERHEAD


def batch_cost(sender: str, texts: list[str]) -> int:
    """What keeping the room messages ``texts`` from ``sender`` costs (the hub's hot path:
    the same as :func:`cost` summed, without making the entries first)."""
    return sum(map(len, texts)) + (len(sender) + _OVERHEAD) * len(texts)


def _cost_of(items: list[Entry]) -> int:
    """What keeping ``items`` costs, with C loops only."""
    return (
        sum(map(len, map(_TEXT, items)))
        + sum(map(len, map(_SENDER, items)))
        + _OVERHEAD * len(items)
    )


class Log:
    """One stream of messages in id order, bounded by its owner (:class:`History`).

    The kept messages are ``_entries[_head:]``; ``_ids`` holds the ids of the last evicted
    ones (remembered, to count gaps) followed by those of the kept ones, from ``_kept`` on.
    Appending and evicting are slices and C loops: no Python work per message.

    Args:
        key: The room, :data:`ANNOUNCEMENTS`, or a session's private stream.
        limit: The stream's count limit (how many evicted ids it remembers follows from it).
    """

    __slots__ = (
        "_entries",
        "_head",
        "_ids",
        "_kept",
        "_remember",
        "bytes",
        "dropped",
        "empty_since",
        "key",
    )

    def __init__(self, key: str, limit: int) -> None:
        self.key = key
        self._entries: list[Entry] = []
        self._head = 0
        self._ids = array("q")
        self._kept = 0
        self._remember = max(_REMEMBER_MIN, _REMEMBER_FACTOR * limit)
        self.bytes = 0
        self.dropped = False
        #: Wall-clock time since which it has held nothing (see :meth:`History.expire`).
        self.empty_since: float | None = None

    def __len__(self) -> int:
        return len(self._entries) - self._head

    @property
    def head_id(self) -> int:
        """The id of the oldest kept message (0 if none)."""
        return self._entries[self._head][0] if len(self._entries) > self._head else 0

    @property
    def last_id(self) -> int:
        """The id of the newest message kept or remembered (0 if none)."""
        return self._ids[-1] if self._ids else 0

    def extend(self, items: list[Entry], size: int) -> None:
        """Keep ``items`` (ids above every id here) that cost ``size`` bytes in all."""
        self._entries.extend(items)
        self._ids.extend(map(_ID, items))
        self.bytes += size

    @property
    def remembered(self) -> int:
        """How many ids of evicted messages it remembers."""
        return self._kept

    def skip(self, items: list[Entry]) -> None:
        """Note the ids of ``items`` without keeping them (history off): a resume is still
        told how many it missed."""
        self._ids.extend(map(_ID, items))
        self._kept += len(items)
        self._forget_remembered()

    def forget(self, count: int) -> None:
        """Forget the ``count`` oldest remembered ids."""
        count = min(count, self._kept)
        del self._ids[:count]
        self._kept -= count

    def clear(self) -> None:
        """Hold and remember nothing."""
        self._entries = []
        self._ids = array("q")
        self._head = self._kept = self.bytes = 0

    def _forget_remembered(self) -> None:
        extra = self._kept - self._remember
        if extra > self._remember // 4:
            del self._ids[:extra]
            self._kept -= extra

    def evict(self, count: int) -> int:
        """Drop the ``count`` oldest kept messages, remembering their ids; return the bytes
        they cost."""
        head = self._head
        freed = _cost_of(self._entries[head : head + count])
        self.bytes -= freed
        head += count
        self._kept += count
        if head > 256 and head * 2 > len(self._entries):
            del self._entries[:head]  # give the evicted entries back, now and then
            head = 0
        self._head = head
        self._forget_remembered()
        return freed

    def over(self, limit: int, byte_limit: int) -> int:
        """How many of the oldest must go to respect ``limit`` and ``byte_limit`` (the newest
        message is always kept).

        A stream may hold up to 1/16 more than ``limit`` before it is cut back to it: one
        eviction for a run of messages, not one per message.
        """
        size = len(self)
        count = size - limit if size > limit + (limit >> 4) else 0
        if self.bytes > byte_limit:
            entries, head = self._entries, self._head + count
            excess = self.bytes - _cost_of(entries[self._head : head]) - byte_limit
            while excess > 0 and head < len(entries) - 1:
                excess -= cost(entries[head])
                head += 1
            count = head - self._head
        return count

    def expired(self, cutoff: float) -> int:
        """How many of the oldest, in a row, were stamped before ``cutoff`` (stamps come from
        wall clocks, of other servers too: they are not trusted to be in order)."""
        entries, index, end = self._entries, self._head, len(self._entries)
        while index < end and entries[index][1] < cutoff:
            index += 1
        return index - self._head

    def after(self, last: int, limit: int | None = None) -> list[Entry]:
        """The kept messages with an id above ``last``, oldest first (at most ``limit``)."""
        index = max(bisect.bisect_right(self._ids, last), self._kept)
        start = self._head + index - self._kept
        end = len(self._entries) if limit is None else start + limit
        return self._entries[start:end]

    def before(self, first: int | None, limit: int) -> list[Entry]:
        """The newest ``limit`` kept messages with an id below ``first`` (``None``: any),
        oldest first."""
        if first is None:
            end = len(self._entries)
        else:
            end = self._head + max(0, bisect.bisect_left(self._ids, first) - self._kept)
        return self._entries[max(self._head, end - limit) : end]

    def missed(self, last: int) -> int:
        """How many messages with an id above ``last`` are no longer kept (evicted).

        Exact while their ids are remembered (ten times the stream's limit, at least 1000);
        a lower bound for a ``last`` older than that.
        """
        return max(0, self._kept - bisect.bisect_right(self._ids, last))

    def older_than(self, ident: int) -> int:
        """How many kept messages have an id below ``ident``."""
        return max(0, bisect.bisect_left(self._ids, ident) - self._kept)


class History:
    """Message ids and the bounded history of every room, announcement and conversation.

    Args:
        limits: The bounds.
        next_id: The first id to give (a store restores its counter here).
    """

    def __init__(self, limits: HistoryLimits, next_id: int = 1) -> None:
        self.limits = limits
        self.next_id = next_id
        self._logs: dict[str, Log] = {}
        # The streams by the id of their oldest message (lazily: an entry is checked when it
        # comes up): what the totals evict from first.
        self._oldest: list[tuple[int, int, Log]] = []
        self._pushes = 0
        self.total_messages = 0
        self.total_bytes = 0
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

    def seen(self, ident: int) -> None:
        """Note an id given elsewhere (by a cluster's log): :attr:`latest_id` is at least it."""
        if ident >= self.next_id:
            self.next_id = ident + 1

    # -- keeping ----------------------------------------------------------------------------

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
        limits = self.limits
        limit = limits.messages if per_stream is None else per_stream
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = Log(key, limit)
        if not limit or not limits.total_messages:
            log.skip(items)  # kept nowhere: the ids only
            return
        if size is None:
            size = _cost_of(items)
        if not len(log):
            self._push(log, items[0][0])
        log.extend(items, size)
        self.total_messages += len(items)
        self.total_bytes += size
        excess = log.over(limit, limits.bytes)
        if excess:
            self._evict(log, excess)
        if self.total_messages > limits.total_messages or self.total_bytes > limits.total_bytes:
            self._evict_oldest()

    def _push(self, log: Log, head_id: int) -> None:
        self._pushes += 1
        heap = self._oldest
        if len(heap) > 2 * len(self._logs) + 64:
            # Entries of dropped or emptied streams pile up: keep one per stream holding some.
            heap[:] = [(s.head_id, n, s) for n, s in enumerate(self._logs.values()) if len(s)]
            heapq.heapify(heap)
        heapq.heappush(heap, (head_id, self._pushes, log))

    def _evict(self, log: Log, count: int) -> None:
        freed = log.evict(count)
        self.total_messages -= count
        self.total_bytes -= freed
        self.evicted += count

    def _evict_oldest(self) -> None:
        """Evict the server's oldest messages until the totals are respected (at least the
        newest message stays)."""
        limits, heap = self.limits, self._oldest
        while heap and (
            self.total_messages > limits.total_messages
            or (self.total_bytes > limits.total_bytes and self.total_messages > 1)
        ):
            head_id, _, log = heap[0]
            if log.dropped or not len(log):
                heapq.heappop(heap)
                continue
            if log.head_id != head_id:  # evicted by its own bounds meanwhile
                self._pushes += 1
                heapq.heapreplace(heap, (log.head_id, self._pushes, log))
                continue
            # Up to the next stream's oldest message, and no more than the excess.
            count = max(1, self.total_messages - limits.total_messages)
            if len(heap) > 1:
                rival = min(entry[0] for entry in heap[1:3])  # the second smallest is here
                count = min(count, max(1, log.older_than(rival)))
            count = min(count, len(log))
            self._evict(log, count)
            self._pushes += 1
            if len(log):
                heapq.heapreplace(heap, (log.head_id, self._pushes, log))
            else:
                heapq.heappop(heap)

    def expire(self, now_wall: float) -> None:
        """Apply the age limit (call now and then); forget streams empty for an hour, and
        the oldest remembered ids past the total."""
        age = self.limits.age
        remembered = 0
        for key, log in list(self._logs.items()):
            if age is not None and len(log):
                count = log.expired(now_wall - age)
                if count:
                    self._evict(log, count)
            if len(log):
                log.empty_since = None
            elif log.empty_since is None:
                log.empty_since = now_wall
            elif now_wall - log.empty_since > _FORGET_EMPTY:
                log.dropped = True
                del self._logs[key]
                continue
            remembered += log.remembered
        if remembered > _REMEMBER_TOTAL:
            for log in sorted(self._logs.values(), key=lambda s: -s.remembered):
                if remembered <= _REMEMBER_TOTAL // 2:
                    break
                half = log.remembered // 2
                log.forget(half)
                remembered -= half

    def drop(self, key: str) -> None:
        """Forget stream ``key`` entirely (a session that ended: its privates go)."""
        log = self._logs.pop(key, None)
        if log is None:
            return
        self.total_messages -= len(log)
        self.total_bytes -= log.bytes
        log.dropped = True
        log.clear()  # its place in the heap of oldest streams holds nothing now

    def restore(self, messages: Iterable[Message]) -> None:
        """Load messages from a store at start, in id order, each into its room's stream."""
        for message in messages:
            assert message.id is not None
            key = message.room if message.room is not None else ANNOUNCEMENTS
            self.keep(key, [entry(message)])
            self.next_id = max(self.next_id, message.id + 1)

    def rooms(self) -> list[str]:
        """The streams that hold messages."""
        return [key for key, log in self._logs.items() if len(log)]
