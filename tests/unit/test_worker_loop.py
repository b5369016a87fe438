"""The real worker loop (fetcher, model thread, reporter, heartbeat) against an in-process broker
(tests/unit/fake_broker.py), in burst mode: serve what is queued, then stop. The same behaviours are
tested against the real broker in tests/mlserver/ and tests/reliability/; these run in a second."""

from __future__ import annotations

import threading

from mlserver.fetcher import Claiming
from mlserver.handlers.echo import Echo
from mlserver.worker import Worker
from tests.support.polling import wait_for

from .fake_broker import FakeBroker, unavailable


def burst(broker: FakeBroker, batch: int = 4, lease: int = 30, stop_after: float = 20.0,
          handler: Echo | None = None) -> Worker:
    """Run a worker (echo, or `handler`) until everything submitted is settled (or `stop_after`
    seconds), then stop it."""
    worker = Worker(broker, handler or Echo(batch_size=batch), Claiming("echo", batch, 1, lease),
                    status_interval=3600, upload_threads=2)

    def stop_when_settled():
        for _ in range(int(stop_after / 0.02)):
            if broker.settled():
                break
            threading.Event().wait(0.02)
        worker.stop.set()

    threading.Thread(target=stop_when_settled, daemon=True).start()
    assert worker.run() is None
    return worker


def test_every_task_is_served_in_batches_no_larger_than_asked():
    broker = FakeBroker()
    for i in range(22):
        broker.submit(f"t{i:02}", f"payload {i}".encode())
    worker = burst(broker, batch=4)
    assert {t.task_id: t.result for t in broker.tasks.values()} == {f"t{i:02}": f"payload {i}".encode() for i in range(22)}
    assert max(len(claim) for claim in broker.claims) == 4
    assert worker.stats.totals["done"] == 22


def test_a_poison_input_fails_alone_and_its_batch_mates_succeed():
    broker = FakeBroker()
    broker.submit("good-1")
    broker.submit("poison", params={"fail": "this input breaks the model"})
    broker.submit("good-2")
    burst(broker, batch=3)
    statuses = {t.task_id: (t.status, t.error) for t in broker.tasks.values()}
    assert statuses == {"good-1": ("succeeded", None), "poison": ("failed", "this input breaks the model"),
                        "good-2": ("succeeded", None)}


def test_a_retryable_failure_is_tried_again_until_attempts_run_out():
    broker = FakeBroker(max_attempts=3)
    broker.submit("flaky", params={"fail": "out of memory", "retryable": True})
    burst(broker, batch=2)
    task = broker.tasks["flaky"]
    assert (task.status, task.attempt, task.error) == ("failed", 3, "out of memory")


def test_an_undecodable_task_fails_at_once_with_one_sentence():
    broker = FakeBroker()
    broker.submit("bad", params={"sleep_ms": "soon"})
    broker.submit("fine")
    burst(broker, batch=2)
    assert broker.tasks["bad"].status == "failed"
    assert broker.tasks["bad"].error == "params.sleep_ms must be a number of milliseconds from 0 to 3600000"
    assert broker.tasks["fine"].result == b"x"


def test_retried_tasks_run_one_at_a_time_and_the_rest_are_given_back_keeping_their_attempt():
    broker = FakeBroker(max_attempts=5)
    for i in range(3):
        broker.submit(f"again-{i}", attempt=1)  # each comes back from a lost lease: attempt 2
    burst(broker, batch=3)
    assert all(t.status == "succeeded" and t.attempt == 2 for t in broker.tasks.values())
    assert sum(t.givebacks for t in broker.tasks.values()) >= 2  # two of the first batch went back unrun
    assert all(len(claim) <= 3 for claim in broker.claims)


