"""In-process wake-ups: a submit wakes the long-polls waiting on its model at once, a committed
result wakes the `getresult?wait=` calls waiting on its task.

Other instances of the app are not reached this way; waiters poll storage as well, so a wake-up
only ever makes an answer come sooner.
"""

from __future__ import annotations

import asyncio


class Wakeups:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def ticket(self, key: str) -> asyncio.Event:
        """Take before checking storage: a notify that lands after this wakes the wait at once."""
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = asyncio.Event()
        return event

    def notify(self, key: str) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    @staticmethod
    async def wait(ticket: asyncio.Event, timeout: float) -> bool:
        if timeout <= 0:
            return ticket.is_set()
        try:
            await asyncio.wait_for(ticket.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
