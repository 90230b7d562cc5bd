"""What the core needs from the world outside it, as structural types (no I/O imports).

The hub never imports asyncio: it is handed a :class:`Clock` (an asyncio event loop is one
as it is), each peer's :class:`Transport` (an ``asyncio.Transport`` is one as it is), and,
with a backplane, a :class:`ClusterLink`. Tests hand it fakes of each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .wire import Message

__all__ = ["Clock", "ClusterLink", "Recorder", "Store", "Timer", "Transport"]


class Timer(Protocol):
    """A scheduled call that can be called off (``asyncio.TimerHandle``)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic time, timers and next-turn calls (``asyncio.AbstractEventLoop`` is one)."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer: ...

    def call_soon(self, callback: Callable[..., object], *args: Any) -> object:
        """Call ``callback(*args)`` on the next turn, before timers and new input."""
        ...


class Transport(Protocol):
    """One peer's byte pipe (``asyncio.Transport`` is one). Writes never block."""

    def write(self, data: bytes) -> None: ...

    def write_eof(self) -> None: ...

    def can_write_eof(self) -> bool: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def is_closing(self) -> bool: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...

    def get_write_buffer_size(self) -> int: ...


class ClusterLink(Protocol):
    """The hub's view of the other servers (``chatcast._cluster.Cluster``).

    Outgoing calls never wait; a name claim answers later through ``then``.
    """

    #: Names on other servers, and their rooms (a replica kept by the link).
    remote: dict[str, str]

    def batch(self, sender: str, room: str, texts: list[str], timestamp: float) -> None: ...

    def notice(self, message: Message) -> None: ...

    def announcement(self, message: Message) -> None: ...

    def private(self, message: Message) -> bool: ...

    def moved(self, name: str, room: str) -> None: ...

    def release(self, name: str) -> None: ...

    def guest_suffix(self) -> str: ...

    def claim(
        self, claimant: object, name: str, room: str, then: Callable[[bool], None]
    ) -> None: ...


class Recorder(Protocol):
    """Where the hub hands every numbered room message and announcement to be kept on disk
    (``chatcast.store.SQLiteStore``). Never blocks: the store writes in batches elsewhere.

    Each item is a :data:`~chatcast._core.history.Entry`:
    ``(id, timestamp, kind, sender, text, room, to)``; ``room`` is ``None`` for an
    announcement to everyone.
    """

    def record(
        self, items: list[tuple[int, float, str, str, str, str | None, str | None]]
    ) -> None: ...


class Store(Recorder, Protocol):
    """A message store a server opens at start and closes at the end
    (``chatcast.store.SQLiteStore``)."""

    def open(self) -> tuple[int, list[Message]]:
        """Open (blocking: run it in a thread); return the next id and the kept messages.

        Raises:
            StoreError: The store cannot be used.
        """
        ...

    async def aclose(self) -> None:
        """Write what is queued, then close."""
        ...

    @property
    def state(self) -> dict[str, str]:
        """Documents kept across restarts (by :meth:`save_state`), as read by :meth:`open`."""
        ...

    def save_state(self, key: str, value: str) -> None:
        """Keep a small document (the server's moderation records) across restarts."""
        ...
