"""Tasks this instance queued a moment ago, as a read of their inbox blob would have found them then.

A `getresult?wait=` (or a submit's `Prefer: wait`) that comes to the instance that queued its task
starts from this view instead of reading the task back (a storage call saved per task in the
round-trip pattern: submit, then wait). The view only decides whether to keep waiting; an answer
always comes from storage or from the outcome a put on this instance handed over (store.result).
Bounded: at most MAX entries, none older than SECONDS (nor than a result lives: the store says).
"""

from __future__ import annotations

import time
from collections import OrderedDict

from .records import Task

SECONDS = 30.0
MAX = 10_000


class RecentTasks:
    def __init__(self, seconds: float = SECONDS) -> None:
        self.seconds = seconds
        self._tasks: OrderedDict[str, tuple[float, Task]] = OrderedDict()

    def remember(self, task: Task) -> None:
        at = time.monotonic()
        self._tasks.pop(task.task_id, None)
        self._tasks[task.task_id] = (at, task)
        while self._tasks and (len(self._tasks) > MAX or next(iter(self._tasks.values()))[0] < at - self.seconds):
            self._tasks.popitem(last=False)

    def get(self, task_id: str) -> Task | None:
        entry = self._tasks.get(task_id)
        if entry is None or entry[0] < time.monotonic() - self.seconds:
            return None
        return entry[1]

    def __len__(self) -> int:
        return len(self._tasks)
