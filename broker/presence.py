"""Where a model's queue stands, for its clients and for schedulers: how many workers serve it now,
how many tasks they hold, where a queued task is in line, how long the oldest has waited.

- Workers: each claim (and each look for work of an idle worker) says who the worker is, how often
  it polls, and how many tasks it holds (X-Worker-Id, X-Worker-Poll, X-Worker-Tasks). The broker
  keeps a blob per worker and model (`signals/workers/<model>/<worker id>`, its metadata those
  figures), written every SEEN_EVERY seconds per worker and instance at most, or sooner when its
  poll interval changes, it turns busy or idle, or its task count halves or doubles from 4 up (so a
  busy worker's task count may be that old); but never twice within WRITE_GAP seconds per worker
  and instance: a change within that gap of the last write is written at its end (throttle.py),
  with the figures the worker gave last. So a worker that turns busy and idle at every claim, or a
  client that sends new figures with every request, costs a write per WRITE_GAP, not one a request.
  A worker is online while it polled within two of its poll intervals.
- The queue: a peek at its first 32 visible messages (a peek changes nothing) names the tasks in
  line, exactly up to 32; past them a position is an estimate (the queue's approximate count less
  the tasks held). Peeks and listings are shared by every request of an instance for CACHE seconds,
  and so is one being taken: requests that come while it is in flight wait for it (`_shared`)
  rather than each taking its own.
  A task this instance queued since its view was taken stands behind everything in that view, in
  the order this instance queued them (no storage call: a submit's own answer needs none). A task
  this instance queued before the view was taken, and missing from it, has left the line already (a
  worker took it) or stands past its first PEEK: its place is estimated, with no call either. Only a
  task missing from a short view that another instance queued has the line looked at again. Those
  lists go with the newest view begun: a request holding an older one (another began while it
  waited) takes a fresh one rather than read them against it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .records import TaskMessage, iso
from .storage import Storage
from .throttle import Throttle

SEEN_EVERY = 5.0
WRITE_GAP = 1.0
CACHE = 1.0
PEEK = 32  # what one peek returns at most
WORKER_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
MAX_REMEMBERED = 10_000
MAX_JOINED = 10_000  # tasks queued since a view, remembered in all


def _figures(interval: float, held: int) -> str:
    """What a worker's blob is written again for when it changes."""
    return f"{interval:g}/{_level(held)}"


def _level(held: int) -> int:
    """0 (idle), 1 (1-3 tasks), 2 (4-7), 3 (8-15), ...: a change of level is worth a write."""
    return 0 if held <= 0 else max(1, held.bit_length() - 1)


@dataclass(frozen=True)
class Workers:
    online: int
    last_seen: float | None
    running: int  # tasks the online workers hold


@dataclass(frozen=True)
class Line:
    ahead: dict[str, int]  # task id -> tasks before it, for the first PEEK in line
    depth: int  # the queue's approximate count, held tasks included
    oldest: float | None  # when the task at the head of the line was submitted
    view: int = 0  # which of this instance's views it is: the tasks queued here are listed against the newest


