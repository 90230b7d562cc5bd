"""Summarise a py-spy ``--format raw`` profile: ``python -m benchmarks.profile_summary FILE``.

Prints the functions with the most samples, by own time (the innermost frame) and by total
time (anywhere on the stack), as percentages of the samples that were not idle in the
event loop's ``select``.
"""

from __future__ import annotations

import collections
import sys


def summarise(path: str, top: int = 25) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = idle = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            frames = stack.split(";")
            if any("_wait_stdin_then" in f for f in frames):
                continue  # the benchmark's own stdin watcher thread, blocked in read()
            if "select (selectors.py" in frames[-1] or "poll" in frames[-1].split(" ")[0]:
                idle += count
                continue
            samples += count
            own[_short(frames[-1])] += count
            for name in {_short(f) for f in frames}:
                total[name] += count
    out = [f"{path}: {samples} busy samples, {idle} idle in select"]
    for title, counter in (("own", own), ("total", total)):
        out.append(f"-- by {title} time")
        for name, count in counter.most_common(top):
            out.append(f"{100 * count / max(1, samples):6.1f}%  {name}")
    return "\n".join(out)


def _short(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"
    name, _, where = frame.partition(" (")
    filename = where.rstrip(")").rpartition(":")[0].rpartition("/")[2]
    return f"{name} ({filename})"


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(summarise(arg))
