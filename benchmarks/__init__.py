"""chatcast's benchmark suite (issue 5); see ``docs/performance.md``.

Run ``python -m benchmarks`` (full) or ``python -m benchmarks --quick`` (a smoke run with tiny
counts that checks every delivery and never judges time). Servers, load generators and
multicast receivers each run in their own process; this package is not installed with chatcast.
"""