def test_stopping_gives_back_every_task_not_started():
    broker = FakeBroker()
    for i in range(6):
        broker.submit(f"slow-{i}", params={"sleep_ms": 300})
    worker = Worker(broker, Echo(batch_size=2), Claiming("echo", 2, 1, 30), status_interval=3600)

    def stop_once_the_next_batch_waits_in_hand() -> None:  # (while the first batch runs: 600 ms)
        try:
            wait_for(lambda: len(broker.claims) >= 2, timeout=30, what="the second batch claimed")
        finally:  # (stopped whatever happens: the test fails on what it finds, never hangs)
            worker.stop.set()

    threading.Thread(target=stop_once_the_next_batch_waits_in_hand, daemon=True).start()
    assert worker.run() is None
    statuses = sorted(t.status for t in broker.tasks.values())
    assert "running" not in statuses  # nothing is left held
    done, queued = statuses.count("succeeded"), statuses.count("queued")
    assert done + queued == 6 and done >= 2, statuses
    given_back = sum(t.givebacks for t in broker.tasks.values())
    assert given_back >= 1 and worker.stats.totals["given back"] == given_back  # the batch waiting in hand
    assert all(t.attempt == 0 for t in broker.tasks.values() if t.status == "queued")  # their attempts unspent


def test_a_put_the_broker_keeps_failing_on_is_given_up_after_a_few_tries(monkeypatch):
    monkeypatch.setattr("mlserver.reporter.Backoff.next", lambda self: 0.01)
    broker = FakeBroker()
    broker.put_faults = [unavailable(500)] * 4
    broker.submit("stuck")
    worker = Worker(broker, Echo(batch_size=1), Claiming("echo", 1, 1, 30), status_interval=3600)
    threading.Timer(1.0, worker.stop.set).start()
    assert worker.run() is None
    assert worker.stats.totals["put failed"] == 1 and broker.tasks["stuck"].status == "running"


def test_a_passing_fault_on_a_put_is_retried_until_it_lands(monkeypatch):
    monkeypatch.setattr("mlserver.reporter.Backoff.next", lambda self: 0.01)
    broker = FakeBroker()
    broker.put_faults = [unavailable(503)] * 6  # more than a non-transient fault is allowed
    broker.submit("lands")
    burst(broker, batch=1)
    assert broker.tasks["lands"].status == "succeeded"


def test_a_task_cancelled_while_it_runs_puts_nothing():
    broker = FakeBroker()
    broker.submit("cancelled", params={"sleep_ms": 200})
    original = broker.claim

    def claim_then_cancel(*args):
        claims = original(*args)
        if claims:
            broker.cancel("cancelled")
        return claims

    broker.claim = claim_then_cancel
    worker = burst(broker, batch=1)
    assert broker.tasks["cancelled"].status == "cancelled" and broker.tasks["cancelled"].result is None
    assert worker.stats.totals["cancelled"] == 1


def test_a_handler_reports_progress_for_its_tasks():
    broker = FakeBroker()
    broker.submit("stepped", params={"steps": 4, "sleep_ms": 2400})
    burst(broker, batch=1)
    reports = broker.tasks["stepped"].progress
    assert reports and reports[-1] == (1.0, "step 4 of 4")  # the end is always sent
    assert all(0 < fraction <= 1 for fraction, _ in reports) and len(reports) <= 4


def test_nothing_is_claimed_while_a_task_back_from_a_lost_lease_runs_alone():
    """It may be what killed the last worker: whatever the worker held beside it would die with it
    again and lose an attempt (tests/reliability/test_poison.py holds the same with real crashes)."""
    broker = FakeBroker(max_attempts=5)
    broker.submit("suspect", b"suspect", params={"sleep_ms": 200}, attempt=1)  # claimed now: attempt 2
    for i in range(5):
        broker.submit(f"fresh-{i}")
    beside: list[list[str]] = []

    class Watching(Echo):
        def predict(self, inputs):
            if any(item.payload == b"suspect" for item in inputs):
                with broker._lock:
                    beside.append([t.task_id for t in broker.tasks.values()
                                   if t.status == "running" and t.task_id != "suspect"])
            return super().predict(inputs)

    burst(broker, batch=2, handler=Watching(batch_size=2))
    assert beside == [[]]  # it ran once, and the worker held nothing else meanwhile
    assert all(t.status == "succeeded" for t in broker.tasks.values())
