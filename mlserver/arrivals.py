"""Dynamic batching (`--max-batch-delay-ms`): whether, and how long, a short batch waits for more tasks.

As Triton's `max_queue_delay_microseconds` and Ray Serve's `batch_wait_timeout_s`, a batch smaller
than `--batch` may wait up to the delay for tasks that are arriving, and then takes what came with
one more claim (wait 0). A wait costs the batch's tasks that much latency and costs the broker a
claim, so it is spent only when it is likely to pay: when the tasks claimed over the last
`window` seconds say at least one more will arrive within the delay. An idle worker, or one that
sees tasks more rarely than that, never waits: a lone task goes to the model at once.

Invariants: a wait is 0 for a full batch and when nothing is arriving, and never longer than the
delay or than the time the recent rate needs to fill the batch. It holds at most one entry per
claim of the last `window` seconds (none with no delay).
"""

from __future__ import annotations

import time
from collections import deque

MIN_WINDOW = 5.0  # seconds of claims the arrival rate is taken over, at least


class Arrivals:
    def __init__(self, delay: float, clock=time.monotonic) -> None:
        self.delay = delay  # seconds; 0: never wait
        self.window = max(MIN_WINDOW, 4 * delay)
        self.clock = clock
        self._claimed: deque[tuple[float, int]] = deque()  # (when, how many) of each non-empty claim

    def claimed(self, count: int) -> None:
        """A claim brought `count` tasks just now."""
        if count and self.delay > 0:
            self._claimed.append((self.clock(), count))
            self._forget()

    def rate(self) -> float:
        """Tasks claimed per second over the last `window` seconds."""
        self._forget()
        return sum(count for _, count in self._claimed) / self.window

    def _forget(self) -> None:
        since = self.clock() - self.window
        while self._claimed and self._claimed[0][0] < since:
            self._claimed.popleft()

    def wait(self, short_by: int) -> float:
        """Seconds a batch `short_by` tasks short of full should wait for more (0: go now)."""
        rate = self.rate()
        if short_by <= 0 or self.delay <= 0 or rate * self.delay < 1:  # not one more is likely within it
            return 0.0
        return min(self.delay, short_by / rate)
