"""The worker: claim batches, run the model on them, put the outcomes back; stop cleanly on a signal.

Threads: the fetch thread claims and decodes the next batch while this (the main) thread runs the
model on the current one; the reporter's threads encode and put results, failures and give-backs;
the heartbeat keeps leases alive. This thread decides every task's end; the others carry it out.
On SIGTERM or SIGINT the worker stops claiming, finishes the batch the model is running, gives
back (extendlease seconds=0) every task it has not started, and exits 0. A second signal stops
waiting for a long-poll in flight or for a broker that does not answer.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from .broker_api import BrokerClient
from .fetcher import Batch, Claiming, Fetcher
from .handlers.base import Handler, failure_message
from .heartbeat import Heartbeat
from .reporter import Reporter
from .stats import Stats, StatusLine
from .tasks import Ledger, Task

log = logging.getLogger("mlserver")
READY_LINE = "worker ready"
TAKE_POLL = 0.2


class Worker:
    def __init__(self, client: BrokerClient, handler: Handler, claiming: Claiming,
                 status_interval: float = 30, upload_threads: int = 4, metrics=None) -> None:
        self.client, self.handler, self.claiming = client, handler, claiming
        self.stop = threading.Event()
        self.force = threading.Event()
        self.ledger = Ledger()
        self.stats = Stats(claiming.batch, metrics)
        self.reporter = Reporter(client, handler, self.ledger, self.stats, upload_threads)
        self.fetcher = Fetcher(client, handler, claiming, self.ledger, self.stop)
        if metrics is not None:
            metrics.idle = self.fetcher.watcher.asleep
        self.heartbeat = Heartbeat(client, self.ledger, self.stats, claiming.lease)
        self._running: dict[int, Task] = {}  # id(decoded input) -> its task, while the model runs them
        handler._progress_sink = self._on_progress
        self.status = StatusLine(self.stats, status_interval)

    def run(self) -> Exception | None:
        """Serve until a signal; returns what stopped it otherwise (a refusal from the broker, a bug)."""
        self._install_signals()
        for thread in (self.heartbeat, self.status, self.fetcher):
            thread.start()
        log.info("%s: model %s, batch %d, lease %d s, broker %s", READY_LINE, self.claiming.model,
                 self.claiming.batch, self.claiming.lease, self.client.url)
        try:
            self._serve()
        finally:
            self._wind_down()
        return self.fetcher.fatal

    def _serve(self) -> None:
        while True:
            batch = self.fetcher.take(TAKE_POLL)
            if batch is None:
                if self.force.is_set() or (self.stop.is_set() and not self.fetcher.is_alive()):
                    return
                continue
            self._settle(batch)
            try:
                if self.stop.is_set():
                    self._give_back(batch.tasks)
                else:
                    self.run_batch(batch.tasks)
            finally:
                self.fetcher.resume()  # a batch with a suspect held the next claim back until now

    def _settle(self, batch: Batch) -> None:
        """What a batch brings that the model will not run: inputs it cannot use, and tasks claimed as
        the worker stopped."""
        for task, exc in batch.undecodable:
            self.reporter.failure(task, exc)
        self._give_back(batch.unstarted)

    def _give_back(self, tasks: list[Task]) -> None:
        for task in tasks:
            self.reporter.give_back(task)

    def run_batch(self, batch: list[Task]) -> None:
        live = [task for task in batch if not task.cancelled]
        if not live:
            return
        now = time.monotonic()
        self.stats.batch(len(live), [now - task.claimed_at for task in live])
        fresh = [task for task in live if not task.suspect]
        retried = [task for task in live if task.suspect]
        # A task back from a lost lease may be what killed the last worker that held it (a poison
        # input). Run one such task at a time, alone, once every other outcome is put back and the
        # other retried tasks are given back (keeping their attempt number): if it kills this
        # process too, nothing else is lost with it, and innocent batch-mates never run out of attempts.
        self._give_back(retried[1:])
        if fresh:
            self._run_together(fresh)
        if retried:
            self.reporter.drain()
            self._run_one(retried[0])

    def _run_together(self, live: list[Task]) -> None:
        try:
            outputs = self._predict(live)
        except Exception as exc:  # noqa: BLE001 - a model error for the batch: find the input that causes it
            if len(live) == 1:
                self.reporter.failure(live[0], exc)
                return
            log.warning("the model failed on a batch of %d (%s); running its inputs one by one",
                        len(live), failure_message(self.handler, exc))
            for task in live:
                self._run_one(task)
            return
        for task, output in zip(live, outputs):
            self._succeed(task, output)

    def _run_one(self, task: Task) -> None:
        try:
            output = self._predict([task])[0]
        except Exception as exc:  # noqa: BLE001 - this input's own failure
            self.reporter.failure(task, exc)
            return
        self._succeed(task, output)

    def _predict(self, tasks: list[Task]) -> list[Any]:
        self._running = {id(task.decoded): task for task in tasks}
        try:
            outputs = list(self.handler.predict([task.decoded for task in tasks]))
        finally:
            self._running = {}
        if len(outputs) != len(tasks):
            raise RuntimeError(f"predict returned {len(outputs)} outputs for {len(tasks)} inputs")
        return outputs

    def _on_progress(self, item: Any, fraction: float, message: str) -> None:
        """A handler's report_progress (from the model's thread): to the task it is about."""
        task = self._running.get(id(item))
        if task is not None:
            self.reporter.progress(task, fraction, message)

    def _succeed(self, task: Task, output: Any) -> None:
        if task.cancelled:
            self.ledger.remove(task)
        else:
            self.reporter.result(task, output)

    def _wind_down(self) -> None:
        """Give back what was never started, let uploads finish, stop the helpers."""
        self.stop.set()
        for batch in self.fetcher.leftovers():
            self._settle(batch)
            self._give_back(batch.tasks)
        self.reporter.close()
        self.fetcher.close()
        for thread in (self.heartbeat, self.status):
            thread.halt.set()
        totals = self.stats.totals
        log.info("stopped: done %d, failed %d, cancelled %d, gave back %d", totals["done"], totals["failed"],
                 totals["cancelled"], totals["given back"])

    def _install_signals(self) -> None:
        def on_signal(signum: int, _frame) -> None:
            name = signal.Signals(signum).name
            if not self.stop.is_set():
                log.info("%s: stopping; finishing the batch in hand and giving back the rest "
                         "(send it again to quit without waiting for the broker)", name)
                self.stop.set()
            else:
                log.info("%s again: quitting without waiting for the broker", name)
                self.force.set()
                self.reporter.halt.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
