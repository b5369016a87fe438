"""Tells the broker how each task in hand ended, in the background, so the model never waits on
the network: a result, a failure, or the task given back unstarted.

Encoding a result (JSON, PNG) happens here too: it is CPU work the accelerator thread need not do.
A result larger than the broker's inline limit is written straight to storage through the claim's
`result_upload_url` (in blocks, in parallel), then committed with a put that carries no bytes.
Every report is made with the task's current lease, under its lock (the heartbeat swaps the token
only between reports), and takes the task out of the ledger once made or given up on.
A put is safe to repeat (the broker answers a repeated put with the same lease the same way), so
passing faults (no answer, 429, 502-504) are retried with backoff until they succeed or the worker
is forced to quit. A put the broker keeps failing on (500) is given up after STUCK_TRIES tries, with
an error in the log: the task's lease runs out and another attempt runs it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from . import blobs
from .backoff import Backoff
from .broker_api import BrokerClient, Cancelled, Refused, Unavailable
from .handlers.base import Handler, failure_message
from .stats import Stats
from .tasks import Ledger, Task
from .threadnames import name_os_thread

log = logging.getLogger("mlserver.reporter")
STUCK_TRIES = 4
PROGRESS_EVERY = 0.5  # seconds between two progress reports of one task, at the least


class Reporter:
    def __init__(self, client: BrokerClient, handler: Handler, ledger: Ledger, stats: Stats, threads: int = 4) -> None:
        self.client, self.handler, self.ledger, self.stats = client, handler, ledger, stats
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="report",
                                       initializer=name_os_thread)
        self.halt = threading.Event()  # set when the worker must quit without finishing
        self._pending: set[Future] = set()
        self._pending_lock = threading.Lock()
        self._storage = None  # the session results are uploaded through, made on first use
        self._storage_lock = threading.Lock()

    def result(self, task: Task, output: Any) -> None:
        """Encode the model's output for the task and put it."""
        self._submit(self._encode_and_put, task, output)

    def failure(self, task: Task, exc: BaseException) -> None:
        """Put the task's failure: one sentence for its client, retryable if the handler says so."""
        self._submit(self._put_exception, task, exc)

    def progress(self, task: Task, fraction: float, message: str) -> None:
        """Tell the broker how far the task is, in the background, at most every PROGRESS_EVERY seconds
        (and always its end); a report that fails is not retried: the next one says more."""
        now = time.monotonic()
        if task.cancelled or (fraction < 1.0 and now - task.progress_sent_at < PROGRESS_EVERY):
            return
        task.progress_sent_at = now
        try:
            self.pool.submit(self._send_progress, task, fraction, message)
        except RuntimeError:  # closed: the worker is quitting
            pass

    def _send_progress(self, task: Task, fraction: float, message: str) -> None:
        try:
            with task.lock:  # the heartbeat swaps the token only between uses
                self.client.progress(task.task_id, task.lease, fraction, message)
        except Cancelled:
            task.cancelled = True
        except (Refused, Unavailable) as exc:
            log.info("task %s: progress not recorded (%s)", task.task_id, exc)
        except Exception:  # noqa: BLE001 - progress is a courtesy: never let it take a task down
            log.exception("unexpected error reporting the progress of task %s", task.task_id)

    def give_back(self, task: Task) -> None:
        """Return a task that was never started to the queue at once (its attempt number is kept)."""
        self._submit(self._give_back, task)

    def _submit(self, job: Callable, task: Task, *args) -> None:
        try:
            future = self.pool.submit(self._guarded, job, task, *args)
        except RuntimeError:  # closed: the worker is quitting without waiting; the lease will run out
            log.warning("task %s is left to its lease running out", task.task_id)
            return
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._settled)

    def _settled(self, future: Future) -> None:
        with self._pending_lock:
            self._pending.discard(future)

    def drain(self) -> None:
        """Wait until everything handed over so far has been reported (or given up on)."""
        with self._pending_lock:
            pending = set(self._pending)
        wait(pending)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        if self._storage is not None:
            self._storage.close()

    def _guarded(self, job: Callable, task: Task, *args) -> None:
        try:
            job(task, *args)
        except Exception:  # noqa: BLE001 - a bug in one report must not take the pool down
            log.exception("unexpected error while finishing task %s", task.task_id)
        finally:
            self.ledger.remove(task)

    def _encode_and_put(self, task: Task, output: Any) -> None:
        try:
            body, content_type = self.handler.encode(output, task.decoded)
        except Exception as exc:  # noqa: BLE001 - the encoder's failure is this task's outcome
            self._put_exception(task, exc)
            return
        if len(body) > task.inline_bytes and task.result_upload_url:
            self._upload_and_put(task, body, content_type)
            return
        try:
            self._send(task, "done", lambda lease: self.client.put_result(task.task_id, lease, body, content_type))
        except Refused as exc:
            if exc.status != 413:
                raise
            self._put_failure(task, f"the result ({len(body)} bytes) is larger than the broker accepts", False)

    def _upload_and_put(self, task: Task, body: bytes, content_type: str) -> None:
        """Write the result to storage, then commit it (the put names no bytes: the upload is the result)."""
        if task.cancelled:
            return
        with self._storage_lock:
            if self._storage is None:
                self._storage = blobs.pinned_session(task.result_upload_url, 16)
        for again in (False, True):
            url = task.result_upload_url  # a heartbeat renews it: a refusal may be a URL that ran out
            try:
                blobs.upload(url, body, content_type, session=self._storage)
                break
            except blobs.TransferError as exc:
                if not again and exc.status == 403 and task.result_upload_url != url:
                    continue
                self._put_failure(task, f"could not upload the result ({len(body)} bytes): {exc}", True)
                return
        try:
            self._send(task, "done", lambda lease: self.client.put_uploaded(task.task_id, lease, content_type))
        except Refused as exc:
            if exc.status != 413:
                raise
            self._put_failure(task, f"the result ({len(body)} bytes) is larger than the broker accepts", False)

    def _put_exception(self, task: Task, exc: BaseException) -> None:
        self._put_failure(task, failure_message(self.handler, exc), self.handler.is_retryable(exc))

    def _put_failure(self, task: Task, error: str, retryable: bool) -> None:
        log.info("task %s failed%s: %s", task.task_id, " (retryable)" if retryable else "", error)
        self._send(task, "failed", lambda lease: self.client.put_failure(task.task_id, lease, error, retryable))

    def _give_back(self, task: Task) -> None:
        self._send(task, "given back", lambda lease: self.client.extend(task.task_id, lease, 0))

    def _send(self, task: Task, outcome: str, request: Callable[[str], dict]) -> None:
        """Run `request` with the task's current lease until the broker answers; count the outcome."""
        if task.cancelled:
            return
        backoff = Backoff(first=0.5, cap=15)
        stuck = 0
        with task.lock:
            while True:
                try:
                    request(task.lease)
                    self.stats.count(outcome)
                    return
                except Cancelled as exc:
                    task.cancelled = True
                    self.stats.count("cancelled")
                    log.info("task %s ended without this worker (%s); its outcome was not kept", task.task_id, exc)
                    return
                except Unavailable as exc:
                    if self.halt.is_set():
                        log.error("task %s: gave up on the broker while quitting: %s", task.task_id, exc)
                        return
                    stuck = 0 if exc.transient else stuck + 1
                    if stuck >= STUCK_TRIES:
                        self.stats.count("put failed")
                        log.error("task %s: gave up putting its outcome (%s) after %d tries that failed the same "
                                  "way: %s; its lease will run out and another attempt will run it",
                                  task.task_id, outcome, stuck, exc)
                        return
                    delay = backoff.next()
                    log.warning("task %s: %s; retrying in %.1f s", task.task_id, exc, delay)
                    self.halt.wait(delay)
                except Refused as exc:
                    if exc.status == 413:
                        raise
                    # 409 (another attempt committed), 404 (the task expired): nothing left to do.
                    log.warning("task %s: %s", task.task_id, exc)
                    return
