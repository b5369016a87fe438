"""Counters for the status line the worker logs at a steady interval."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from .threadnames import name_os_thread

log = logging.getLogger("mlserver.status")


class Stats:
    """Thread-safe totals, plus per-interval figures that reset at each status line; everything also
    goes to the Prometheus metrics (metrics.py), when the worker serves them."""

    def __init__(self, batch_size: int, metrics=None) -> None:
        self.batch_size = batch_size
        self.metrics = metrics
        self.totals: Counter = Counter()
        self._lock = threading.Lock()
        self._reset_interval(time.monotonic())

    def _reset_interval(self, now: float) -> None:
        self.since = now
        self.finished = 0
        self.batches = 0
        self.batch_items = 0
        self.waits = 0.0
        self.waited = 0

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.totals[what] += n
            if what in ("done", "failed"):
                self.finished += n
        if self.metrics:
            self.metrics.count(what, n)

    def renewal(self, result: str) -> None:
        """A heartbeat's result: renewed, lost, cancelled or failed."""
        if self.metrics:
            self.metrics.renewal(result)

    def batch(self, size: int, waits: list[float]) -> None:
        """A batch went to the model; `waits` are the seconds each task spent in hand before that."""
        with self._lock:
            self.batches += 1
            self.batch_items += size
            self.waits += sum(waits)
            self.waited += len(waits)
        if self.metrics:
            self.metrics.batch(size, waits)

    def line(self) -> str:
        """The status line for the interval since the last call."""
        with self._lock:
            now = time.monotonic()
            rate = self.finished / max(now - self.since, 1e-9)
            fill = self.batch_items / self.batches if self.batches else 0.0
            wait = self.waits / self.waited if self.waited else 0.0
            text = (f"status: done {self.totals['done']}, failed {self.totals['failed']}, "
                    f"cancelled {self.totals['cancelled']}, {rate:.1f} img/s, "
                    f"batch fill {fill:.1f}/{self.batch_size}, queue wait {wait:.2f} s")
            self._reset_interval(now)
            return text


class StatusLine(threading.Thread):
    def __init__(self, stats: Stats, interval: float) -> None:
        super().__init__(name="status", daemon=True)
        self.stats, self.interval = stats, interval
        self.halt = threading.Event()

    def run(self) -> None:
        name_os_thread()
        while not self.halt.wait(self.interval):
            log.info(self.stats.line())
