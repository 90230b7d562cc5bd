"""SQLiteStore: history and ids survive a restart; the writer never holds up the caller;
bad databases are clear errors at open; write errors later are logged and counted."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chatcast._core.history import ANNOUNCEMENTS, History, HistoryLimits, entry
from chatcast.exceptions import ChatcastError, StoreError
from chatcast.message import Message
from chatcast.store import SQLiteStore
from tests.helpers import timeout

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def chat(first: int, count: int, room: str | None = "lobby", *, age: float = 0.0) -> list[Message]:
    """``count`` numbered messages from ``first`` on, stamped ``age`` seconds ago."""
    stamp = time.time() - age
    if room is None:
        return [
            Message(f"notice {i}", kind="announcement", timestamp=stamp, id=i)
            for i in range(first, first + count)
        ]
    return [
        Message(f"hello {i}", sender="alice", room=room, timestamp=stamp, id=i)
        for i in range(first, first + count)
    ]


def put(store: SQLiteStore, messages: list[Message]) -> None:
    """Record ``messages`` as the hub does, as entries."""
    store.record([entry(m) for m in messages])


def reopen(path: Path, limits: HistoryLimits | None = None) -> tuple[int, list[Message]]:
    """Open the store at ``path`` again, read it, close it."""
    store = SQLiteStore(path, limits=limits)
    try:
        return store.open()
    finally:
        store.close()


class Gate:
    """A connection stand-in that forwards to the real one, but can hold or fail writes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()
        self.error: sqlite3.Error | None = None

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        if sql.startswith("INSERT OR IGNORE INTO messages"):  # the writer's batch
            self.entered.set()
            assert self.open.wait(timeout(10)), "the test never opened the gate"
            if self.error is not None:
                raise self.error
        return self.conn.execute(sql, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def gate(store: SQLiteStore) -> Gate:
    """Put a :class:`Gate` between the store's writer and its connection."""
    assert store._conn is not None
    fake = Gate(store._conn)
    store._conn = fake  # type: ignore[assignment]
    return fake


# -- round trip -----------------------------------------------------------------------------


def test_round_trip_keeps_messages_and_ids_continue(tmp_path: Path) -> None:
    """What was recorded is read back, the same, in id order; the next id follows the last."""
    path = tmp_path / "chat.db"
    store = SQLiteStore(path)
    assert store.open() == (1, [])
    sent = chat(1, 3) + chat(4, 1, None) + chat(5, 2, "games")
    put(store, sent[:4])
    put(store, sent[4:])
    store.close()
    assert store.statistics.written == 6
    next_id, kept = reopen(path)
    assert kept == sent
    assert next_id == 7
    # The restored history serves them, and gives the next id on from there.
    history = History(HistoryLimits(), next_id)
    history.restore(kept)
    assert history.take_ids(1) == 7
    lobby = history.log("lobby")
    assert lobby is not None
    assert [item[0] for item in lobby.after(0)] == [1, 2, 3]


def test_ids_continue_even_when_nothing_is_kept(tmp_path: Path) -> None:
    """With history off the store keeps no message, but the id counter survives."""
    path = tmp_path / "chat.db"
    store = SQLiteStore(path, limits=HistoryLimits(messages=0))
    store.open()
    put(store, chat(1, 41))
    store.close()
    assert reopen(path) == (42, [])


def test_private_messages_are_never_written(tmp_path: Path) -> None:
    """A private message handed to the store by mistake stays off the disk."""
    path = tmp_path / "chat.db"
    store = SQLiteStore(path)
    store.open()
    secret = Message("psst", sender="alice", kind="private", to="bob", timestamp=1.0, id=2)
    put(store, [*chat(1, 1), secret])
    store.close()
    next_id, kept = reopen(path)
    assert [m.id for m in kept] == [1]
    assert next_id == 3


def test_crash_keeps_what_was_committed_and_a_second_server_is_refused(tmp_path: Path) -> None:
    """A process killed without close leaves its committed batches readable; while it ran,
    a second open of the file was refused as in use."""
    path = tmp_path / "chat.db"
    child = (
        "import sys, time\n"
        "from chatcast._core.history import entry\n"
        "from chatcast.message import Message\n"
        "from chatcast.store import SQLiteStore\n"
        f"store = SQLiteStore({str(path)!r})\n"
        "store.open()\n"
        "store.record([entry(Message(f'm{i}', sender='a', room='r', timestamp=time.time(),"
        " id=i)) for i in range(1, 101)])\n"
        "assert store.flush(30)\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
            with pytest.raises(StoreError, match="in use by another process") as refused:
                SQLiteStore(path).open()
            assert str(path) in str(refused.value)
        finally:
            proc.kill()  # no close(): the process dies with its writer thread waiting
            proc.wait(timeout(10))
    next_id, kept = reopen(path)
    assert [m.text for m in kept] == [f"m{i}" for i in range(1, 101)]
    assert next_id == 101


def test_second_store_in_the_same_process_is_refused(tmp_path: Path) -> None:
    """Two stores on one file in one process: the second is refused, the first goes on."""
    path = tmp_path / "chat.db"
    first = SQLiteStore(path)
    first.open()
    try:
        with pytest.raises(StoreError, match="in use by another process"):
            SQLiteStore(path).open()
        put(first, chat(1, 2))
    finally:
        first.close()
    assert [m.id for m in reopen(path)[1]] == [1, 2]


# -- retention ------------------------------------------------------------------------------


def test_retention_per_room_count(tmp_path: Path) -> None:
    """The writer keeps at most ``messages`` per room (announcements count as a room)."""
    path = tmp_path / "chat.db"
    store = SQLiteStore(path, limits=HistoryLimits(messages=3))
    store.open()
    put(store, chat(1, 5, "a") + chat(6, 2, "b"))
    put(store, chat(8, 4, None))
    assert store.flush(timeout(10))
    put(store, chat(12, 1, "a"))
    store.close()
    # The oldest two of room a and the oldest announcement were never written at all.
    assert (store.statistics.skipped, store.statistics.written) == (3, 9)
    # Reopened with roomy limits: what is left is what the writer left on disk.
    _, kept = reopen(path, HistoryLimits())
    assert [m.id for m in kept] == [4, 5, 6, 7, 9, 10, 11, 12]


def test_retention_per_room_bytes(tmp_path: Path) -> None:
    """The byte limit of a room drops its oldest, but keeps at least its newest message."""
    path = tmp_path / "chat.db"
    store = SQLiteStore(path, limits=HistoryLimits(bytes=1000))
    store.open()
    big = [Message("x" * 250, sender="a", room="r", timestamp=time.time(), id=i) for i in (1, 2, 3)]
    huge = Message("y" * 5000, sender="a", room="s", timestamp=time.time(), id=4)
    put(store, big[:2])  # one room: counted in C loops
    put(store, [big[2], huge])  # two rooms: counted per message
    store.close()
    assert [m.id for m in reopen(path, HistoryLimits())[1]] == [2, 3, 4]


def test_retention_by_age_on_disk_and_at_open(tmp_path: Path) -> None:
    """Messages older than ``age`` go: by the writer as it writes, and at open."""
    path = tmp_path / "chat.db"
    store = SQLiteStore(path, limits=HistoryLimits(age=3600))
    store.open()
    put(store, chat(1, 2, age=7200) + chat(3, 2, age=1800) + chat(5, 1, "b"))
    store.close()
    assert [m.id for m in reopen(path, HistoryLimits(age=None))[1]] == [3, 4, 5]
    # A shorter age at the next start drops more, and the ids still continue.
    next_id, kept = reopen(path, HistoryLimits(age=600))
    assert (next_id, [m.id for m in kept]) == (6, [5])
    assert [m.id for m in reopen(path, HistoryLimits(age=None))[1]] == [5]
    # All of it old: all of it goes, and the ids still continue.
    time.sleep(0.002)  # older than the age below, whatever the clock's resolution
    assert reopen(path, HistoryLimits(age=0.001)) == (6, [])


def test_retention_total(tmp_path: Path) -> None:
    """At most ``total_messages`` in all: the oldest of the whole store go first."""
    path = tmp_path / "chat.db"
    store = SQLiteStore(path, limits=HistoryLimits(total_messages=4))
    store.open()
    put(store, chat(1, 3, "a") + chat(4, 3, "b"))
    assert store.flush(timeout(10))
    put(store, chat(7, 1, "c"))
    store.close()
    assert [m.id for m in reopen(path, HistoryLimits())[1]] == [4, 5, 6, 7]


def test_tighter_limits_at_open_apply_to_what_is_returned(tmp_path: Path) -> None:
    """open() returns only what the limits keep: per room, then in total."""
    path = tmp_path / "chat.db"
    store = SQLiteStore(path)
    store.open()
    put(store, chat(1, 5, "a") + chat(6, 5, "b"))
    store.close()
    next_id, kept = reopen(path, HistoryLimits(messages=4, total_messages=6))
    assert next_id == 11
    assert [m.id for m in kept] == [4, 5, 7, 8, 9, 10]


# -- the writer never holds up the caller ---------------------------------------------------


def test_record_returns_at_once_while_the_writer_is_stuck(tmp_path: Path) -> None:
    """With the writer blocked inside a write, record() still returns in microseconds and the
    queue is written in batches of at most max_batch once the disk is back."""
    store = SQLiteStore(tmp_path / "chat.db", max_batch=1000, flush_interval=0)
    store.open()
    fake = gate(store)
    fake.open.clear()
    try:
        put(store, chat(1, 1))
        assert fake.entered.wait(timeout(5)), "the writer never started writing"
        batches = [[entry(m) for m in chat(first, 100)] for first in range(2, 2502, 100)]
        started = time.perf_counter()
        for batch in batches:
            store.record(batch)
        elapsed = time.perf_counter() - started
        assert store.statistics.pending == 2501
    finally:
        fake.open.set()
    assert elapsed < timeout(0.05), f"record() took {elapsed * 1000:.1f} ms for 25 calls"
    assert store.flush(timeout(10))
    stats = store.statistics
    assert (stats.written, stats.pending) == (2501, 0)
    assert stats.batches == 4  # the first message alone, then 1000 + 1000 + 500
    store.close()


def test_the_queue_behind_a_stuck_writer_is_bounded_by_the_retention(tmp_path: Path) -> None:
    """Messages the total limit would delete anyway are dropped from the queue, not kept."""
    path = tmp_path / "chat.db"
    store = SQLiteStore(path, limits=HistoryLimits(total_messages=50), flush_interval=0)
    store.open()
    fake = gate(store)
    fake.open.clear()
    put(store, chat(1, 1))
    assert fake.entered.wait(timeout(5))
    put(store, chat(2, 999))
    assert store.statistics.pending == 51  # the one being written, and the newest 50
    assert store.statistics.skipped == 949
    fake.open.set()
    store.close()
    next_id, kept = reopen(path, HistoryLimits())
    assert (next_id, [m.id for m in kept]) == (1001, list(range(951, 1001)))


# -- write errors later ---------------------------------------------------------------------


def test_disk_full_is_logged_counted_and_survived(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real SQLITE_FULL (page limit) loses that batch only: logged once, counted, and the
    store writes again once there is room."""
    path = tmp_path / "chat.db"
    store = SQLiteStore(path)
    store.open()
    put(store, chat(1, 1))
    assert store.flush(timeout(10))
    assert store._conn is not None
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")  # the writer is idle now
    with caplog.at_level(logging.WARNING, logger="chatcast"):
        put(store, [Message("z" * 20000, sender="a", room="r", timestamp=time.time(), id=2)])
        assert store.flush(timeout(10))
        put(store, [Message("z" * 20000, sender="a", room="r", timestamp=time.time(), id=3)])
        assert store.flush(timeout(10))
        stats = store.statistics
        assert (stats.written, stats.write_errors, stats.lost) == (1, 2, 2)
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, errors  # a streak of errors is logged once
        assert str(path) in errors[0]
        assert "disk is full" in errors[0]
        store._conn.execute("PRAGMA max_page_count = 1073741823")
        put(store, chat(4, 1))
        assert store.flush(timeout(10))
    assert any("writing again" in r.getMessage() for r in caplog.records)
    store.close()
    next_id, kept = reopen(path)
    assert [m.id for m in kept] == [1, 4]
    assert next_id == 5


def test_a_failing_connection_never_raises_into_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A write error from the driver (mocked) is counted; record() and close() never raise."""
    store = SQLiteStore(tmp_path / "chat.db")
    store.open()
    fake = gate(store)
    failure = sqlite3.OperationalError("disk I/O error")
    failure.sqlite_errorcode = 10
    fake.error = failure
    with caplog.at_level(logging.ERROR, logger="chatcast"):
        put(store, chat(1, 10))
        assert store.flush(timeout(10))
    assert store.statistics.write_errors == 1
    assert store.statistics.lost == 10
    assert "I/O error" in caplog.records[0].getMessage()
    fake.error = None
    put(store, chat(11, 1))
    store.close()
    assert store.statistics.written == 1


# -- clear errors at open -------------------------------------------------------------------


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    """A file of random bytes: StoreError naming the path, not a sqlite3 traceback."""
    path = tmp_path / "chat.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(StoreError, match="corrupt or not a SQLite database") as error:
        SQLiteStore(path).open()
    assert str(path) in str(error.value)
    assert path.read_bytes() != b""  # left as it was


def test_corrupt_pages_are_a_clear_error(tmp_path: Path) -> None:
    """A store whose pages were overwritten is refused at open, not when it is read later."""
    path = tmp_path / "chat.db"
    store = SQLiteStore(path)
    store.open()
    put(store, [Message("x" * 3000, sender="a", room="r", timestamp=1.0, id=i) for i in range(30)])
    store.close()
    data = bytearray(path.read_bytes())
    data[4096 * 2 : 4096 * 4] = os.urandom(8192)  # keep the header, break the pages
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt") as error:
        SQLiteStore(path).open()
    assert str(path) in str(error.value)


def test_a_foreign_sqlite_database_is_refused_untouched(tmp_path: Path) -> None:
    """Another application's database is not taken over (nor switched to WAL)."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE accounts (name TEXT)")
    conn.close()
    with pytest.raises(StoreError, match="not a chatcast store"):
        SQLiteStore(path).open()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """A store written by a newer chatcast is refused with both versions named."""
    path = tmp_path / "chat.db"
    SQLiteStore(path).close()
    reopen(path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99, newer"):
        SQLiteStore(path).open()


@pytest.mark.parametrize("where", ["directory", "missing-parent"])
def test_a_path_that_cannot_be_a_database(tmp_path: Path, where: str) -> None:
    """A directory, or a file in a directory that does not exist: StoreError with the path."""
    path = tmp_path if where == "directory" else tmp_path / "nowhere" / "chat.db"
    with pytest.raises(StoreError) as error:
        SQLiteStore(path).open()
    assert str(path) in str(error.value)
    assert "directory" in str(error.value)


@pytest.mark.skipif(ROOT, reason="root writes through file permissions")
def test_read_only_file_and_directory(tmp_path: Path) -> None:
    """A read-only file, or a new file in a read-only directory: StoreError, not writable."""
    path = tmp_path / "chat.db"
    reopen(path)
    path.chmod(0o444)
    with pytest.raises(StoreError, match="not writable"):
        SQLiteStore(path).open()
    path.chmod(0o644)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(StoreError, match="not writable"):
            SQLiteStore(locked / "chat.db").open()
    finally:
        locked.chmod(0o755)


# -- the object's life ----------------------------------------------------------------------


def test_arguments_and_life_cycle(tmp_path: Path) -> None:
    """Bad arguments are ValueErrors; open twice is refused; close is idempotent; record
    after close is ignored."""
    with pytest.raises(ValueError, match="flush_interval"):
        SQLiteStore(tmp_path / "a.db", flush_interval=-1)
    with pytest.raises(ValueError, match="max_batch"):
        SQLiteStore(tmp_path / "a.db", max_batch=0)
    store = SQLiteStore(tmp_path / "a.db")
    store.open()
    with pytest.raises(StoreError, match="already opened"):
        store.open()
    store.close()
    store.close()
    put(store, chat(1, 1))
    assert store.statistics.pending == 0
    SQLiteStore(tmp_path / "never-opened.db").close()


async def test_aclose_flushes_without_blocking_the_loop(tmp_path: Path) -> None:
    """aclose() writes the queue from a thread; the loop keeps turning meanwhile."""
    path = tmp_path / "chat.db"
    store = SQLiteStore(path)
    store.open()
    put(store, chat(1, 500))
    await store.aclose()
    assert store.statistics.written == 500
    assert reopen(path)[0] == 501


# -- a real server restarted on its store ---------------------------------------------------


class JsonPeer:
    """A blocking JSON-mode client on a raw socket (the test has no event loop)."""

    def __init__(self, port: int, name: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout(10))
        self.file = self.sock.makefile("rw", encoding="utf-8", newline="\n")
        self.send({"type": "hello", "name": name})
        self.welcome = self.until(lambda frame: frame["type"] == "welcome")

    def send(self, frame: dict[str, Any]) -> None:
        self.file.write(json.dumps(frame) + "\n")
        self.file.flush()

    def until(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Read frames until one matches; fail at EOF (or by the socket's timeout)."""
        while True:
            line = self.file.readline()
            assert line, "the server closed the connection"
            if not line.startswith("{"):
                continue  # the text-mode greeting sent before the hello is read
            frame: dict[str, Any] = json.loads(line)
            if predicate(frame):
                return frame

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@contextlib.contextmanager
def server_on(path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`chatcast server --port 0 --store PATH` as a process; yields it and its port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "chatcast", "server", "--port", "0", "--store", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert " port " in banner, banner + (process.stderr.read() if process.stderr else "")
        yield process, int(banner.split(" port ")[1].split()[0])
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout(10))
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_a_restarted_server_serves_its_history_and_ids_continue(tmp_path: Path) -> None:
    """`chatcast server --store`: what was said before a restart (SIGTERM) is served after it
    by a `history` request, with the same ids, and new messages get higher ids."""
    path = tmp_path / "chat.db"
    with server_on(path) as (process, port):
        alice = JsonPeer(port, "alice")
        try:
            ids = []
            for i in range(3):
                alice.send({"type": "message", "text": f"before {i}", "ref": str(i)})
                ids.append(alice.until(lambda frame: frame["type"] == "ack")["id"])
        finally:
            alice.close()
        os.kill(process.pid, signal.SIGTERM)  # graceful: the queue is written first
        assert process.wait(timeout(10)) == 0
    assert ids == sorted(ids)
    with server_on(path) as (process, port):
        # A second server on the same file is refused, clearly, while this one runs.
        second = subprocess.run(
            [sys.executable, "-m", "chatcast", "server", "--port", "0", "--store", str(path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout(20),
            check=False,
        )
        assert second.returncode != 0
        assert "is in use by another process" in second.stderr
        assert "Traceback" not in second.stderr
        bob = JsonPeer(port, "bob")
        carol = JsonPeer(port, "carol")
        try:
            bob.send({"type": "history", "room": "lobby", "limit": 50})
            replayed = []
            while True:
                frame = bob.until(lambda f: f["type"] in ("message", "history"))
                if frame["type"] == "history":
                    break
                if frame.get("history"):
                    replayed.append(frame)
            assert frame["count"] == 3
            # History on join may have come first: the request's answer is the last three.
            assert [(f["id"], f["text"]) for f in replayed[-3:]] == [
                (ident, f"before {i}") for i, ident in enumerate(ids)
            ]
            carol.send({"type": "message", "text": "after", "ref": "a"})
            new_id = carol.until(lambda frame: frame["type"] == "ack")["id"]
            assert new_id > ids[-1]
            live = bob.until(lambda f: f["type"] == "message" and not f.get("history"))
            assert (live["text"], live["id"]) == ("after", new_id)
        finally:
            bob.close()
            carol.close()


def test_a_malformed_entry_costs_its_batch_not_the_writer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An entry that is not an Entry fails its batch (logged, counted); later ones are kept."""
    path = tmp_path / "chat.db"
    store = SQLiteStore(path)
    store.open()
    with caplog.at_level(logging.ERROR, logger="chatcast"):
        store.record([(1, 0.0, "message")])  # type: ignore[list-item]
        assert store.flush(timeout(10))
    assert (store.statistics.write_errors, store.statistics.lost) == (1, 1)
    assert "not kept on disk" in caplog.records[0].getMessage()
    put(store, chat(2, 1))
    store.close()
    next_id, kept = reopen(path)
    assert (next_id, [m.id for m in kept]) == (3, [2])


@pytest.mark.parametrize("seed", range(6))
def test_retention_on_disk_agrees_with_the_history_in_memory(tmp_path: Path, seed: int) -> None:
    """Random rooms, sizes and batch boundaries: the store keeps what History keeps."""
    rng = random.Random(seed)
    limits = HistoryLimits(messages=5, bytes=1000, total_messages=12, total_bytes=3000, age=None)
    history = History(limits)
    path = tmp_path / "chat.db"
    store = SQLiteStore(path, limits=limits, max_batch=rng.choice([1, 3, 50]))
    store.open()
    stamp = time.time()
    for ident in range(1, 200):
        room = rng.choice(["a", "b", "c", None]) if rng.random() < 0.9 else "d"
        message = Message(
            "x" * rng.choice([1, 100, 600]),
            sender=None if room is None else "s",
            kind="announcement" if room is None else "message",
            room=room,
            timestamp=stamp,
            id=ident,
        )
        history.keep(room if room is not None else ANNOUNCEMENTS, [entry(message)])
        put(store, [message])
        if rng.random() < 0.2:
            assert store.flush(timeout(10))
    store.close()
    expected = sorted(item[0] for key in history.rooms() for item in history.log(key).after(0))  # type: ignore[union-attr]
    _, kept = reopen(path, HistoryLimits(age=None))
    assert [m.id for m in kept] == expected


def test_batches_longer_than_one_statement(tmp_path: Path) -> None:
    """A batch is inserted in statements of as many rows as SQLite takes parameters for
    (999 parameters before SQLite 3.32): split anywhere, every row arrives once."""
    path = tmp_path / "chat.db"
    store = SQLiteStore(path)
    store.open()
    assert store._rows_per_statement in (500, 999 // 7)  # 7 parameters a row, at most 500
    store._rows_per_statement = 3
    put(store, chat(1, 10, "a") + chat(11, 1, None) + chat(12, 2, "b"))
    store.close()
    next_id, kept = reopen(path)
    assert next_id == 14
    assert [(m.id, m.room) for m in kept] == [(i, "a") for i in range(1, 11)] + [
        (11, None),
        (12, "b"),
        (13, "b"),
    ]


def test_an_idle_writer_still_applies_the_age_limit(tmp_path: Path) -> None:
    """With nothing new to write, the writer wakes within ``age`` and deletes what aged."""
    path = tmp_path / "chat.db"
    store = SQLiteStore(path, limits=HistoryLimits(age=0.3))
    store.open()
    put(store, chat(1, 2))
    assert store.flush(timeout(10))
    retention = store._retention
    assert retention is not None
    assert retention.total_count == 2
    deadline = time.monotonic() + timeout(5)
    while retention.total_count and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the writer's count under a deadline: it has no event
    assert retention.total_count == 0
    store.close()
    assert reopen(path, HistoryLimits(age=None)) == (3, [])


async def test_bans_mutes_and_topics_survive_a_restart_with_the_store(tmp_path: Path) -> None:
    """With a store, the moderation records are kept too (issue #14): a restarted server still
    refuses the banned name and shows the topic."""
    from chatcast import BroadcastClient, BroadcastServer

    path = tmp_path / "chat.db"
    async with BroadcastServer("127.0.0.1", 0, store=path) as server:
        server.ban(name="mallory", reason="spam")
        server.set_topic("lobby", "Lab 3: sockets")
    async with BroadcastServer("127.0.0.1", 0, store=path) as again:
        assert [ban.name for ban in again.bans()] == ["mallory"]
        assert again.topic("lobby") == "Lab 3: sockets"
        with pytest.raises(ChatcastError, match="banned"):
            await BroadcastClient("127.0.0.1", again.port, name="mallory").connect()
        again.unban(name="mallory")
    async with BroadcastServer("127.0.0.1", 0, store=path) as third:
        assert third.bans() == []


async def test_a_server_that_cannot_listen_gives_its_store_back(tmp_path: Path) -> None:
    """The port is taken: start() fails, and the store is closed again (not left locked), so
    the same program can try again on another port."""
    from chatcast import BroadcastServer

    path = tmp_path / "chat.db"
    async with BroadcastServer("127.0.0.1", 0) as squatter:
        taken = BroadcastServer("127.0.0.1", squatter.port, store=path)
        with pytest.raises(OSError, match="address already in use"):
            await taken.start()
    async with BroadcastServer("127.0.0.1", 0, store=path) as server:
        assert server.is_serving
