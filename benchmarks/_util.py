"""Small helpers shared by the benchmark's processes."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def raise_nofile(want: int = 65536) -> int:
    """Raise RLIMIT_NOFILE towards ``want`` (root may raise the hard limit too); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (Linux ``/proc``), in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by process ``pid`` (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Child:
    """A child process speaking lines on stdin/stdout; stopped by closing stdin, then by PID."""

    def __init__(
        self, args: Sequence[str], *, stderr_to: Path | None = None, prefix: Sequence[str] = ()
    ) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # The benchmark is run from the repository root; make ``-m benchmarks.x`` work anyway.
        root = str(Path(__file__).resolve().parent.parent)
        # CHATCAST_BENCH_PATH: a directory holding another chatcast to measure (before/after).
        paths = [env.get("CHATCAST_BENCH_PATH"), root, env.get("PYTHONPATH")]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
        stderr = stderr_to.open("ab") if stderr_to is not None else None
        try:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
                # Not the repository: ``-m`` puts the working directory first on sys.path,
                # which would shadow CHATCAST_BENCH_PATH.
                cwd=tempfile.gettempdir(),
            )
        finally:
            if stderr is not None:
                stderr.close()
        self.pid = self.proc.pid

    def readline(self, timeout: float = 30.0) -> str:
        """The child's next stdout line (without the LF); raises if it ends first."""
        assert self.proc.stdout is not None
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise TimeoutError(f"pid {self.pid}: no output within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"pid {self.pid} exited ({self.proc.wait()}) without output")
        return line.rstrip("\n")

    def expect(self, prefix: str, timeout: float = 30.0) -> str:
        """Skip lines until one starts with ``prefix``; return the rest of it."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.1, deadline - time.monotonic()))
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 10.0) -> None:
        """Close stdin (the child's cue to exit); after ``timeout`` s, kill this PID only."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
