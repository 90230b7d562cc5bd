"""The timers and bounds of reliable multicast: :class:`ReliableOptions`. Sans-I/O.

``docs/multicast.md`` ("Reliable multicast") explains each one; the defaults suit a LAN
(round trips well under 10 ms) carrying chat, up to a few thousand messages per second.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["ReliableOptions"]


@dataclasses.dataclass(frozen=True, slots=True)
class ReliableOptions:
    """Timers (seconds) and bounds of a reliable :class:`~chatcast.multicast.MulticastChannel`.

    Attributes:
        window_messages: A sender keeps at most this many of its latest datagrams for repair.
        window_bytes: ... and at most this many bytes of them.
        window_seconds: ... and none older than this.
        max_held: Messages a receiver holds back, over all senders, waiting for an earlier
            one to be repaired (``ordered=True``); also the largest gap it tracks per sender.
            Past it, the oldest gaps are given up (gap events) and what follows them is
            delivered, until an eighth of it is free again.
        nack_delay: ``(low, high)``: a receiver that notices a gap waits a random time in
            this range before asking, so that one receiver asks and the others, hearing it,
            do not (SRM's suppression).
        repair_wait: After asking (or hearing another receiver ask), how long to wait for the
            repair before asking again; doubled at each try up to ``max_backoff``.
        max_backoff: The longest wait between two tries.
        max_tries: Rounds of asking before a missing message is given up (rounds suppressed
            by other receivers' NACKs count apart, up to four times as many).
        heartbeat_min: An idle sender's first heartbeat comes this long after its last
            message; each next one after twice the previous interval, up to
            ``heartbeat_max``.
        heartbeat_max: The longest interval between an idle sender's heartbeats.
        linger: After its leave notice, a closing sender answers NACKs this long.
        repair_rate: Repairs a sender sends per second at most (bursts of a quarter of it).
        nack_rate: NACKs a receiver sends per second at most (bursts of a quarter of it).
        repair_holdoff: A sender repairs one message at most once in this time, however
            many receivers ask.

    Raises:
        ValueError: A value out of range (the message names it).
    """

    window_messages: int = 8192
    window_bytes: int = 8 * 1024 * 1024
    window_seconds: float = 60.0
    max_held: int = 8192
    nack_delay: tuple[float, float] = (0.005, 0.03)
    repair_wait: float = 0.05
    max_backoff: float = 1.0
    max_tries: int = 20
    heartbeat_min: float = 0.05
    heartbeat_max: float = 2.0
    linger: float = 1.0
    repair_rate: float = 4000.0
    nack_rate: float = 400.0
    repair_holdoff: float = 0.02

    def __post_init__(self) -> None:
        for name in ("window_messages", "window_bytes", "max_held", "max_tries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in (
            "window_seconds",
            "repair_wait",
            "max_backoff",
            "heartbeat_min",
            "heartbeat_max",
            "repair_rate",
            "nack_rate",
        ):
            _positive(name, getattr(self, name))
        for name in ("linger", "repair_holdoff"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        low_high = self.nack_delay
        if (
            not isinstance(low_high, tuple)
            or len(low_high) != 2
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in low_high)
            or not 0 <= low_high[0] <= low_high[1]
        ):
            raise ValueError(
                f"nack_delay must be (low, high) with 0 <= low <= high, got {low_high!r}"
            )
        if self.heartbeat_max < self.heartbeat_min:
            raise ValueError("heartbeat_max must be at least heartbeat_min")


def _positive(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
