"""The history limits applied on disk, for :class:`chatcast.store.SQLiteStore`'s writer.

:class:`Retention` keeps the writer's view of what the ``messages`` table holds (per stream:
how many messages, what they cost against the byte limits, and an id no higher than its
oldest; the totals), so that checking the limits after a batch costs no query, and deletes
what the limits push out: per stream
its oldest beyond ``messages`` or ``bytes``, then everything older than ``age``, then the
oldest of the whole store beyond ``total_messages`` or ``total_bytes`` (as
:class:`~chatcast._core.history.History` does in memory). It runs inside the writer's
transaction; after a failed one, :meth:`Retention.load` reads the counts again.

The table has no index but its primary key, the id (an index on the stream would double the
cost of every insert and delete): a stream's oldest messages are found by scanning ids from
the stream's lower bound, which for a busy room is where its last trim stopped, so the scan
covers only what arrived since.

:func:`keep_newest` and :func:`count_added` look at a batch in C loops (``Counter``,
``map``): the writer thread holds the GIL as little as it can, for the event loop's sake.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import Final

from ._core.history import ANNOUNCEMENTS, Entry, HistoryLimits, cost

__all__ = ["OVERHEAD", "Retention", "count_added", "keep_newest"]

#: What a message costs against the byte limits beyond its text and sender (as in memory).
OVERHEAD: Final = cost((0, 0.0, "", "", "", None, None))

_ROOM, _SENDER, _TEXT = itemgetter(5), itemgetter(3), itemgetter(4)


def keep_newest(batch: list[Entry], limit: int) -> list[Entry]:
    """``batch`` without the messages that are not among the newest ``limit`` of their room:
    those the per-room count limit would delete in the same transaction."""
    rooms = Counter(map(_ROOM, batch))
    if max(rooms.values()) <= limit:
        return batch
    if len(rooms) == 1:
        return batch[-limit:] if limit else []
    seen: Counter[str | None] = Counter()
    kept = []
    for item in reversed(batch):
        if seen[item[5]] < limit:
            seen[item[5]] += 1
            kept.append(item)
    kept.reverse()
    return kept


def count_added(batch: list[Entry]) -> dict[str, list[int]]:
    """What ``batch`` adds to each stream: ``[count, bytes]`` (in C loops when it is one
    room's batch, as a busy room's are)."""
    if not batch:
        return {}
    rooms = Counter(map(_ROOM, batch))
    if len(rooms) == 1:
        ((room, count),) = rooms.items()
        size = sum(map(len, map(_TEXT, batch))) + sum(map(len, map(_SENDER, batch)))
        return {room if room is not None else ANNOUNCEMENTS: [count, size + count * OVERHEAD]}
    added: dict[str, list[int]] = {}
    for item in batch:
        stream = item[5] if item[5] is not None else ANNOUNCEMENTS
        entry = added.setdefault(stream, [0, 0])
        entry[0] += 1
        entry[1] += cost(item)
    return added


class Retention:
    """What the ``messages`` table holds, and the deletes that keep it within ``limits``.

    Args:
        conn: The store's connection (used inside the caller's transaction).
        limits: The bounds.
    """

    def __init__(self, conn: sqlite3.Connection, limits: HistoryLimits) -> None:
        self.conn = conn
        self.limits = limits
        #: Per stream ``[count, bytes, low]``: ``low`` is at most its oldest id.
        self.streams: dict[str, list[int]] = {}
        self.total_count = 0
        self.total_bytes = 0

    def load(self) -> None:
        """Read the counts from the table (at open, and after a failed transaction)."""
        self.streams = {
            stream: [count, int(size), low]
            for stream, count, size, low in self.conn.execute(
                "SELECT stream, COUNT(*), TOTAL(cost), MIN(id) FROM messages GROUP BY stream"
            )
        }
        self.total_count = sum(entry[0] for entry in self.streams.values())
        self.total_bytes = sum(entry[1] for entry in self.streams.values())

    def clear(self) -> None:
        """Forget the counts (they could not be read; the next failure reloads them)."""
        self.streams = {}
        self.total_count = self.total_bytes = 0

    def add(self, added: dict[str, list[int]], low: int) -> None:
        """Count what a batch inserted (:func:`count_added`); ``low``: its lowest id."""
        streams = self.streams
        for stream, (count, size) in added.items():
            entry = streams.get(stream)
            if entry is None:
                streams[stream] = [count, size, low]
            else:
                entry[0] += count
                entry[1] += size
            self.total_count += count
            self.total_bytes += size

    def trim(self, now: float, touched: Iterable[str] | None = None) -> None:
        """Apply every limit: per stream (the ``touched`` ones, or all), the age at ``now``
        (seconds since the epoch), then the totals."""
        limits = self.limits
        streams = self.streams
        for stream in list(streams if touched is None else touched):
            entry = streams.get(stream)
            if entry is not None and (
                entry[0] > limits.messages or (entry[1] > limits.bytes and entry[0] > 1)
            ):
                self._trim_stream(stream, entry)
        if limits.age is not None:
            cutoff = now - limits.age
            self._trim_oldest(lambda _count, _size, ts: ts < cutoff)
        if self.total_count > limits.total_messages or (
            self.total_bytes > limits.total_bytes and self.total_count > 1
        ):
            self._trim_oldest(
                lambda count, size, _ts: (
                    count > limits.total_messages or (size > limits.total_bytes and count > 1)
                )
            )

    def _trim_stream(self, stream: str, entry: list[int]) -> None:
        """Delete a stream's oldest messages until it is within its count and byte limits."""
        limits = self.limits
        count, size, low = entry
        cut = None
        rows = self.conn.execute(
            "SELECT id, cost FROM messages WHERE id >= ? AND stream = ? ORDER BY id", (low, stream)
        )
        for ident, weight in rows:
            if not (count > limits.messages or (size > limits.bytes and count > 1)):
                break
            cut = ident
            count -= 1
            size -= weight
        rows.close()
        if cut is None:
            return
        self.conn.execute(
            "DELETE FROM messages WHERE id BETWEEN ? AND ? AND stream = ?", (low, cut, stream)
        )
        self.total_count -= entry[0] - count
        self.total_bytes -= entry[1] - size
        if count:
            entry[0], entry[1], entry[2] = count, size, cut + 1
        else:
            del self.streams[stream]

    def _trim_oldest(self, over: Callable[[int, int, float], bool]) -> None:
        """Delete the oldest messages of all streams, in id order, while ``over`` holds.

        ``over(total_count, total_bytes, ts)`` is asked for the oldest message left. Ids
        are given in time order, so the oldest by id are the oldest by age too.
        """
        count, size = self.total_count, self.total_bytes
        removed: dict[str, list[int]] = {}
        cut = None
        rows = self.conn.execute("SELECT id, stream, cost, IFNULL(ts, 0) FROM messages ORDER BY id")
        for ident, stream, weight, ts in rows:
            if not over(count, size, ts):
                break
            cut = ident
            count -= 1
            size -= weight
            entry = removed.setdefault(stream, [0, 0])
            entry[0] += 1
            entry[1] += weight
        rows.close()
        if cut is None:
            return
        self.conn.execute("DELETE FROM messages WHERE id <= ?", (cut,))
        self.total_count, self.total_bytes = count, size
        for stream, (gone, weight) in removed.items():
            entry = self.streams[stream]
            entry[0] -= gone
            entry[1] -= weight
            entry[2] = cut + 1
            if entry[0] <= 0:
                del self.streams[stream]
