"""The fetch thread: long-polls the broker for a batch and decodes it while the model runs the last one.

It claims a new batch only when the model has taken the previous one (`take()`), so at most one
batch waits in hand (its leases kept alive by the heartbeat) and other workers are not starved of
tasks. A batch holding a task back from a lost lease (attempt > 1: it may be what killed the last
worker) lets the next claim go only when the worker says it is done with it (`resume()`): that
task runs alone, and nothing claimed meanwhile would die with it. With `--max-batch-delay-ms`, a
batch short of `--batch` may wait up to the delay while tasks are arriving, then claims again (wait
0) to fill, before it is handed over (arrivals.py says when a wait pays). A payload too large to come
inside the claim it downloads from storage (the claim's `payload_url`). With `decode_threads` > 1 the
tasks of a batch are downloaded and decoded that many at a time (Pillow and the downloads release the
GIL), for an accelerator that runs a batch faster than one thread decodes the next; the batch keeps
the claim's order. It reports nothing to the
broker itself: a task it cannot fetch or decode travels in its batch as `undecodable`, and tasks
claimed after the stop flag went up as `unstarted`, for the worker to settle. When there has been
no work for a while it lets the watcher (watcher.py) wait for some instead of long-polling.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from . import blobs
from .arrivals import Arrivals
from .backoff import Backoff
from .broker_api import BrokerClient, Refused, Unavailable
from .handlers.base import Handler, TaskError
from .tasks import Ledger, Task
from .threadnames import name_os_thread
from .watcher import Watcher

log = logging.getLogger("mlserver.fetch")
HAND_OVER_POLL = 0.2  # how often a waiting fetch thread looks at the stop flag
MIN_EMPTY_POLL = 1.0  # an empty answer faster than this is followed by a pause


@dataclass(frozen=True)
class Claiming:
    model: str
    batch: int
    wait: int
    lease: int
    idle_after: float = 30  # seconds without work before watching storage instead of long-polling (0: never)
    watch_interval: float = 0.5
    idle_check: float = 60
    max_batch_bytes: int = 2 * 1024**3  # payloads downloaded for one batch at most (the first always)
    max_batch_delay: float = 0  # seconds a short batch may wait to fill while tasks arrive (0: never)
    decode_threads: int = 1  # tasks of a batch downloaded and decoded at once (1: in the fetch thread)


@dataclass
class Batch:
    """One batch's tasks as the fetch thread hands them over (a claim's, and a top-up's if it filled)."""

    tasks: list[Task] = field(default_factory=list)  # decoded, for the model
    undecodable: list[tuple[Task, Exception]] = field(default_factory=list)  # each fails alone
    unstarted: list[Task] = field(default_factory=list)  # claimed as the worker stopped: to give back
    fetched: int = 0  # bytes of payloads downloaded from storage for it

    @property
    def claimed(self) -> int:
        return len(self.tasks) + len(self.undecodable) + len(self.unstarted)


