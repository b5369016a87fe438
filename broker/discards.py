"""Blob deletes that can wait, sent in batches: the payload of a task whose outcome is committed and
whose message is deleted goes in one Blob Batch request with others, instead of a call of its own.

Only a payload nobody needs any more is given here: its task has an outcome (every reader looks at
the outbox first), its message was deleted in the same step (and should that delete have failed,
a redelivery reads the outbox and finds the outcome), and its id is never reused (a plain submit's
random id: an Idempotency-Key's task may be submitted again under the same name, so its payload is
deleted at once, conditionally).

Invariants:
- bounded: at most BATCH names are held, and at most SENDING batches are in flight; the add that
  fills a batch sends it in the background, or, with SENDING in flight already, itself (awaited),
  so a burst against a slow storage pays in its own requests and nothing here grows with load;
- a name is held at most SECONDS before its batch is sent (a timer on the event loop);
- best effort: a batch that fails, or never goes (the instance stopped first), leaves its blobs to
  the inbox sweep, which meets them past their queued TTL, finds their outcome and deletes them, or
  to the result cleanup, whichever comes first (store.sweep, store.cleanup).
"""

from __future__ import annotations

import asyncio
import logging

from .storage import Container

log = logging.getLogger("broker.discards")

BATCH = 256  # names in one Blob Batch request, at most (storage's limit)
SECONDS = 0.5
SENDING = 4


class Discards:
    def __init__(self, container: Container, seconds: float = SECONDS) -> None:
        self.container = container
        self.seconds = seconds
        self._names: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task] = set()

    async def add(self, name: str) -> None:
        """Delete the blob `name` soon, with others."""
        self._names.append(name)
        if len(self._names) >= BATCH:
            if len(self._sending) >= SENDING:
                await self._send(self._take())
            else:
                self._background(self._take())
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.seconds, self._due)

    def __len__(self) -> int:
        return len(self._names)

    async def flush(self) -> None:
        """Send what is held now, and wait for the batches in flight (a shutdown, a test)."""
        names = self._take()
        if names:
            await self._send(names)
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    def _take(self) -> list[str]:
        names, self._names = self._names, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return names

    def _due(self) -> None:
        self._timer = None
        names = self._take()
        if names:
            self._background(names)

    def _background(self, names: list[str]) -> None:
        """Send a batch apart from the request that filled it (a client going away does not cancel it)."""
        sending = asyncio.ensure_future(self._send(names))
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    async def _send(self, names: list[str]) -> None:
        try:
            await self.container.delete_batch(names)
        except Exception as exc:  # noqa: BLE001 - the sweep deletes what this could not
            log.warning("%d payload deletes failed (%s); the inbox sweep will delete them", len(names),
                        type(exc).__name__)
