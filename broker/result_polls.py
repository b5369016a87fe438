"""When a `getresult` wait looks for an outcome that another instance commits (store.result).

An outcome this instance commits is handed to its waits at once; one committed elsewhere is found
only by looking at the outbox. The plain schedule looks FIRST after the wait begins and then at
doubling intervals up to CAP, whatever the model: a task that takes 400 ms costs its wait five or six
looks, most before the outcome can exist, and the last comes up to CAP after it
(bench.result_latency). So the looks follow how long the model's tasks took lately:

- `Durations` keeps, per model, the last SAMPLES times from submit to outcome (`finished - created`)
  of the outcomes this instance's waits found by looking: committed elsewhere. Its `window` is their
  10th and 90th percentile, once MIN_SAMPLES are known (before that, the plain schedule). Outcomes
  committed here do not count: they are handed over, and a window from them made a lone instance's
  waits look more often than the plain schedule (0.24-0.43 looks a task against 0.24, bench.calls).
- `Schedule`, with a window: no look before the window opens (but at least FIRST after the last),
  looks `step` apart while it is open (a quarter of its width, from FIRST to CAP), and after it the
  plain doubling. Without one, the plain schedule.

A task that ends before the window opens (1 in 10 lately) is found when it opens: that is the cost,
bounded by the window's start. Bounded: SAMPLES durations per model, MAX models (past that all are
forgotten, which only brings back the plain schedule).
"""

from __future__ import annotations

from collections import deque

SAMPLES = 32
MIN_SAMPLES = 8
MAX = 1000


class Durations:
    def __init__(self) -> None:
        self._models: dict[str, deque[float]] = {}

    def note(self, model: str, seconds: float) -> None:
        if not seconds >= 0:  # a clock that went back, or NaN: not a duration
            return
        known = self._models.get(model)
        if known is None:
            if len(self._models) >= MAX:
                self._models.clear()
            known = self._models[model] = deque(maxlen=SAMPLES)
        known.append(seconds)

    def window(self, model: str) -> tuple[float, float] | None:
        """(10th, 90th percentile) of the model's recent durations, in seconds, or None."""
        known = self._models.get(model)
        if known is None or len(known) < MIN_SAMPLES:
            return None
        ordered = sorted(known)
        return ordered[len(ordered) // 10], ordered[len(ordered) * 9 // 10]


class Schedule:
    """The delay before each look of one wait (`next`, given the store's clock)."""

    def __init__(self, created: float, window: tuple[float, float] | None, first: float, cap: float) -> None:
        self.first, self.cap, self.delay = first, cap, first
        self.opens = self.closes = None
        if window is not None:
            low, high = window
            self.opens, self.closes = created + low, created + high
            self.step = min(max((high - low) / 4, first), cap)

    def next(self, now: float) -> float:
        if self.closes is not None and now < self.closes:
            return max(self.opens - now, self.first) if now < self.opens else self.step
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return delay

    def restart(self) -> None:
        """After a full read: the doubling starts again from FIRST."""
        self.delay = self.first