class Fetcher(threading.Thread):
    def __init__(self, client: BrokerClient, handler: Handler, claiming: Claiming, ledger: Ledger,
                 stop: threading.Event) -> None:
        super().__init__(name="fetch", daemon=True)
        self.client, self.handler, self.claiming = client, handler, claiming
        self.ledger, self.stop = ledger, stop
        self._ready: queue.Queue[Batch] = queue.Queue()
        self._room = threading.Semaphore(1)  # a claim may be made: the last batch was taken
        self._held = False  # the batch taken last holds a suspect: the room waits for resume()
        self.fatal: Exception | None = None  # why the worker must stop: a refusal, or a bug
        self.watcher = Watcher(client, claiming.model, stop, claiming.idle_after, claiming.watch_interval,
                               claiming.idle_check)
        self.arrivals = Arrivals(claiming.max_batch_delay)
        self._storage = None  # the session payloads are downloaded through, made on first use
        self._storage_lock = threading.Lock()

    def take(self, timeout: float) -> Batch | None:
        """The next batch, if one arrives within `timeout` seconds; taking it lets the next claim go,
        unless it holds a task back from a lost lease: then `resume()` does, once that has run."""
        try:
            batch = self._ready.get(timeout=timeout)
        except queue.Empty:
            return None
        if any(task.suspect for task in batch.tasks):
            self._held = True
        else:
            self._room.release()
        return batch

    def resume(self) -> None:
        """The batch taken last is done with: the next claim may go (if `take()` held it back)."""
        if self._held:
            self._held = False
            self._room.release()

    def leftovers(self) -> list[Batch]:
        """The batches fetched and not taken (on the way out: no further claim follows)."""
        batches = []
        while True:
            try:
                batches.append(self._ready.get_nowait())
            except queue.Empty:
                return batches

    def run(self) -> None:
        try:
            name_os_thread()
            self._run()
        except Exception as exc:  # noqa: BLE001 - a bug here must stop the worker, not leave it idle forever
            log.exception("the fetch thread failed")
            self._give_up(exc)

    def _give_up(self, exc: Exception) -> None:
        """Stop the worker for `exc` (the worker reports it as why it stopped)."""
        self.fatal = exc
        self.stop.set()

    def _run(self) -> None:
        backoff = Backoff(first=1.0, cap=30.0)
        while self._wait_for_room():
            wait = self.watcher.wait_for_work() if self.watcher.asleep() else self.claiming.wait
            if self.stop.is_set():
                self._room.release()
                continue
            asked = time.monotonic()
            poll = self.claiming.idle_check if self.watcher.asleep() else max(wait, MIN_EMPTY_POLL)
            try:
                tasks = self._claim(self.claiming.batch, wait, poll)
            except Unavailable as exc:
                self._room.release()
                delay = backoff.next()
                log.warning("%s; retrying in %.1f s", exc, delay)
                self.stop.wait(delay)
                continue
            except Refused as exc:  # a wrong key or URL: waiting will not fix it
                self._give_up(exc)
                return
            if backoff.failures:
                log.info("the broker answers again")
                backoff.reset()
            answered = time.monotonic()
            if tasks:
                self.watcher.worked()
            elif answered - asked < MIN_EMPTY_POLL:
                self.stop.wait(MIN_EMPTY_POLL)  # --wait 0, a look while idle, or a poll cut short: do not spin
            if self.stop.is_set():
                self._ready.put(Batch(unstarted=tasks))
                return
            if tasks:
                batch = self.decode(tasks)
                try:
                    self._fill(batch, answered, poll)
                finally:  # held tasks always reach the worker, to run or give back, whatever a top-up met
                    self._ready.put(batch)
            else:
                self._room.release()

    def _claim(self, count: int, wait: int, poll: float) -> list[Task]:
        """Up to `count` tasks, held from here on (the ledger has them, for the heartbeat)."""
        claims, inline_bytes = self.client.claim(self.claiming.model, count, wait, self.claiming.lease,
                                                 len(self.ledger.held()), poll)
        tasks = [Task.from_claim(claim, self.claiming.lease, inline_bytes) for claim in claims]
        self.ledger.add(tasks)
        self.arrivals.claimed(len(tasks))
        return tasks

    def _short(self, batch: Batch) -> bool:
        """Dynamic batching is on and the batch could take more: not full, nothing set aside to give
        back, no suspect (that runs alone anyway)."""
        return (self.claiming.max_batch_delay > 0 and batch.claimed < self.claiming.batch and not batch.unstarted
                and not any(task.suspect for task in batch.tasks))

    def _fill(self, batch: Batch, answered: float, poll: float) -> None:
        """A short batch, while tasks are arriving, waits for more (counted from its claim's answer, at
        `answered`) before it is handed over, then claims them (telling the broker `poll`, as its claim did)."""
        if not self._short(batch):
            return
        wait = self.arrivals.wait(self.claiming.batch - batch.claimed)
        if wait and not self.stop.wait(max(0.0, answered + wait - time.monotonic())):
            self._top_up(batch, poll)

    def _top_up(self, batch: Batch, poll: float) -> None:
        """Claim (wait 0) what the batch lacks and decode it into the batch. A failed claim leaves the
        batch as it is; a refusal stops the worker, as any other claim's would."""
        try:
            more = self._claim(self.claiming.batch - batch.claimed, 0, poll)
        except Unavailable as exc:
            log.info("a claim to fill the batch failed (%s); it goes as it is", exc)
            return
        except Refused as exc:
            self._give_up(exc)
            return
        if self.stop.is_set():
            batch.unstarted += more
        else:
            self.decode(more, into=batch)

    def _wait_for_room(self) -> bool:
        while not self.stop.is_set():
            if self._room.acquire(timeout=HAND_OVER_POLL):
                return True
        return False

    def decode(self, tasks: list[Task], into: Batch | None = None) -> Batch:
        """Fetch and decode each task; one that cannot be fetched or decoded is set apart, to fail alone
        (retryably, for a payload storage would not give: another attempt may fare better). Payloads
        fetched from storage stop at `max_batch_bytes` (the first always comes; the budget is decided
        before any is fetched, so a first that then fails still counts): the tasks past it are
        given back unstarted, for this worker's next claim or another's. `into`: a batch to add them to."""
        batch = into or Batch()
        chosen = []
        for task in tasks:
            if task.payload_url and (batch.tasks or chosen) and batch.fetched + task.size > self.claiming.max_batch_bytes:
                batch.unstarted.append(task)
                continue
            batch.fetched += task.size if task.payload_url else 0
            chosen.append(task)
        for task, failure in zip(chosen, self._prepare_all(chosen)):
            if failure is None:
                batch.tasks.append(task)
            else:
                batch.undecodable.append((task, failure))
        return batch

    def _prepare_all(self, tasks: list[Task]) -> list[Exception | None]:
        """Each task fetched and decoded, `decode_threads` at a time: why each could not be, in order.
        The threads are this batch's own, and daemons like the fetch thread, so a worker forced to
        quit does not wait for a download or a decode they are in."""
        count = min(self.claiming.decode_threads, len(tasks))
        if count <= 1:
            return [self._prepare(task) for task in tasks]
        failures: list[Exception | None] = [None] * len(tasks)
        left = queue.SimpleQueue()
        for index in range(len(tasks)):
            left.put(index)

        def decode_some() -> None:
            name_os_thread()
            while True:
                try:
                    index = left.get_nowait()
                except queue.Empty:
                    return
                failures[index] = self._prepare(tasks[index])

        threads = [threading.Thread(target=decode_some, name=f"decode_{i}", daemon=True) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return failures

    def _prepare(self, task: Task) -> Exception | None:
        """Fetch and decode one task; why it could not be, if it could not."""
        try:
            if task.payload_url:
                task.payload = self._download(task)
            task.decoded = self.handler.decode(task.payload, task.content_type, task.params)
        except Exception as exc:  # noqa: BLE001 - any decode failure is that task's outcome
            return exc
        task.payload = b""  # the decoded form is all that is needed from here on
        return None

    def _download(self, task: Task) -> bytes | bytearray:
        with self._storage_lock:
            if self._storage is None:
                # a connection for each range thread of each download at once
                self._storage = blobs.pinned_session(task.payload_url, blobs.THREADS * self.claiming.decode_threads + 2)
        try:
            return blobs.download(task.payload_url, task.size or None, session=self._storage)
        except blobs.TransferError as exc:
            raise TaskError(f"could not download the payload: {exc}", retryable=True) from None

    def close(self) -> None:
        self.watcher.close()
        if self._storage is not None:
            self._storage.close()
