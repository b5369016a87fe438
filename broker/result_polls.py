"""When a `getresult` wait looks for an outcome that another instance commits (store.result).

An outcome this instance commits is handed to its waits at once; one committed elsewhere is found
only by looking at the outbox. The plain schedule looks FIRST after the wait begins and then at
doubling intervals up to CAP, whatever the model: a task that takes 400 ms costs its wait five or six
looks, most before the outcome can exist, and the last comes up to CAP after it
(bench.result_latency). So the looks follow how long the model's tasks took lately:

- `Durations` keeps, per model, the last SAMPLES times from submit to outcome (`finished - created`)
  of tasks that succeeded or failed, as this instance's waits found them in storage after seeing
  them pending: committed elsewhere (outcomes committed here are handed over, and a window from them
  made a lone instance's waits look more often than the plain schedule; a result read again, or
  long after, is not a new duration). Its `window` is the 10th and 90th percentile of
  those no older than AGE, once MIN_SAMPLES are (before that, the plain schedule). Cancelled and
  expired tasks do not count: their time is a client's or a deadline's, not the model's.
- `Schedule`, with a window: until it opens, looks at most QUIET apart (a look every QUIET rather
  than none: a window learned from a backlog that has cleared, or from skewed clocks, costs at most
  QUIET, and the looks that find outcomes early teach the new durations); while it is open, looks
  `step` apart (a quarter of its width, from FIRST to CAP); after it, the plain doubling. Without
  one, the plain schedule.

Bounded: SAMPLES durations per model, MAX models (past that all are forgotten, which only brings back
the plain schedule).
"""

from __future__ import annotations

import time
from collections import deque

SAMPLES = 32
MIN_SAMPLES = 8
MAX = 1000
AGE = 600.0  # seconds a duration counts for
QUIET = 1.0  # the longest a wait goes without a look, window or not
LEARNED = ("succeeded", "failed")


class Durations:
    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self._models: dict[str, deque[tuple[float, float]]] = {}  # model -> (when noted, seconds)

    def note(self, model: str, status: str, seconds: float) -> None:
        if status not in LEARNED or not seconds >= 0:  # a client's or a deadline's time; a clock that went back
            return
        known = self._models.get(model)
        if known is None:
            if len(self._models) >= MAX:
                self._models.clear()
            known = self._models[model] = deque(maxlen=SAMPLES)
        known.append((self.clock(), seconds))

    def window(self, model: str) -> tuple[float, float] | None:
        """(10th, 90th percentile) of the model's recent durations, in seconds, or None."""
        since = self.clock() - AGE
        recent = sorted(seconds for at, seconds in self._models.get(model, ()) if at >= since)
        if len(recent) < MIN_SAMPLES:
            return None
        return recent[len(recent) // 10], recent[len(recent) * 9 // 10]


class Schedule:
    """The delay before each look of one wait (`next`, given the store's clock)."""

    def __init__(self, created: float, window: tuple[float, float] | None, first: float, cap: float,
                 quiet: float = QUIET) -> None:
        self.first, self.cap, self.quiet, self.delay = first, cap, quiet, first
        self.opens = self.closes = None
        if window is not None:
            low, high = window
            self.opens, self.closes = created + low, created + high
            self.step = min(max((high - low) / 4, first), cap)

    def next(self, now: float) -> float:
        if self.closes is not None and now < self.closes:
            return min(max(self.opens - now, self.first), self.quiet) if now < self.opens else self.step
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return delay

    def restart(self) -> None:
        """After a full read: the doubling starts again from FIRST."""
        self.delay = self.first
