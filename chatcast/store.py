"""A message store on disk, with the standard library's :mod:`sqlite3`.

:class:`SQLiteStore` keeps a server's room history and its id counter in one SQLite file, so
that both survive a restart: ``BroadcastServer(store=SQLiteStore("chat.db"))`` or
``chatcast server --store chat.db``.

What survives a restart: every room's recent messages and the announcements to everyone,
within the history limits, and the id counter (ids keep increasing even if every message was
deleted). What does not: sessions, names and resume tokens, and private messages (they are
never written to disk).

The fan-out never waits for the disk. :meth:`SQLiteStore.record`, called on the event loop,
only appends to a queue; a writer thread commits everything queued (up to ``max_batch``
messages) in one transaction, then applies the retention limits on disk and stores the next
id. The file is in write-ahead-log mode with ``synchronous=NORMAL``: a committed batch survives
a crash of the process; a power cut may lose the last batches (up to about ``flush_interval``
seconds of messages) but never corrupts the file. :meth:`SQLiteStore.close` writes everything
still queued before it returns. What the retention would delete at once is never written: of
a busy room's batch, only its newest ``limits.messages``; and the queue holds at most
``limits.total_messages`` (counted as ``skipped``). The writer keeps the GIL as little as it
can (rows go 500 to a statement, built by SQLite from the entries as they are), since the
event loop has to wait each time the writer takes it back.

A write that fails later (disk full, the file made read-only) is logged on the ``chatcast``
logger and counted (:attr:`SQLiteStore.statistics`); the server goes on serving from its
in-memory history.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from itertools import chain, repeat, starmap
from operator import itemgetter
from typing import Final

from ._core.history import ANNOUNCEMENTS, Entry, HistoryLimits
from ._core.wire import Message
from ._sqlite_retention import OVERHEAD, Retention, count_added, keep_newest
from .exceptions import StoreError

__all__ = ["SQLiteStore", "StoreStatistics"]

logger = logging.getLogger("chatcast")

#: ``PRAGMA application_id`` of a chatcast store ("chat" in ASCII): what marks a file as ours.
APPLICATION_ID: Final = 0x63686174
#: ``PRAGMA user_version``: the schema this module reads and writes.
SCHEMA_VERSION: Final = 1

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS messages ("
    " id INTEGER PRIMARY KEY,"  # the server's id: the rowid, so id order is storage order
    " stream TEXT NOT NULL,"  # the room, or ANNOUNCEMENTS for an announcement to everyone
    " kind TEXT NOT NULL,"
    " sender TEXT,"
    " text TEXT NOT NULL,"
    " ts REAL,"
    " cost INTEGER NOT NULL)",  # what the message counts against the byte limits
    # Small documents the server keeps across restarts (its moderation: bans, mutes, topics).
    "CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)

# How long an idle writer sleeps before it applies the age limit again.
_IDLE_WAKE: Final = 60.0
# A streak of write errors is logged when it starts, then at most this often.
_ERROR_LOG_INTERVAL: Final = 60.0

# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF), for clear reasons.
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 8, 10, 11, 13, 14, 26


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """A snapshot of a store's writer.

    Attributes:
        written: Messages committed to disk.
        batches: Transactions committed.
        pending: Messages handed to :meth:`SQLiteStore.record` and not yet committed.
        write_errors: Batches that failed to commit (their messages are not on disk).
        lost: Messages in those batches.
        skipped: Messages not written because the retention limits would have deleted them
            at once: older than the newest ``limits.messages`` of their room in one batch,
            or than the newest ``limits.total_messages`` waiting in the queue.
    """

    written: int
    batches: int
    pending: int
    write_errors: int
    lost: int
    skipped: int


def _reason(error: sqlite3.Error) -> str:
    """Say in words why SQLite refused, from its result code."""
    code = getattr(error, "sqlite_errorcode", 0) & 0xFF
    if code in (_BUSY, _LOCKED):
        return "is in use by another process (another chatcast server?)"
    if code in (_NOTADB, _CORRUPT):
        return "is corrupt or not a SQLite database"
    if code == _READONLY:
        return "is not writable (a read-only file, directory or file system)"
    if code == _CANTOPEN:
        return "cannot be opened or created (a missing directory, or no permission?)"
    if code == _FULL:
        return "cannot be written: the disk is full"
    if code == _IOERR:
        return "cannot be read or written (an I/O error)"
    return "cannot be used"


class SQLiteStore:
    """Room history and message ids kept in a SQLite file (the hub's
    :class:`~chatcast._core.ports.Recorder`).

    Args:
        path: The database file; created if missing (its directory must exist).
        limits: The retention limits applied on disk: messages per room (announcements count
            as one more room), bytes per room, age, total messages and total bytes; the
            defaults of :class:`HistoryLimits` if none (a server given a path instead of a
            store makes the store with its own ``history`` limits). Give a store the same
            limits as its server: the server keeps in memory only what its own allow.
        flush_interval: Seconds the writer gathers messages before it commits them: one
            transaction per batch. At most this much recent history is lost on a power cut.
        max_batch: The most messages committed in one transaction.

    Raises:
        ValueError: ``flush_interval`` or ``max_batch`` is out of range.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        limits: HistoryLimits | None = None,
        flush_interval: float = 0.05,
        max_batch: int = 5000,
    ) -> None:
        if not (isinstance(flush_interval, int | float) and math.isfinite(flush_interval)) or (
            flush_interval < 0
        ):
            raise ValueError(
                f"flush_interval must be a number of seconds >= 0, got {flush_interval!r}"
            )
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        self.path = os.fspath(path)
        self.limits = limits if limits is not None else HistoryLimits()
        self.flush_interval = float(flush_interval)
        self.max_batch = max_batch
        keeps = self.limits.messages > 0 and self.limits.total_messages > 0
        # Bounded: a message older than the newest ``total_messages`` would be deleted by the
        # retention anyway, so a queue behind a slow disk drops it instead of growing.
        self._queue_limit = self.limits.total_messages if keeps else 0
        self._queue: deque[Entry] = deque(maxlen=self._queue_limit)
        self._last_id = 0  # the highest id recorded (whether kept or not)
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        self._flush = threading.Condition()
        self._flush_asked = 0
        self._flush_done = 0
        self._rows_per_statement = 1
        self._retention: Retention | None = None  # the writer's view of what is on disk
        self._stored_next = 0  # the next id last committed to the meta table
        self._in_flight = 0
        self._written = 0
        self._batches = 0
        self._write_errors = 0
        self._lost = 0
        self._skipped = 0
        self._failing_since: float | None = None
        self._last_error_log = 0.0
        #: The documents kept with :meth:`save_state`, as read at :meth:`open`.
        self.state: dict[str, str] = {}
        self._state_lock = threading.Lock()
        self._pending_state: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # -- start ------------------------------------------------------------------------------

    def open(self) -> tuple[int, list[Message]]:
        """Open (or create) the database, lock it, apply retention and load what it keeps.

        Synchronous: call it once, before serving (from a thread if the loop must not wait).
        The file stays locked until :meth:`close`, so a second server on it is refused.

        Returns:
            The next id to give, and the kept messages in id order (at most
            ``limits.messages`` per room, none older than ``limits.age``, at most
            ``limits.total_messages`` in all), for :meth:`~chatcast._core.history.History.restore`.

        Raises:
            StoreError: The file is in use by another process, corrupt, not a chatcast store
                (or of a newer schema), not writable, or a directory; the message names the
                path and the reason.
        """
        if self._conn is not None or self._closed:
            raise StoreError(f"message store {self.path}: already opened")
        if os.path.isdir(self.path):
            raise StoreError(f"message store {self.path} is a directory, not a database file")
        self._check_access()
        conn: sqlite3.Connection | None = None
        try:
            # isolation_level=None: we issue BEGIN and COMMIT ourselves. The connection is
            # used by this thread, then by the writer thread only (never both at once).
            conn = sqlite3.connect(
                self.path, timeout=0.1, isolation_level=None, check_same_thread=False
            )
            # Held until close: the first write takes an exclusive lock no other process
            # (or connection) can pass, which is what refuses a second server.
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            self._check_identity(conn)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"message store {self.path} cannot use write-ahead logging"
                    f" (journal mode stays {mode!r}): is it on a read-only file system?"
                )
            conn.execute("PRAGMA synchronous = NORMAL")
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise StoreError(f"message store {self.path} is corrupt: {result}")
            conn.execute("BEGIN IMMEDIATE")  # the write lock now, and proof we may write
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._conn = conn
            # As many rows per INSERT as SQLite takes parameters (999 before 3.32, 32766 since).
            self._rows_per_statement = max(
                1, min(500, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 7)
            )
            retention = self._retention = Retention(conn, self.limits)
            retention.load()
            retention.trim(time.time())
            next_id = self._next_id_on_disk()
            self._store_next(next_id)
            conn.execute("COMMIT")
            messages = [_message(row) for row in conn.execute(_SELECT_ALL)]
            self.state = dict(conn.execute("SELECT key, value FROM state"))
        except sqlite3.Error as error:
            self._conn = None
            _close_quietly(conn)
            raise StoreError(f"message store {self.path} {_reason(error)}: {error}") from error
        except BaseException:
            self._conn = None
            _close_quietly(conn)
            raise
        self._last_id = next_id - 1
        self._thread = threading.Thread(
            target=self._run, name=f"chatcast store {self.path}", daemon=True
        )
        self._thread.start()
        return next_id, messages

    def _check_access(self) -> None:
        """Refuse up front what SQLite would report only as an I/O error."""
        directory = os.path.dirname(os.path.abspath(self.path))
        if os.path.exists(self.path) and not os.access(self.path, os.R_OK | os.W_OK):
            raise StoreError(f"message store {self.path} is not writable (no permission)")
        if os.path.isdir(directory) and not os.access(directory, os.W_OK | os.X_OK):
            raise StoreError(
                f"message store {self.path} is in a directory that is not writable"
                f" ({directory}): SQLite keeps its write-ahead log beside the file"
            )

    def _check_identity(self, conn: sqlite3.Connection) -> None:
        """Refuse a file that is not a chatcast store of a schema this module knows."""
        application = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if application == 0 and not tables:
            return  # a new (or empty) database: ours to set up
        if application != APPLICATION_ID:
            raise StoreError(
                f"message store {self.path} is not a chatcast store (a SQLite database with"
                f" other data: application id {application:#x}); give a new file name"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"message store {self.path} has schema version {version}, newer than this"
                f" chatcast understands ({SCHEMA_VERSION}): upgrade chatcast"
            )
        if version < 1 or not {"meta", "messages"} <= tables:
            raise StoreError(
                f"message store {self.path} is damaged: its schema (version {version},"
                f" tables {sorted(tables)}) is not a chatcast store's"
            )

    # -- the Recorder port ------------------------------------------------------------------

    def record(self, items: list[Entry]) -> None:
        """Queue numbered room messages and announcements to be written (never blocks).

        Called on the event loop for every numbered room message and announcement, in id
        order, as :data:`~chatcast._core.history.Entry` tuples
        ``(id, timestamp, kind, sender, text, room, to)`` (``room`` None: to everyone).
        Private messages are never passed (and are skipped if they are). Nothing here
        touches the disk: the writer thread commits the queue in batches. After
        :meth:`close`, items are ignored.
        """
        if not items or self._closed:
            return
        queue = self._queue
        over = len(queue) + len(items) - self._queue_limit
        if over > 0:  # the oldest queued go: the total limit would delete them anyway
            self._skipped += over
        queue.extend(items)
        last = items[-1][0]
        if last > self._last_id:
            self._last_id = last
        if not self._wake.is_set():
            self._wake.set()

    def save_state(self, key: str, value: str) -> None:
        """Keep the document ``value`` under ``key`` (replacing the last one), written with
        the next batch; never blocks. ``state`` has them at the next :meth:`open`."""
        with self._state_lock:
            self._pending_state[key] = value
        self._wake.set()

    @property
    def statistics(self) -> StoreStatistics:
        """What the writer has done so far, and what is still queued."""
        return StoreStatistics(
            written=self._written,
            batches=self._batches,
            pending=len(self._queue) + self._in_flight,
            write_errors=self._write_errors,
            lost=self._lost,
            skipped=self._skipped,
        )

    # -- flushing and closing ---------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything recorded so far is committed (or failed, and was counted).

        Blocks the calling thread: not for the event loop. Returns False on timeout.
        """
        thread = self._thread
        if thread is None or not thread.is_alive():
            return not self._queue
        with self._flush:
            self._flush_asked += 1
            ticket = self._flush_asked
        self._wake.set()
        with self._flush:
            return self._flush.wait_for(
                lambda: self._flush_done >= ticket or not thread.is_alive(), timeout
            )

    def close(self) -> None:
        """Write everything queued, commit, stop the writer and close the file (idempotent).

        Blocks until the queue is on disk: from the event loop, use :meth:`aclose`.
        """
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is not None:
            self._stop.set()
            self._wake.set()
            thread.join()
        else:
            _close_quietly(self._conn)
        self._conn = None

    async def aclose(self) -> None:
        """:meth:`close` in a thread, so the event loop goes on meanwhile."""
        await asyncio.to_thread(self.close)

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        conn = self._conn
        assert conn is not None
        try:
            while True:
                self._wake.wait(
                    _IDLE_WAKE if self.limits.age is None else min(_IDLE_WAKE, self.limits.age)
                )
                self._wake.clear()
                stopping = self._stop.is_set()
                asked = self._flush_asked
                if (
                    not stopping
                    and asked <= self._flush_done
                    and len(self._queue) < self.max_batch
                    and self.flush_interval > 0
                ):
                    # Gather: one transaction for everything that arrives meanwhile.
                    self._stop.wait(self.flush_interval)
                    asked = self._flush_asked
                self._drain()
                if asked > self._flush_done:
                    with self._flush:
                        self._flush_done = asked
                        self._flush.notify_all()
                if self._stop.is_set() and not self._queue:
                    break
        finally:
            _close_quietly(conn)
            with self._flush:
                self._flush.notify_all()

    def _drain(self) -> None:
        """Commit the queue in batches of at most ``max_batch`` (and the age limit, idle)."""
        with self._state_lock:
            documents, self._pending_state = self._pending_state, {}
        if documents:
            self._write_state(documents)
        queue = self._queue
        while True:
            # Popped in C (no Python per message): the loop keeps the GIL for the fan-out.
            take = self._in_flight = min(len(queue), self.max_batch)  # still pending
            batch = list(starmap(queue.popleft, repeat((), take)))
            self._write(batch)
            self._in_flight = 0
            if not queue:
                return

    def _write(self, batch: list[Entry]) -> None:
        conn = self._conn
        retention = self._retention
        assert conn is not None
        assert retention is not None
        next_id = self._last_id + 1
        written = 0
        try:
            if any(map(_TO, batch)):
                batch = [item for item in batch if item[6] is None]  # privates: never on disk
            if batch:
                # What the per-room count limit would delete in this same transaction is not
                # written at all: a busy room's batch of 5000 is 1000 rows, not 5000 in and out.
                newest = keep_newest(batch, self.limits.messages)
                self._skipped += len(batch) - len(newest)
                batch = newest
            added = count_added(batch)
            conn.execute("BEGIN IMMEDIATE")
            if batch:
                before = conn.total_changes
                self._insert(conn, batch)
                written = conn.total_changes - before
                if written == len(batch):
                    retention.add(added, min(map(_ID, batch)))
                else:
                    retention.load()  # ids already on disk were skipped
            retention.trim(time.time(), added)
            if next_id > self._stored_next:
                self._store_next(next_id)
            conn.execute("COMMIT")
        except Exception as error:  # a write error never reaches the server (see docstring)
            self._failed(len(batch), error)
            return
        if written:
            self._written += written
            self._batches += 1
        if self._failing_since is not None:
            logger.warning(
                "message store %s: writing again after %.0f s of errors (%d message(s) lost)",
                self.path,
                time.monotonic() - self._failing_since,
                self._lost,
            )
            self._failing_since = None

    def _write_state(self, documents: dict[str, str]) -> None:
        conn = self._conn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", documents.items()
            )
            conn.execute("COMMIT")
        except Exception as error:  # never reaches the server, as for messages
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._write_errors += 1
            logger.warning(
                "message store %s: could not keep %s: %s", self.path, ", ".join(documents), error
            )

    def _failed(self, count: int, error: Exception) -> None:
        """Roll back, count and log a failed batch; resynchronise the on-disk counts."""
        conn = self._conn
        retention = self._retention
        assert conn is not None
        assert retention is not None
        self._write_errors += 1
        self._lost += count
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            retention.load()
        except Exception:  # the counts are reloaded after the next failure too
            retention.clear()
        now = time.monotonic()
        reason = _reason(error) if isinstance(error, sqlite3.Error) else "cannot be written"
        if self._failing_since is None:
            self._failing_since = self._last_error_log = now
            logger.error(
                "message store %s %s (%s): %d message(s) not kept on disk; the server goes"
                " on from its memory",
                self.path,
                reason,
                error,
                count,
                exc_info=not isinstance(error, sqlite3.Error),
            )
        elif now - self._last_error_log >= _ERROR_LOG_INTERVAL:
            self._last_error_log = now
            logger.error(
                "message store %s still %s (%s): %d message(s) lost so far",
                self.path,
                reason,
                error,
                self._lost,
            )

    def _insert(self, conn: sqlite3.Connection, batch: list[Entry]) -> None:
        """Insert ``batch`` in statements of up to ``_rows_per_statement`` entries."""
        step = self._rows_per_statement
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            conn.execute(_insert_rows(len(chunk)), list(chain.from_iterable(chunk)))

    # -- the id counter ---------------------------------------------------------------------

    def _next_id_on_disk(self) -> int:
        conn = self._conn
        assert conn is not None
        stored = conn.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()
        newest = conn.execute("SELECT MAX(id) FROM messages").fetchone()[0]
        return max(1, stored[0] if stored else 1, (newest or 0) + 1)

    def _store_next(self, next_id: int) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('next_id', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (next_id,),
        )
        self._stored_next = next_id


@functools.lru_cache(maxsize=8)
def _insert_rows(count: int) -> str:
    """The statement that inserts ``count`` entries, bound flat, 7 parameters each.

    An Entry is ``(id, timestamp, kind, sender, text, room, to)``: SQLite makes the rows from
    the values as they are (the VALUES table's columns are ``column1`` to ``column7``), so the
    writer spends no Python per message, and releases the GIL once per statement rather than
    once per row (each time it takes the GIL back, the event loop may have to wait for it).
    """
    values = ",".join(["(?,?,?,?,?,?,?)"] * count)
    return (
        "INSERT OR IGNORE INTO messages (id, stream, kind, sender, text, ts, cost)"
        f" SELECT column1, IFNULL(column6, '{ANNOUNCEMENTS}'), column3, NULLIF(column4, ''),"
        f" column5, column2, length(column5) + length(IFNULL(column4, '')) + {OVERHEAD}"
        f" FROM (VALUES {values}) WHERE column7 IS NULL"
    )


_ID, _TO = itemgetter(0), itemgetter(6)
_SELECT_ALL: Final = "SELECT id, stream, kind, sender, text, ts FROM messages ORDER BY id"


def _message(row: tuple[int, str, str, str | None, str, float | None]) -> Message:
    ident, stream, kind, sender, text, ts = row
    return Message(
        text,
        sender=sender,
        kind=kind,
        room=None if stream == ANNOUNCEMENTS else stream,
        timestamp=ts,
        id=ident,
    )


def _close_quietly(conn: sqlite3.Connection | None) -> None:
    if conn is not None:
        try:
            conn.close()
        except sqlite3.Error:
            pass
