"""The benchmark suite's smoke run: it must keep working, and count every delivery."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # about 35 s: on one Python in CI

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(90)
def test_quick_benchmark_counts_every_delivery(tmp_path: Path) -> None:
    """`python -m benchmarks --quick` exits 0 and reports every delivery counted."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    output = tmp_path / "quick.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", f"--output={output}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all deliveries counted" in result.stdout
    report = json.loads(output.read_text())
    workloads = {row["workload"] for row in report["rows"]}
    assert {"burst", "history", "paced", "scale"} <= workloads
    # The cross-server workload needs redis-server and redis-py (CI installs both): where
    # they are, it must have run; where not, it is skipped and says why.
    if shutil.which("redis-server") and importlib.util.find_spec("redis") is not None:
        assert "cross" in workloads, report["skipped"]
    else:
        assert "redis" in report["skipped"]["cross"]
    assert all(row["all_counted"] for row in report["rows"])
    # The history workload's SQLite servers (text and JSON subscribers): each wrote, with no
    # error, and its writer caught up.
    stores = [row for row in report["rows"] if "store_written" in row]
    assert len(stores) == 2
    for row in stores:
        assert row["store_written"] > 0
        assert (row["store_write_errors"], row["store_pending"]) == (0, 0)
    for row in report["rows"]:
        if row["workload"] in ("burst", "history", "paced", "cross"):
            assert row["lost"] == 0
            assert row["delivered"] == row["expected"] > 0
        if row["workload"] == "cross":
            # Two servers: every envelope crossed, none failed, and a batch of messages
            # crossed as one envelope (never one per message per client).
            assert row["servers"] == 2
            assert row["backplane_failures"] == 0
            assert row["envelopes_received"] == row["envelopes"] > 0
            assert row["envelopes"] <= row["messages"]


_NEW = "chatcast.backplane.RedisBackplane"
_OLD = "chatcast.backplane.RedisPubSubBackplane"


def test_sharding_backplane_class_falls_back_to_redis_backplane() -> None:
    """A backplane class missing from its module is RedisBackplane (the pub/sub design's name
    before issue #12); a name without a module is refused."""
    from benchmarks import sharding
    from chatcast.backplane import RedisBackplane

    assert sharding.resolve(_NEW) is RedisBackplane
    assert sharding.resolve("chatcast.backplane.NoSuchBackplane") is RedisBackplane
    with pytest.raises(ValueError, match=r"module\.Class"):
        sharding.resolve("RedisBackplane")


@pytest.mark.timeout(60)
@pytest.mark.skipif(
    shutil.which("redis-server") is None or importlib.util.find_spec("redis") is None,
    reason="needs redis-server and redis-py",
)
def test_quick_sharding_counts_every_message(tmp_path: Path) -> None:
    """`python -m benchmarks.sharding --quick` (about 13 s): both classes at 1 and 2 servers;
    every member got every message of its room once and nothing of another room, no envelope
    failed, each server's CPU was measured, and the class the servers used is named."""
    output = tmp_path / "sharding.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.sharding", "--quick", f"--output={output}"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(output.read_text())
    runs = [r for r in rows if r["kind"] == "run"]
    assert sorted((r["backplane_requested"], r["servers"]) for r in runs) == [
        (_NEW, 1),
        (_NEW, 2),
        (_OLD, 1),
        (_OLD, 2),
    ]
    for r in runs:
        assert r["backplane"] in (_NEW, _OLD)
        assert r["rooms"] == 10 * r["servers"]
        assert r["delivered"] == r["expected"] == 3 * r["messages"] > 0
        assert (r["lost"], r["duplicates"], r["foreign"], r["backplane_failures"]) == (0, 0, 0, 0)
        assert len(r["server_cpu_pct"]) == r["servers"]
        assert all(cpu > 0 for cpu in r["server_cpu_pct"])
        # Each server receives each message of the chat at most once (pub/sub: every other
        # server's; sharded by room: only those of the rooms it hosts).
        assert r["envelopes_received"] <= r["messages"] * r["servers"]
    ratios = [r for r in rows if r["kind"] == "ratio"]
    assert sorted(r["backplane_requested"] for r in ratios) == [_NEW, _OLD]
    assert all(r["cpu_ratio"] > 0 for r in ratios)
