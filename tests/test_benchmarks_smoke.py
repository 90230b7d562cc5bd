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
