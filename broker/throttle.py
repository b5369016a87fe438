"""At most one run of an action per interval per key, the last call of a burst kept: what makes a
storage write that follows requests (a model's signal blob touched when a task is queued, a
worker's presence blob written when it polls) cost one write per interval however often the
requests come.

- A call for a key that has not run within the interval, and is not running, runs the action at
  once with the call's value (its caller awaits it).
- Any other call does not run it: one run is due instead, once the interval since the key's last
  run began has passed and that run has ended. However many calls come meanwhile there is one run
  due per key, and it gets the last call's value, so the last call of a burst is not lost.
- Runs for one key never overlap, so they land in the order they were asked for.
- The action handles its own errors (a run that is due has nobody to raise to).
- Bounded: at most `most` keys' last runs are remembered (past that all are forgotten, which only
  allows an extra run); a key has at most one run in flight and one due, and those go when they end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any


@dataclass
class _Due:
    """A key's run due: the value it will get (the last call's), and the task that will run it."""

    value: Any
    task: asyncio.Task | None = None


class Throttle:
    def __init__(self, interval: float, action: Callable[[Hashable, Any], Awaitable[None]], most: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.action, self.most, self.clock = interval, action, most, clock
        self._ran: dict[Hashable, float] = {}  # key -> when its last run began
        self._running: dict[Hashable, asyncio.Future] = {}  # key -> its run in flight, done when it ends
        self._due: dict[Hashable, _Due] = {}  # key -> its run due

    def due(self, key: Hashable) -> bool:
        """A run is due for `key`: a call now only changes the value it gets."""
        return key in self._due

    async def __call__(self, key: Hashable, value: Any = None) -> None:
        due = self._due.get(key)
        if due is not None:
            due.value = value
            return
        at, last = self.clock(), self._ran.get(key)
        if key not in self._running and (last is None or at - last >= self.interval):
            await self._run(key, value)
            return
        due = self._due[key] = _Due(value)
        due.task = asyncio.create_task(self._later(key, 0.0 if last is None else last + self.interval - at))

    async def _later(self, key: Hashable, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            running = self._running.get(key)
            if running is not None:
                await asyncio.wait([running])  # (not `await running`: a cancel here must not cancel it)
        finally:
            value = self._due.pop(key).value
        await self._run(key, value)

    async def _run(self, key: Hashable, value: Any) -> None:
        if len(self._ran) >= self.most and key not in self._ran:
            self._ran.clear()
        self._ran[key] = self.clock()
        ended = self._running[key] = asyncio.get_running_loop().create_future()
        try:
            await self.action(key, value)
        finally:
            del self._running[key]
            ended.set_result(None)