class Presence:
    def __init__(self, storage: Storage, clock=time.time, monotonic=time.monotonic) -> None:
        self.storage = storage
        self.now, self.monotonic = clock, monotonic
        self._written: dict[tuple[str, str], tuple[float, str]] = {}  # (model, worker) -> (when, what)
        self._writes = Throttle(WRITE_GAP, self._write, MAX_REMEMBERED, monotonic)
        self._workers: dict[str, tuple[float, Workers]] = {}
        self._lines: dict[str, tuple[float, Line]] = {}
        self._taking: dict[tuple[str, str], asyncio.Future] = {}  # (what, model) -> the look in flight
        self._joined: dict[str, dict[str, int]] = {}  # model -> tasks this instance queued since its view
        self._before: dict[str, dict[str, int]] = {}  # model -> those queued before it (since the view before)
        self._joined_count = 0  # tasks in both, counted
        self._views = 0  # views of a line begun here, counted
        self._newest: dict[str, int] = {}  # model -> its newest view begun: _joined and _before go with it

    def joined(self, model: str, task_id: str) -> None:
        """This instance queued `task_id` (after every task in its current view of the line; a task
        queued while a view is being taken is in the next one's list). At most MAX_JOINED in all,
        whatever models come: past that they are forgotten, and a look at the line places them."""
        if self._joined_count >= MAX_JOINED:
            self._joined.clear()
            self._before.clear()
            self._joined_count = 0
        since = self._joined.setdefault(model, {})
        if task_id not in since:
            since[task_id] = len(since)
            self._joined_count += 1

    async def seen(self, model: str, worker: str | None, interval: float, held: int) -> None:
        """A worker of `model` polled (best effort: presence is a courtesy, never a reason to fail)."""
        if not worker or not WORKER_ID.fullmatch(worker):
            return
        # Written again when SEEN_EVERY has passed, or when the worker's poll interval changes, it
        # turns busy or idle, or its count of tasks halves or doubles from 4 up: a claim per batch
        # would otherwise cost a write each (small batches, many workers: the count moves by one or
        # two every claim).
        key = (model, worker)
        if self._writes.due(key) or not self._unchanged(key, interval, held):
            await self._writes(key, (interval, held))  # (a write that is due takes these figures)

    def _unchanged(self, key: tuple[str, str], interval: float, held: int) -> bool:
        last = self._written.get(key)
        return last is not None and last[1] == _figures(interval, held) and self.monotonic() - last[0] < SEEN_EVERY

    async def _write(self, key: tuple[str, str], figures: tuple[float, int]) -> None:
        interval, held = figures
        if self._unchanged(key, interval, held):  # changed back since the write was due
            return
        if len(self._written) >= MAX_REMEMBERED:
            self._written.clear()
        self._written[key] = (self.monotonic(), _figures(interval, held))
        model, worker = key
        try:
            await self.storage.ensure_containers()
            await self.storage.signals.put(f"workers/{model}/{worker}", b"",
                                           {"interval": f"{interval:g}", "held": str(held)}, "application/octet-stream")
        except Exception:  # noqa: BLE001
            pass

    async def workers(self, model: str) -> Workers:
        cached = self._workers.get(model)
        if cached is not None and self.monotonic() - cached[0] < CACHE:
            return cached[1]
        return await self._shared(("workers", model), lambda: self._list_workers(model))

    async def _list_workers(self, model: str) -> Workers:
        await self.storage.ensure_containers()
        at, online, running, last = self.now(), 0, 0, None
        continuation = None
        while True:
            blobs, continuation = await self.storage.signals.page(continuation, 1000, metadata=True,
                                                                  prefix=f"workers/{model}/")
            for blob in blobs:
                seen = blob.modified
                last = max(last or seen, seen)
                try:
                    interval, held = float(blob.metadata.get("interval", 60)), int(blob.metadata.get("held", 0))
                except ValueError:
                    continue
                if seen >= at - 2 * max(interval, 1.0) - 5:  # two poll intervals, and a request's slack
                    online += 1
                    running += held
            if continuation is None:
                break
        found = Workers(online, last, running)
        self._remember(self._workers, model, found)
        return found

    async def line(self, model: str, fresh: bool = False) -> Line:
        """The cached view of `model`'s line, or a new one; `fresh`: one taken from now on."""
        cached = self._lines.get(model)
        if not fresh and cached is not None and self.monotonic() - cached[0] < CACHE:
            return cached[1]
        return await self._shared(("line", model), lambda: self._view(model), join=not fresh)

    async def _view(self, model: str) -> Line:
        # The view about to be taken holds the tasks queued here since the last one, or they have left
        # the line already, or stand past its first PEEK.
        self._joined_count -= len(self._before.pop(model, {}))
        self._before[model] = self._joined.pop(model, {})
        self._views += 1
        view = self._views
        if len(self._newest) >= MAX_REMEMBERED:
            self._newest.clear()
        self._newest[model] = view
        peeked, depth = await asyncio.gather(self.storage.queues.peek(model, PEEK), self.storage.queues.depth(model))
        ahead, oldest = {}, None
        for message in peeked:
            task = TaskMessage.parse(message.content)
            if task is None or task.task_id in ahead:
                continue
            ahead[task.task_id] = len(ahead)
            if oldest is None and task.created is not None:
                oldest = task.created
        found = Line(ahead, depth, oldest, view)
        if self._newest.get(model) == view:  # (a view begun since will be the one to keep)
            self._remember(self._lines, model, found)
        return found

    async def describe(self, task_id: str, model: str) -> dict:
        """What a queued task's status document adds: its place in line and its model's workers."""
        line, workers = await asyncio.gather(self.line(model), self.workers(model))
        if line.view != self._newest.get(model):  # a view begun since holds what was queued here before it
            line = await self.line(model, fresh=True)
        since = self._joined.get(model, {})
        if task_id not in line.ahead and task_id in since:  # queued here since the view: behind all of it
            behind = len(line.ahead) if len(line.ahead) < PEEK else max(PEEK, line.depth - workers.running)
            return self._described(behind + since[task_id], workers)
        if task_id not in line.ahead and len(line.ahead) < PEEK and task_id not in self._before.get(model, {}):
            line = await self.line(model, fresh=True)  # queued elsewhere since the view
        position = line.ahead.get(task_id)
        if position is None:  # not among the first PEEK in line: an estimate
            position = max(len(line.ahead), line.depth - workers.running - 1)
        return self._described(position, workers)

    def _shared(self, key: tuple[str, str], take: Callable[[], Awaitable], join: bool = True) -> Awaitable:
        """What `take()` answers, taken once for all the callers that come while it is in flight (unless
        `join` is False: a look that began before this call will not do, so a new one begins, and the
        callers that come after share that one). A caller that goes away does not stop it."""
        flight = self._taking.get(key) if join else None
        if flight is None:
            flight = self._taking[key] = asyncio.ensure_future(take())

            def landed(done: asyncio.Future) -> None:
                if self._taking.get(key) is done:
                    del self._taking[key]
                if not done.cancelled():
                    done.exception()  # each caller has it raised; nothing is left unretrieved

            flight.add_done_callback(landed)
        return asyncio.shield(flight)

    @staticmethod
    def _described(position: int, workers: Workers) -> dict:
        return {"queue_position": position,
                "workers": {"online": workers.online, "last_seen": iso(workers.last_seen)}}

    def _remember(self, cache: dict, model: str, value) -> None:
        if len(cache) >= MAX_REMEMBERED:
            cache.clear()
        cache[model] = (self.monotonic(), value)

    async def sweep(self) -> int:
        """Delete the records of workers not seen for an hour."""
        await self.storage.ensure_containers()
        at, gone, continuation = self.now(), [], None
        while True:
            blobs, continuation = await self.storage.signals.page(continuation, 5000, prefix="workers/")
            gone += [blob.name for blob in blobs if blob.modified < at - 3600]
            if continuation is None:
                break
        for name in gone:
            await self.storage.signals.delete(name)
        return len(gone)
