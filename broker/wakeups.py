"""In-process wake-ups: a submit wakes the long-polls waiting on its model at once, a committed
result wakes the `getresult?wait=` calls waiting on its task.

Other instances of the app are not reached this way; waiters poll storage as well, so a wake-up
only ever makes an answer come sooner. An entry lives only while somebody watches its key, so
keys nobody waits on (every task id ever asked about) do not pile up. A wake-up may carry what the
waiters wait for (a committed outcome), which saves them reading it back from storage.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any


class Ticket(asyncio.Event):
    """What a watcher waits on; `value` is what the notify carried, if anything."""

    value: Any = None


class Wakeups:
    def __init__(self) -> None:
        self._events: dict[str, tuple[Ticket, list[int]]] = {}  # key -> (ticket, [watchers])

    @contextlib.contextmanager
    def watch(self, key: str) -> Iterator[Ticket]:
        """Enter before checking storage: a notify that lands after this wakes the wait at once."""
        entry = self._events.get(key)
        if entry is None:
            entry = self._events[key] = (Ticket(), [0])
        event, watchers = entry
        watchers[0] += 1
        try:
            yield event
        finally:
            watchers[0] -= 1
            if watchers[0] == 0 and self._events.get(key) is entry:
                del self._events[key]

    def notify(self, key: str, value: Any = None) -> None:
        entry = self._events.pop(key, None)
        if entry is not None:
            entry[0].value = value
            entry[0].set()

    def __len__(self) -> int:
        """Keys being watched now."""
        return len(self._events)

    @staticmethod
    async def wait(ticket: asyncio.Event, timeout: float) -> bool:
        if timeout <= 0:
            return ticket.is_set()
        try:
            await asyncio.wait_for(ticket.wait(), timeout)
            return True
        except TimeoutError:
            return False
