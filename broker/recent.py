"""Tasks this instance queued or ended a moment ago, as a read of storage would have found them then.

A `getresult` (or a submit's `Prefer: wait`) that comes to the instance that queued or ended its task
starts from this view instead of reading the task back: a task queued here is waited on without a
first look (a put on this instance hands its outcome over; one on another instance is found by
polling), and a task ended here is answered with the outcome and result this instance committed.
An outcome never changes once written (the first wins), so that answer is what storage holds; a
queued view only decides whether to keep waiting, and an answer for it always comes from storage or
from a put's hand-over (store.result).

Bounded: at most MAX entries, none older than SECONDS (nor than a result lives: the store says),
result bodies only up to MAX_BODY each and MAX_BYTES in all (a larger result is read from storage).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import NamedTuple

from .records import Task

SECONDS = 30.0
MAX = 10_000
MAX_BODY = 64 * 1024
MAX_BYTES = 16 * 1024 * 1024


class Seen(NamedTuple):
    at: float
    task: Task
    body: bytes | None  # an ended task's result, when kept


class RecentTasks:
    def __init__(self, seconds: float = SECONDS) -> None:
        self.seconds = seconds
        self._tasks: OrderedDict[str, Seen] = OrderedDict()
        self._bytes = 0  # result bodies held

    def remember(self, task: Task, body: bytes | None = None) -> None:
        """A task queued here (`task` as a read would find it), or ended here with `body` its result."""
        at = time.monotonic()
        known = self._tasks.get(task.task_id)
        if known is not None and known.task.finished and not task.finished:
            return  # ended here already (a fast worker, before its submit got to this): keep that
        self._forget(task.task_id)
        if body is not None and len(body) > MAX_BODY:
            body = None
        self._tasks[task.task_id] = Seen(at, task, body)
        self._bytes += len(body or b"")
        while self._tasks:
            oldest = next(iter(self._tasks.values()))
            if len(self._tasks) <= MAX and self._bytes <= MAX_BYTES and oldest.at >= at - self.seconds:
                break
            self._forget(oldest.task.task_id)

    def get(self, task_id: str) -> Seen | None:
        seen = self._tasks.get(task_id)
        if seen is None or seen.at < time.monotonic() - self.seconds:
            return None
        return seen

    def _forget(self, task_id: str) -> None:
        seen = self._tasks.pop(task_id, None)
        if seen is not None:
            self._bytes -= len(seen.body or b"")

    def __len__(self) -> int:
        return len(self._tasks)
