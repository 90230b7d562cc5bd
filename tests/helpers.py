"""Shared test helpers: timeouts scaled by one environment variable."""

from __future__ import annotations

import os

#: Multiply every test timeout by this (slow CI machines: CHATCAST_TIMEOUT_SCALE=3).
SCALE = float(os.environ.get("CHATCAST_TIMEOUT_SCALE", "1"))


def timeout(seconds: float = 5.0) -> float:
    """Return ``seconds`` scaled for this machine; use with ``asyncio.timeout()``."""
    return seconds * SCALE
