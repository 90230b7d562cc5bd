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

    def announcement(self, message: Message) -> bool: ...

    def private(self, message: Message) -> bool: ...

    def moved(self, name: str, room: str) -> None: ...

    def release(self, name: str) -> None: ...

    def guest_suffix(self) -> str: ...

    def claim(
        self, claimant: object, name: str, room: str, then: Callable[[bool], None]
    ) -> None: ...

    # -- the cluster's log (#12) --------------------------------------------------------------

    @property
    def sequenced(self) -> bool:
        """Messages go through the cluster's log now: numbered there and delivered from it
        on every server, this one included."""
        ...

    @property
    def logged(self) -> bool:
        """The backplane has a log at all (while it is down, local messages get no ids:
        ids are the log's)."""
        ...

    def append(
        self,
        sender: Any,
        room: str,
        texts: list[str],
        timestamp: float,
        refs: list[tuple[int, str]] | None,
    ) -> None:
        """Put a batch of ``sender`` (a peer) in the log; it is delivered from there."""
        ...

    def private_logged(self, sender: Any, message: Message, ref: str | None) -> None: ...

    def find_session(self, token: str, then: Callable[[dict[str, str] | None], None]) -> None:
        """Look ``token`` up among the sessions of every server; ``then(record or None)``."""
        ...

    def session_saved(self, digest: bytes, record: dict[str, str], ttl: float) -> None: ...

    def session_dropped(self, digest: bytes) -> None: ...

    def take(self, name: str, room: str) -> None:
        """``name`` is this server's now (a session resumed here owns it)."""
        ...

    def replay(
        self,
        room: str,
        names: frozenset[str],
        last: int,
        then: Callable[[list[Any], Message | None], None],
    ) -> None:
        """Fetch what a member missed after ``last`` (see ``Backplane.missed``);
        ``then(messages, gap)``."""
        ...

    def history(
        self,
        room: str,
        before: int | None,
        after: int | None,
        limit: int,
        then: Callable[[list[Any]], None],
    ) -> None:
        """Read ``room``'s history from the cluster's log (a room not read here):
        ``then(entries)``, oldest first, as a ``history`` request asks (see ``Log``)."""
        ...

    def resumed(self, name: str) -> None:
        """Tell the other servers that ``name`` resumed its session here."""
        ...

    def remote_name(self, name: str) -> str | None:
        """The name on another server that is ``name`` (whatever its case), or None."""
        ...

    def after_following(self, room: str, then: Callable[[int], None]) -> None:
        """Call ``then(cutoff)`` once ``room`` is read here (its history is in): at once if
        it is. ``cutoff``: the room's newest id that is history for a member who came now."""
        ...

    def reading(self, room: str) -> bool:
        """Whether ``room`` is read here now (its history is in)."""
        ...

    def cutoff(self, room: str) -> int:
        """The newest id of ``room`` delivered live here (for a room read here: history for
        a member who joins it now, what comes after is delivered live)."""
        ...


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
