"""The sending half of reliable multicast: the repair window, repairs, heartbeats. Sans-I/O.

:class:`RepairSender` remembers a channel's latest datagrams (bounded by count, bytes and age),
answers NACKs addressed to it with repairs (each message at most once per holdoff, at most
``repair_rate`` per second), and says, while idle, what its last sequence number is
(heartbeats backing off from ``heartbeat_min`` to ``heartbeat_max``). Time is an argument;
datagrams to send on the repair port are appended to :attr:`RepairSender.outgoing`.
"""

from __future__ import annotations

import collections
import math
from typing import Final

from .reliable_options import ReliableOptions
from .reliable_wire import HEARTBEAT, LEAVE, REPAIR_MARKER, Control, ControlCodec

__all__ = ["RepairSender", "TokenBucket"]

_NEVER: Final = math.inf


class TokenBucket:
    """``rate`` events per second on average, bursts of ``burst``; time is an argument."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.tokens = self.burst
        self.updated = -_NEVER

    def take(self, now: float) -> bool:
        """Spend one token if there is one; return whether there was."""
        tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True

    def ready_at(self, now: float) -> float:
        """When the next token will be there."""
        tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        return now if tokens >= 1.0 else now + (1.0 - tokens) / self.rate


class RepairSender:
    """What one reliable channel has sent, kept for repair, and its heartbeats.

    Args:
        instance: The channel's sender id (16 hex digits).
        epoch: Its epoch (0 for unsigned channels).
        since_ms: When it started, ms since the Unix epoch (receivers use it to tell whether
            they were there from the start).
        options: Window bounds, heartbeat timers and the repair rate.
        codec: Encodes heartbeats and leave notices.

    Attributes:
        top: The last sequence number sent (0: none).
        outgoing: Datagrams for the repair port, oldest first; the shell sends and clears it.
        nacks_received: NACKs addressed to this sender.
        repairs_sent: Repairs appended to ``outgoing``.
        repairs_throttled: Repairs not sent because of ``repair_rate``.
        repairs_unavailable: Sequence numbers asked for that had left the window.
    """

    def __init__(
        self,
        *,
        instance: str,
        epoch: int,
        since_ms: int,
        options: ReliableOptions,
        codec: ControlCodec,
    ) -> None:
        self._instance = instance
        self._epoch = epoch
        self._since_ms = since_ms
        self._options = options
        self._codec = codec
        self._window: collections.deque[tuple[bytes, float]] = collections.deque()
        self._low = 1
        self._bytes = 0
        self._repaired: dict[int, float] = {}
        self._repaired_order: collections.deque[tuple[float, int]] = collections.deque()
        self._bucket = TokenBucket(options.repair_rate, options.repair_rate / 4)
        self._last_sent = -_NEVER
        self._last_beat = -_NEVER
        self._interval = options.heartbeat_min
        self._squelched = -_NEVER
        #: When :meth:`tick` wants to run next (``inf``: not before the next send).
        self.deadline = _NEVER
        self.top = 0
        self.outgoing: list[bytes] = []
        self.nacks_received = 0
        self.repairs_sent = 0
        self.repairs_throttled = 0
        self.repairs_unavailable = 0

    @property
    def low(self) -> int:
        """The lowest sequence number still in the window (``top + 1`` when it is empty)."""
        return self._low

    @property
    def window(self) -> tuple[int, int]:
        """Datagrams and bytes in the window now."""
        return len(self._window), self._bytes

    def sent(self, seq: int, data: bytes, now: float) -> None:
        """Record datagram ``data``, number ``seq`` (the next one), sent at ``now``."""
        # The hot path: one append and three comparisons per message.
        window = self._window
        window.append((data, now))
        self._bytes += len(data)
        self.top = seq
        self._last_sent = now
        options = self._options
        if (
            len(window) > options.window_messages
            or self._bytes > options.window_bytes
            or window[0][1] < now - options.window_seconds
        ):
            self._evict(now)
        if self.deadline > now + options.heartbeat_min:
            self.deadline = now + options.heartbeat_min

    def _evict(self, now: float) -> None:
        window, options = self._window, self._options
        oldest = now - options.window_seconds
        while window and (
            len(window) > options.window_messages
            or self._bytes > options.window_bytes
            or window[0][1] < oldest
        ):
            data, _ = window.popleft()
            self._bytes -= len(data)
            self._low += 1

    def nack(self, control: Control, now: float) -> None:
        """Answer a NACK addressed to this sender (others are ignored)."""
        if control.sender != self._instance or control.epoch != self._epoch:
            return
        self.nacks_received += 1
        self._evict(now)
        repaired, order = self._repaired, self._repaired_order
        holdoff = now - self._options.repair_holdoff
        while order and order[0][0] < holdoff:
            when, seq = order.popleft()
            if repaired.get(seq) == when:
                del repaired[seq]
        low, top, window = self._low, self.top, self._window
        unavailable = False
        for first, last in control.ranges:
            if first < low:
                unavailable = True
                self.repairs_unavailable += min(last, low - 1) - first + 1
                first = low
            for seq in range(first, min(last, top) + 1):
                if seq in repaired:
                    continue  # repaired a moment ago, for another receiver's NACK
                if not self._bucket.take(now):
                    self.repairs_throttled += 1
                    continue
                self.outgoing.append(REPAIR_MARKER + window[seq - low][0])
                repaired[seq] = now
                order.append((now, seq))
                self.repairs_sent += 1
        if unavailable and self._squelched < holdoff:
            # Tell every receiver at once where the window starts, so they give up at once.
            self._squelched = now
            self.outgoing.append(self._notice(HEARTBEAT, now))

    def tick(self, now: float) -> None:
        """Send a heartbeat if one is due; set :attr:`deadline` to the next one."""
        if now < self.deadline:
            return
        if self.top == 0:
            self.deadline = _NEVER
            return
        options = self._options
        if self._last_sent > self._last_beat:
            # Data went out since the last heartbeat: the data said where we are; start
            # backing off again from the shortest interval after the last message.
            self._interval = options.heartbeat_min
            quiet_at = self._last_sent + options.heartbeat_min
            if now < quiet_at:
                self.deadline = quiet_at
                return
        self._evict(now)
        self.outgoing.append(self._notice(HEARTBEAT, now))
        self._last_beat = now
        self._interval = min(self._interval * 2, options.heartbeat_max)
        self.deadline = now + self._interval

    def leave(self, now: float) -> bytes:
        """The leave notice: the last sequence number, and how long NACKs are answered."""
        self._evict(now)
        self.deadline = _NEVER
        return self._notice(LEAVE, now)

    def _notice(self, kind: str, now: float) -> bytes:
        return self._codec.encode(
            Control(
                kind,
                self._instance,
                self._epoch,
                int(now * 1000),
                top=self.top,
                low=self._low,
                since_ms=self._since_ms,
                linger_ms=int(self._options.linger * 1000) if kind == LEAVE else 0,
            )
        )
