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
from collections.abc import Iterable
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
        (seconds since the epoch), then the totals.

        Each limit is found and applied by a few statements that each do their whole job in
        one step (``LIMIT``, ``GROUP BY``), not a Python loop over rows: every row fetched is
        a GIL hand-over the event loop may have to wait for. Only the byte limits, when the
        count limits leave them exceeded (messages of several KiB), walk row by row.
        """
        limits = self.limits
        streams = self.streams
        for stream in list(streams if touched is None else touched):
            entry = streams.get(stream)
            if entry is not None and (
                entry[0] > limits.messages or (entry[1] > limits.bytes and entry[0] > 1)
            ):
                self._trim_stream(stream, entry)
        if limits.age is not None and self.total_count:
            self._trim_age(now - limits.age)
        excess = self.total_count - limits.total_messages
        if excess > 0:
            cut = self.conn.execute(
                "SELECT MAX(id) FROM (SELECT id FROM messages ORDER BY id LIMIT ?)", (excess,)
            ).fetchone()[0]
            self._delete_through(cut)
        if self.total_bytes > limits.total_bytes and self.total_count > 1:
            self._delete_through(self._walk(None, 0, self.total_count, self.total_bytes))

    def _trim_stream(self, stream: str, entry: list[int]) -> None:
        """Delete a stream's oldest messages until it is within its count and byte limits."""
        limits = self.limits
        count, size, low = entry
        excess = count - limits.messages
        if excess > 0:
            cut, gone, weight = self.conn.execute(
                "SELECT MAX(id), COUNT(*), TOTAL(cost) FROM (SELECT id, cost FROM messages"
                " WHERE id >= ? AND stream = ? ORDER BY id LIMIT ?)",
                (low, stream, excess),
            ).fetchone()
            if cut is None:
                return  # nothing of it on disk (cannot be: the counts would be wrong)
            self._delete_stream(stream, entry, cut, gone, int(weight))
            count, size, low = entry
            if not count:
                return
        if size > limits.bytes and count > 1:
            cut = self._walk(stream, low, count, size)
            if cut is None:
                return
            gone, weight = self.conn.execute(
                "SELECT COUNT(*), TOTAL(cost) FROM messages"
                " WHERE id BETWEEN ? AND ? AND stream = ?",
                (low, cut, stream),
            ).fetchone()
            self._delete_stream(stream, entry, cut, gone, int(weight))

    def _walk(self, stream: str | None, low: int, count: int, size: int) -> int | None:
        """The id through which the oldest messages (of ``stream``, or of all) must go for
        the rest to be within the byte limit (per stream, or in total); one at least stays."""
        limit = self.limits.bytes if stream is not None else self.limits.total_bytes
        if stream is None:
            rows = self.conn.execute("SELECT id, cost FROM messages ORDER BY id")
        else:
            rows = self.conn.execute(
                "SELECT id, cost FROM messages WHERE id >= ? AND stream = ? ORDER BY id",
                (low, stream),
            )
        cut = None
        for ident, weight in rows:
            if size <= limit or count <= 1:
                break
            cut = ident
            count -= 1
            size -= weight
        rows.close()
        return cut

    def _delete_stream(
        self, stream: str, entry: list[int], cut: int, gone: int, weight: int
    ) -> None:
        self.conn.execute(
            "DELETE FROM messages WHERE id BETWEEN ? AND ? AND stream = ?", (entry[2], cut, stream)
        )
        self.total_count -= gone
        self.total_bytes -= weight
        entry[0] -= gone
        entry[1] -= weight
        entry[2] = cut + 1
        if entry[0] <= 0:
            del self.streams[stream]

    def _trim_age(self, cutoff: float) -> None:
        """Delete the messages stamped before ``cutoff`` (ids are given in time order, so
        these are the oldest by id: what is before the first young one)."""
        conn = self.conn
        oldest = conn.execute(
            "SELECT IFNULL(ts, 0) < ? FROM messages ORDER BY id LIMIT 1", (cutoff,)
        ).fetchone()
        if not oldest or not oldest[0]:
            return  # the oldest is young enough: the common case, one row read
        young = conn.execute(
            "SELECT id FROM messages WHERE IFNULL(ts, 0) >= ? ORDER BY id LIMIT 1", (cutoff,)
        ).fetchone()
        if young is None:
            cut = conn.execute("SELECT MAX(id) FROM messages").fetchone()[0]
        else:
            cut = young[0] - 1
        self._delete_through(cut)

    def _delete_through(self, cut: int | None) -> None:
        """Delete every message with an id up to ``cut``, whatever its stream."""
        if cut is None:
            return
        conn = self.conn
        for stream, gone, weight in conn.execute(
            "SELECT stream, COUNT(*), TOTAL(cost) FROM messages WHERE id <= ? GROUP BY stream",
            (cut,),
        ).fetchall():
            entry = self.streams.get(stream)
            if entry is None:  # not counted (cannot be, but never trust a count blindly)
                continue
            self.total_count -= gone
            self.total_bytes -= int(weight)
            entry[0] -= gone
            entry[1] -= int(weight)
            entry[2] = cut + 1
            if entry[0] <= 0:
                del self.streams[stream]
        conn.execute("DELETE FROM messages WHERE id <= ?", (cut,))
