"""A slow consumer's bounded backlog (``slow_consumer="drop-oldest"``), sans I/O.

While a client's transport pushes back, what it should get waits here instead; past
``limit`` bytes the oldest chunks go, and the lines they held are counted so the client can
be told how many it missed when it catches up.
"""

from __future__ import annotations

import collections

__all__ = ["Backlog"]


class Backlog:
    """Chunks of output waiting for a transport to drain, at most ``limit`` bytes of them
    (always at least the newest chunk)."""

    __slots__ = ("_chunks", "dropped", "size")

    def __init__(self) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        #: Bytes held now.
        self.size = 0
        #: Lines dropped since the backlog began.
        self.dropped = 0

    def append(self, data: bytes, limit: int) -> int:
        """Keep ``data``; drop the oldest chunks past ``limit``. Returns the lines dropped."""
        chunks = self._chunks
        chunks.append(data)
        self.size += len(data)
        lines = 0
        while self.size > limit and len(chunks) > 1:
            old = chunks.popleft()
            self.size -= len(old)
            lines += old.count(b"\n")
        self.dropped += lines
        return lines

    def drain(self) -> bytes:
        """Everything held, in order, as one buffer."""
        return b"".join(self._chunks)
