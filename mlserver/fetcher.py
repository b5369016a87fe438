"""The fetch thread: long-polls the broker for a batch and decodes it while the model runs the last one.

It claims a new batch only when the model has taken the previous one, so at most one batch waits
in hand (its leases kept alive by the heartbeat) and other workers are not starved of tasks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from .backoff import Backoff
from .broker_api import BrokerClient, Refused, Unavailable
from .handlers.base import Handler, failure_message
from .tasks import Ledger, Task
from .threadnames import name_os_thread
from .uploads import Uploads

log = logging.getLogger("mlserver.fetch")
HAND_OVER_POLL = 0.2  # how often a waiting fetch thread looks at the stop flag
MIN_EMPTY_POLL = 1.0  # an empty answer faster than this is followed by a pause


@dataclass(frozen=True)
class Claiming:
    model: str
    batch: int
    wait: int
    lease: int


class Fetcher(threading.Thread):
    def __init__(self, client: BrokerClient, handler: Handler, claiming: Claiming, ledger: Ledger,
                 uploads: Uploads, stop: threading.Event) -> None:
        super().__init__(name="fetch", daemon=True)
        self.client, self.handler, self.claiming = client, handler, claiming
        self.ledger, self.uploads, self.stop = ledger, uploads, stop
        self.ready: queue.Queue[list[Task]] = queue.Queue()
        self.room = threading.Semaphore(1)  # released by the model thread when it takes a batch
        self.fatal: Exception | None = None  # why the worker must stop: a refusal, or a bug

    def run(self) -> None:
        try:
            name_os_thread()
            self._run()
        except Exception as exc:  # noqa: BLE001 - a bug here must stop the worker, not leave it idle forever
            log.exception("the fetch thread failed")
            self.fatal = exc
            self.stop.set()

    def _run(self) -> None:
        backoff = Backoff(first=1.0, cap=30.0)
        while self._wait_for_room():
            asked = time.monotonic()
            try:
                claims = self.client.claim(self.claiming.model, self.claiming.batch, self.claiming.wait,
                                           self.claiming.lease)
            except Unavailable as exc:
                self.room.release()
                delay = backoff.next()
                log.warning("%s; retrying in %.1f s", exc, delay)
                self.stop.wait(delay)
                continue
            except Refused as exc:  # a wrong key or URL: waiting will not fix it
                self.fatal = exc
                self.stop.set()
                return
            if backoff.failures:
                log.info("the broker answers again")
                backoff.reset()
            if not claims and time.monotonic() - asked < MIN_EMPTY_POLL:
                self.stop.wait(MIN_EMPTY_POLL)  # --wait 0, or a poll cut short: do not spin
            tasks = [Task.from_claim(claim, self.claiming.lease) for claim in claims]
            self.ledger.add(tasks)
            if self.stop.is_set():
                self.give_back(tasks)
                return
            batch = self.decode(tasks)
            if batch:
                self.ready.put(batch)
            else:
                self.room.release()

    def _wait_for_room(self) -> bool:
        while not self.stop.is_set():
            if self.room.acquire(timeout=HAND_OVER_POLL):
                return True
        return False

    def decode(self, tasks: list[Task]) -> list[Task]:
        """Decode each task; one that cannot be decoded fails alone and is left out of the batch."""
        batch = []
        for task in tasks:
            try:
                task.decoded = self.handler.decode(task.payload, task.content_type, task.params)
            except Exception as exc:  # noqa: BLE001 - any decode failure is that task's outcome
                self.uploads.fail(task, failure_message(self.handler, exc), self.handler.is_retryable(exc))
                continue
            task.payload = b""  # the decoded form is all that is needed from here on
            batch.append(task)
        return batch

    def give_back(self, tasks: list[Task]) -> None:
        for task in tasks:
            self.uploads.give_back(task)
