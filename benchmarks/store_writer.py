"""The SQLite store's writer alone: ``python -m benchmarks.store_writer [--messages N]``.

Records ``N`` one-room entries (64-byte texts) into a :class:`~chatcast.store.SQLiteStore`
on a new file, 1000 at a time, waiting for each batch to be committed, with the default
limits: once the room holds its 1000, every batch inserts 1000 rows and deletes 1000, the
steady state of a busy room. Prints ``RESULT <json>``: CPU microseconds per message (the
whole process: the writer thread does nearly all of it) and messages per second.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from chatcast._core.history import Entry
from chatcast.store import SQLiteStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store_writer")
    parser.add_argument("--messages", type=int, default=300_000)
    args = parser.parse_args(argv)
    now = time.time()
    text = "#m01 " + "x" * 58
    entries: list[Entry] = [
        (i, now, "message", "alice", text, "lobby", None) for i in range(1, args.messages + 1)
    ]
    with tempfile.TemporaryDirectory(prefix="chatcast-bench-") as tmp:
        store = SQLiteStore(Path(tmp) / "chat.db", flush_interval=0, max_batch=1000)
        store.open()
        try:
            started, cpu = time.perf_counter(), time.process_time()
            for start in range(0, args.messages, 1000):
                store.record(entries[start : start + 1000])
                if not store.flush(60):
                    raise RuntimeError("the writer did not keep up within 60 s")
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        finally:
            store.close()
        stats = store.statistics
    result = {
        "workload": "store_writer",
        "messages": args.messages,
        "written": stats.written,
        "batches": stats.batches,
        "cpu_us_per_message": 1e6 * cpu / args.messages,
        "messages_per_s": args.messages / elapsed,
    }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
