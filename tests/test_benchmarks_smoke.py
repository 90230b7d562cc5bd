"""The benchmark suite's smoke run: it must keep working, and count every delivery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert {"burst", "paced", "scale"} <= workloads
    assert all(row["all_counted"] for row in report["rows"])
    for row in report["rows"]:
        if row["workload"] in ("burst", "paced"):
            assert row["lost"] == 0
            assert row["delivered"] == row["expected"] > 0
