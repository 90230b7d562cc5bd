"""The asyncio face of a hub's events: :class:`EventStream` (``BroadcastServer.events()``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from ._core.hub import Hub
from .message import Message

__all__ = ["EventStream", "end_all"]


class EventStream:
    """An async iterator over a server's events; see :meth:`BroadcastServer.events`.

    The hub hands each event to ``_put``, which never waits: a reader more than
    ``maxsize`` events behind loses the newest ones (counted in :attr:`dropped` and in the
    server's ``events_dropped``).
    """

    def __init__(self, hub: Hub, maxsize: int, *, ended: bool = False) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue(maxsize)
        self._dropped = 0
        self._done = ended
        if not ended:
            hub.rooms.subscribe(self._put)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Message:
        if self._done and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            await self.aclose()
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        """Unsubscribe; iteration ends."""
        self._end(closing=False)

    @property
    def dropped(self) -> int:
        """Events this reader lost by falling behind."""
        return self._dropped

    def _put(self, event: Message) -> bool:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._dropped += 1
            return False
        return True

    def _end(self, *, closing: bool) -> None:
        """The server closed, or the reader left: iteration ends after what is queued.

        A full queue makes room for the server's end marker by losing its oldest event.
        """
        self._hub.rooms.unsubscribe(self._put)
        if self._done:
            return
        self._done = True
        if closing and self._queue.full():
            self._queue.get_nowait()
        if not self._queue.full():
            self._queue.put_nowait(None)


def end_all(streams: Iterable[EventStream]) -> None:
    """The server is closing: each stream ends after what it has queued."""
    for stream in list(streams):
        stream._end(closing=True)
