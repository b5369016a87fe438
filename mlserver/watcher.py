"""Idle workers off the bill: after `idle_after` seconds without work the worker stops long-polling
(a long-poll is a Functions execution, billed while it waits) and watches storage instead.

The broker touches a blob per model whenever a task of it is queued (GET /watch hands out a read
URL for it). Asleep, the worker reads that blob's etag every `interval` seconds, straight from
storage, and claims only when it changes, or every `check_every` seconds in case a wake-up was
missed (a touch is best effort, and a task whose lease ran out is queued again with no touch).

Falling asleep cannot miss a task: the etag is read first, then one claim with wait=0 is made; a
task queued before the read is found by that claim, one queued after it changes the etag. A worker
woken by a change makes one short long-poll; only if it gets work does it stay awake (long-polling)
for `idle_after` seconds again, so a task that wakes many workers keeps only its taker awake.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from . import blobs
from .broker_api import BrokerClient, Refused, Unavailable

log = logging.getLogger("mlserver.watch")
REFRESH_BEFORE = 120  # seconds before the signal URL runs out that a new one is asked for
WAKE_WAIT = 2  # seconds the long-poll after a wake-up waits for the task that caused it
LOOK_FAILURES = 10  # the signal unreadable this many times in a row: long-poll instead, for RETRY_WATCH s
RETRY_WATCH = 600


class Watcher:
    def __init__(self, client: BrokerClient, model: str, stop: threading.Event, idle_after: float = 30,
                 interval: float = 0.5, check_every: float = 60) -> None:
        self.client, self.model, self.stop = client, model, stop
        self.idle_after, self.interval, self.check_every = idle_after, interval, check_every
        self.enabled = idle_after > 0
        self._last_work = time.monotonic()
        self._url: str | None = None
        self._url_expires = 0.0
        self._baseline: str | None = None  # the signal blob's etag when this sleep began (or last woke); None: not read
        self._session = None
        self._failures = 0  # looks at the signal that failed in a row
        self._retry_at = 0.0  # watching failed: long-poll until then
        self.sleeps = 0  # times the worker fell asleep (its status line may show it)

    def worked(self) -> None:
        """A claim brought tasks: stay awake (long-polling) for idle_after seconds from now."""
        self._last_work = time.monotonic()
        self._baseline = None  # the next sleep reads the signal afresh

    def asleep(self) -> bool:
        """Whether the next claim should wait for a signal first instead of long-polling."""
        if not self.enabled or time.monotonic() < self._retry_at:
            return False
        return time.monotonic() - self._last_work >= self.idle_after

    def wait_for_work(self) -> int:
        """Sleep until the signal changes or a periodic look is due; returns how long the claim that
        follows may long-poll: WAKE_WAIT after a change, 0 for a look (or the look that begins a sleep)."""
        deadline = time.monotonic() + self.check_every
        while not self.stop.is_set():
            try:
                self._ensure_url()
                current = self._look()
                self._failures = 0
            except Refused as exc:  # a broker without /watch, or one that refuses it: long-poll as before
                self._give_up(f"the broker does not offer it ({exc})", forever=True)
                return 0
            except (Unavailable, blobs.TransferError) as exc:
                self._failures += 1
                if self._failures >= LOOK_FAILURES:
                    self._give_up(f"its signal cannot be read ({exc})")
                    return 0
                if self.stop.wait(self.interval) or time.monotonic() >= deadline:
                    return 0
                continue
            if self._baseline is None:  # falling asleep: the etag first, then a claim that closes the gap
                self._baseline = current
                self.sleeps += 1
                log.info("no work for %.0f s: watching storage instead of long-polling", self.idle_after)
                return 0
            if current != self._baseline:
                self._baseline = current
                return WAKE_WAIT
            if time.monotonic() >= deadline or self.stop.wait(self.interval):
                return 0
        return 0

    def _ensure_url(self) -> None:
        if self._url is not None and time.monotonic() < self._url_expires - REFRESH_BEFORE:
            return
        answer = self.client.watch(self.model, self.check_every)
        self._url = answer["signal_url"]
        lifetime = answer.get("expires_in")  # relative: a worker's clock may be off
        if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool):
            lifetime = _seconds_until(answer.get("expires_at"))
        self._url_expires = time.monotonic() + max(float(lifetime), REFRESH_BEFORE + 60)
        if self._session is None:
            self._session = blobs.pinned_session(self._url, 2)

    def _look(self) -> str:
        """The signal's etag. A signal that is gone (deleted by a lifecycle rule, say) or a URL storage
        refuses (run out early, a skewed clock) counts as a failed look, and the next asks for a new URL
        (the broker makes the blob again)."""
        try:
            found = blobs.etag(self._url, self._session)
        except blobs.TransferError as exc:
            if exc.status in (403, 404):
                self._url = None
            raise
        if found is None:
            self._url = None
            raise blobs.TransferError("the signal blob is not there", 404)
        return found

    def _give_up(self, why: str, forever: bool = False) -> None:
        """Long-poll instead of watching: for good, or for RETRY_WATCH seconds (then try again)."""
        self._failures = 0
        self._baseline = None
        if forever:
            self.enabled = False
            log.warning("not watching storage while idle: %s; long-polling instead", why)
        else:
            self._retry_at = time.monotonic() + RETRY_WATCH
            log.warning("not watching storage while idle: %s; long-polling instead for %d s", why, RETRY_WATCH)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


def _seconds_until(stamp: str | None) -> float:
    """Seconds from now until an ISO-8601 UTC time (an hour if it cannot be read)."""
    try:
        return max(0.0, (datetime.fromisoformat(stamp.replace("Z", "+00:00")) - datetime.now(UTC)).total_seconds())
    except (AttributeError, ValueError):
        return 3600.0
