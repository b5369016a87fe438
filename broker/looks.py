"""When this instance last looked at each model's queue, and what it found: what lets the long-polls
on one model in one instance share their storage polls.

- A long-poll that wakes on its timer skips its receive if another one here began a look while it
  slept (`within`): one storage poll per backoff interval per instance, however many wait.
- A claim that arrives just after a look here found the queue short (fewer messages than it asked
  for), with no task queued or given back here since (`announced`) and no look coming back full
  since, does not look at once (`quiet`) if other long-polls are waiting here (the store checks
  that): it waits with them and shares their polls. A lone claim always looks first. What this
  instance queues wakes a waiter (wakeups.notify_one); what other instances queue, and leases that
  run out, are found by the shared polls, as they are for every waiter.
- A long-poll woken for a task queued or given back here does not look if a look here began after
  that (`covered`): that look will find the task (or, coming back full or failing, wake a waiter in
  turn). Before, the woken one looked all the same, and with several workers it mostly found nothing.

Bounded: at most MAX models are remembered; past that they are forgotten, which only costs a look.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

MAX = 1000


@dataclass
class _Seen:
    began: float = float("-inf")  # when the last look began
    short: float = float("-inf")  # when the last look that came back short began
    announced: int = 0  # tasks queued or given back here, counted
    announced_at: float = float("-inf")  # when the last of them was
    short_at: int = -1  # the count when that short look began


class Looks:
    def __init__(self) -> None:
        self._models: dict[str, _Seen] = {}

    def _get(self, model: str) -> _Seen:
        seen = self._models.get(model)
        if seen is None:
            if len(self._models) >= MAX:
                self._models.clear()
            seen = self._models[model] = _Seen()
        return seen

    def began(self, model: str) -> tuple[float, int]:
        """A look at `model`'s queue begins: what `ended` needs to know of it."""
        seen = self._get(model)
        seen.began = time.monotonic()
        return seen.began, seen.announced

    def ended(self, model: str, look: tuple[float, int], short: bool) -> None:
        seen = self._get(model)
        if short:
            seen.short, seen.short_at = look
        else:  # there may be more now, whatever an earlier look found
            seen.short, seen.short_at = float("-inf"), -1

    def announced(self, model: str) -> None:
        """A task was queued or given back here: the queue is not known short any more."""
        seen = self._get(model)
        seen.announced += 1
        seen.announced_at = time.monotonic()

    def covered(self, model: str) -> bool:
        """A look here began after the last task was queued or given back here: it will see that task."""
        seen = self._models.get(model)
        return seen is not None and seen.began > seen.announced_at

    def within(self, model: str, seconds: float) -> bool:
        seen = self._models.get(model)
        return seen is not None and time.monotonic() - seen.began < seconds

    def quiet(self, model: str, seconds: float) -> bool:
        """A look that began within `seconds` found the queue short, and nothing was queued here since."""
        seen = self._models.get(model)
        return (seen is not None and seen.short_at == seen.announced
                and time.monotonic() - seen.short < seconds)
