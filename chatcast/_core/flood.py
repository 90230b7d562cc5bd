"""Flood control, sans I/O: one token bucket per client, and a second one for its violations.

A client may send ``rate`` messages per second with bursts of ``size``. Each refused message
also goes into a *violation* bucket that drains at ``rate`` per second; a client that fills it
past ``4 * size`` is flooding persistently (the hub then disconnects it). Occasional bursts
over the limit drain away and are forgiven.
"""

from __future__ import annotations

__all__ = ["Bucket"]


class Bucket:
    """One client's token bucket. Time is given by the caller (monotonic seconds).

    Args:
        rate: Tokens (messages) per second.
        size: The most tokens held (the burst); the bucket starts full.
        now: The time it starts.
    """

    __slots__ = ("_at", "_rate", "_size", "_strikes", "_tokens", "refusing")

    def __init__(self, rate: float, size: float, now: float) -> None:
        self._rate = rate
        self._size = size
        self._tokens = size
        self._at = now
        self._strikes = 0.0
        #: The last message was refused (a run of refusals gets one error, not one each).
        self.refusing = False

    def take(self, now: float) -> bool:
        """Take a token for one message at ``now``; False (and a strike) if there is none."""
        elapsed = now - self._at
        self._at = now
        self._tokens = min(self._size, self._tokens + elapsed * self._rate)
        self._strikes = max(0.0, self._strikes - elapsed * self._rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.refusing = False
            return True
        self.refusing = True
        self._strikes += 1.0
        return False

    def strike(self, now: float, count: float) -> None:
        """Add ``count`` violations at ``now`` without a message (a failed ``/op`` costs
        more than its own frame)."""
        elapsed = now - self._at
        self._at = now
        self._tokens = min(self._size, self._tokens + elapsed * self._rate)
        self._strikes = max(0.0, self._strikes - elapsed * self._rate) + count

    @property
    def flooding(self) -> bool:
        """True once the violation bucket is past ``4 * size``: a persistent flood."""
        return self._strikes > 4 * self._size
