"""The worker's figures on a Prometheus endpoint (`--metrics-port`), with prometheus-client
(`pip install "./mlserver[metrics]"`): the same numbers the status line prints, as counters,
histograms and gauges a scraper can rate and sum across workers.

- mlserver_tasks_total{outcome}: done, failed, cancelled, given back, put failed
- mlserver_images_per_second: tasks finished (done or failed) per second over the last minute
- mlserver_batch_size: the batches the model ran (histogram), and mlserver_batch_fill_ratio, the
  last one against --batch
- mlserver_queue_wait_seconds: how long each task waited in the worker between claim and model
- mlserver_lease_renewals_total{result}: renewed, lost, cancelled, failed
- mlserver_idle: 1 while the worker watches storage instead of long-polling
"""

from __future__ import annotations

import threading
import time
from collections import deque

RATE_WINDOW = 60.0
OUTCOMES = ("done", "failed", "cancelled", "given back", "put failed")
RENEWALS = ("renewed", "lost", "cancelled", "failed")


class MetricsUnavailable(RuntimeError):
    """prometheus-client is not installed."""


class Metrics:
    """What the worker's parts report, kept for a scrape. Thread-safe (prometheus-client is)."""

    def __init__(self, batch_size: int) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError:
            raise MetricsUnavailable("--metrics-port needs prometheus-client: pip install prometheus-client "
                                     "(or pip install \"./mlserver[metrics]\")") from None
        self.registry = CollectorRegistry()
        self.batch_size = batch_size
        self.tasks = Counter("mlserver_tasks", "Tasks by how they ended for this worker", ["outcome"],
                             registry=self.registry)
        for outcome in OUTCOMES:
            self.tasks.labels(outcome)  # every series from the start, at 0
        self.batches = Histogram("mlserver_batch_size", "Tasks per batch the model ran",
                                 buckets=(1, 2, 4, 8, 16, 32), registry=self.registry)
        self.fill = Gauge("mlserver_batch_fill_ratio", "The last batch's size against --batch", registry=self.registry)
        self.waits = Histogram("mlserver_queue_wait_seconds", "Seconds a task waited in the worker between its claim "
                               "and the model", buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                               registry=self.registry)
        self.renewals = Counter("mlserver_lease_renewals", "Lease renewals (heartbeats) by result", ["result"],
                                registry=self.registry)
        for result in RENEWALS:
            self.renewals.labels(result)
        rate = Gauge("mlserver_images_per_second", f"Tasks finished per second over the last {RATE_WINDOW:.0f} s",
                     registry=self.registry)
        rate.set_function(self.rate)
        self.idle = lambda: False  # the worker sets what tells
        Gauge("mlserver_idle", "1 while the worker watches storage instead of long-polling",
              registry=self.registry).set_function(lambda: 1.0 if self.idle() else 0.0)
        self._finished: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()
        self.server = None

    def count(self, outcome: str, n: int = 1) -> None:
        self.tasks.labels(outcome).inc(n)
        if outcome in ("done", "failed"):
            with self._lock:
                self._finished.append((time.monotonic(), n))

    def batch(self, size: int, waits: list[float]) -> None:
        self.batches.observe(size)
        self.fill.set(size / self.batch_size)
        for wait in waits:
            self.waits.observe(wait)

    def renewal(self, result: str) -> None:
        self.renewals.labels(result).inc()

    def rate(self) -> float:
        with self._lock:
            cutoff = time.monotonic() - RATE_WINDOW
            while self._finished and self._finished[0][0] < cutoff:
                self._finished.popleft()
            return sum(n for _, n in self._finished) / RATE_WINDOW

    def serve(self, port: int, host: str) -> int:
        """Start the endpoint (/metrics) on a thread of its own; the port it listens on."""
        from prometheus_client import start_http_server

        self.server, _ = start_http_server(port, addr=host, registry=self.registry)
        return self.server.server_address[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
