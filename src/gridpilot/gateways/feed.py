"""The event feed every gateway client hands its reader: ``async for event in client`` with
no callbacks; bounded, so a consumer that falls behind loses the oldest events, counted."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

E = TypeVar("E")


class EventFeed(Generic[E]):
    def __init__(self, *, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError("max_pending_events must be at least 1")
        self._queue: asyncio.Queue[E | None] = asyncio.Queue()  # None: closed
        self._max_pending = max_pending

    def put(self, event: E) -> bool:
        """Queue an event; True when the oldest one had to be dropped to make room."""
        dropped = self._queue.qsize() >= self._max_pending
        if dropped:
            self._queue.get_nowait()
        self._queue.put_nowait(event)
        return dropped

    def close(self) -> None:
        """End the iteration once the queued events are read."""
        self._queue.put_nowait(None)

    def __aiter__(self) -> EventFeed[E]:
        return self

    async def __anext__(self) -> E:
        event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)  # later iterations end too
            raise StopAsyncIteration
        return event
