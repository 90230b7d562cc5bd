"""Shared test helpers: timeouts scaled by one environment variable."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

#: Multiply every test timeout by this (slow CI machines: CHATCAST_TIMEOUT_SCALE=3).
SCALE = float(os.environ.get("CHATCAST_TIMEOUT_SCALE", "1"))


def timeout(seconds: float = 5.0) -> float:
    """Return ``seconds`` scaled for this machine; use with ``asyncio.timeout()``."""
    return seconds * SCALE


async def wait_until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait until ``predicate()`` is true, checking every 10 ms; fail after ``seconds``.

    For state that has no event to wait on (a server's counters). The deadline makes a
    missing state change a failure, never a hang; the poll interval is not a guess at how
    long anything takes.
    """
    async with asyncio.timeout(timeout(seconds)):
        while not predicate():  # noqa: ASYNC110 - polling a condition under a deadline
            await asyncio.sleep(0.01)
