"""In-process wake-ups: a submit wakes a long-poll waiting on its model at once (one per task queued:
`notify_one`, so that N idle workers do not all ask storage for the one task), a committed result
wakes the `getresult?wait=` calls waiting on its task (all of them: `notify`).

Other instances of the app are not reached this way; waiters poll storage as well, so a wake-up
only ever makes an answer come sooner. An entry lives only while somebody watches its key, so
keys nobody waits on (every task id ever asked about) do not pile up. A wake-up may carry what the
waiters wait for (a committed outcome), which saves them reading it back from storage.

`notify_one` wakes the watcher that began watching first among those waiting now; when none is
waiting (all are looking at storage already) it wakes them all, so that each looks once more
rather than miss what was just queued.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any


class Ticket(asyncio.Event):
    """What a watcher waits on; `value` is what the notify carried, if anything."""

    value: Any = None
    waiting: bool = False  # in Wakeups.wait now


class Wakeups:
    def __init__(self) -> None:
        self._events: dict[str, list[Ticket]] = {}  # key -> its watchers' tickets, in the order they came

    @contextlib.contextmanager
    def watch(self, key: str) -> Iterator[Ticket]:
        """Enter before checking storage: a notify that lands after this wakes the wait at once."""
        ticket = Ticket()
        tickets = self._events.setdefault(key, [])
        tickets.append(ticket)
        try:
            yield ticket
        finally:
            tickets.remove(ticket)
            if not tickets and self._events.get(key) is tickets:
                del self._events[key]

    def notify(self, key: str, value: Any = None) -> None:
        """Wake every watcher of `key`, handing each `value`."""
        for ticket in self._events.get(key, ()):
            ticket.value = value
            ticket.set()

    def notify_one(self, key: str) -> None:
        """Wake the first watcher of `key` among those waiting now, or all of them if none is waiting."""
        tickets = self._events.get(key, ())
        for ticket in tickets:
            if ticket.waiting and not ticket.is_set():
                ticket.set()
                return
        for ticket in tickets:
            ticket.set()

    def waiting(self, key: str) -> int:
        """Watchers of `key` waiting now (not looking at storage)."""
        return sum(1 for ticket in self._events.get(key, ()) if ticket.waiting)

    def __len__(self) -> int:
        """Keys being watched now."""
        return len(self._events)

    @staticmethod
    async def wait(ticket: Ticket, timeout: float) -> bool:
        if timeout <= 0 or ticket.is_set():
            return ticket.is_set()
        ticket.waiting = True
        try:
            await asyncio.wait_for(ticket.wait(), timeout)
            return True
        except TimeoutError:
            return ticket.is_set()  # set just as the time ran out: it was woken all the same
        finally:
            ticket.waiting = False
