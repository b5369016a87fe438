"""Dynamic batching's decision (mlserver/arrivals.py) on a clock the test moves, and the fetch thread
acting on it against the in-process broker (tests/unit/fake_broker.py)."""

from __future__ import annotations

import threading

from mlserver.arrivals import Arrivals
from mlserver.broker_api import Unavailable
from mlserver.fetcher import Claiming, Fetcher
from mlserver.handlers.echo import Echo
from mlserver.tasks import Ledger
from tests.support.clock import ManualClock as Clock

from .fake_broker import FakeBroker


def test_a_short_batch_waits_only_while_tasks_are_arriving():
    clock = Clock()
    arrivals = Arrivals(0.05, clock)  # 50 ms; the rate is taken over the last 5 s
    arrivals.claimed(1)
    assert arrivals.wait(7) == 0  # a lone task after a quiet spell goes at once
    for _ in range(119):  # then 120 tasks in under 5 s: 24 a second, more than one per 50 ms
        clock.advance(0.04)
        arrivals.claimed(1)
    assert arrivals.wait(7) == 0.05
    assert arrivals.wait(0) == 0  # a full batch never waits
    clock.advance(5.01)  # a quiet spell again: the past drops out of the window
    arrivals.claimed(1)
    assert arrivals.wait(7) == 0


def test_the_wait_is_what_the_rate_needs_to_fill_the_batch_and_never_more_than_the_delay():
    clock = Clock()
    arrivals = Arrivals(2.0, clock)  # the window grows with the delay: 8 s
    assert arrivals.window == 8
    arrivals.claimed(80)  # 10 a second
    assert arrivals.wait(3) == 0.3  # 3 more come in 0.3 s, well within the delay
    assert arrivals.wait(31) == 2.0
    assert Arrivals(0, clock).wait(7) == 0  # no delay set: never wait


def test_it_holds_only_the_window_s_claims_and_none_without_a_delay():
    clock = Clock()
    off, on = Arrivals(0, clock), Arrivals(0.05, clock)
    for _ in range(10_000):  # a day's claims of a busy worker, compressed: one every 10 ms
        clock.advance(0.01)
        off.claimed(8)
        on.claimed(8)
    assert len(off._claimed) == 0
    assert len(on._claimed) <= 501  # 5 s of them


def fetcher(broker: FakeBroker, delay: float) -> Fetcher:
    return Fetcher(broker, Echo(batch_size=4), Claiming("echo", 4, 1, 30, max_batch_delay=delay), Ledger(),
                   threading.Event())


def submit_after_first_claim(broker: FakeBroker, ids: list[str]) -> None:
    """Submit `ids` as soon as the fetcher has claimed something: tasks arriving while its batch is short."""
    def submit():
        while not broker.claims:
            threading.Event().wait(0.005)
        for task_id in ids:
            broker.submit(task_id)

    threading.Thread(target=submit, daemon=True).start()


def test_a_short_batch_with_tasks_arriving_claims_once_more_and_goes_full():
    broker = FakeBroker()
    fetch = fetcher(broker, delay=1.0)
    fetch.arrivals.claimed(20)  # a busy recent past: 4 a second, so more are likely within the second
    broker.submit("first")
    submit_after_first_claim(broker, ["second", "third", "fourth", "fifth"])
    fetch.start()
    batch = fetch.take(timeout=10)
    fetch.stop.set()
    assert [task.task_id for task in batch.tasks] == ["first", "second", "third", "fourth"]
    # (once the batch is taken, the fetch thread may claim "fifth" for the next one)
    assert broker.claims[:2] == [["first"], ["second", "third", "fourth"]]  # the top-up asked for 3
    assert batch.unstarted == [] and batch.undecodable == []


def test_a_lone_task_after_a_quiet_spell_goes_at_once():
    broker = FakeBroker()
    fetch = fetcher(broker, delay=1.0)
    broker.submit("lone")
    submit_after_first_claim(broker, ["later"])
    fetch.start()
    batch = fetch.take(timeout=10)
    fetch.stop.set()
    assert [task.task_id for task in batch.tasks] == ["lone"]
    assert broker.claims[0] == ["lone"]


def test_a_stop_while_a_batch_waits_hands_it_over_without_claiming_more():
    broker = FakeBroker()
    fetch = fetcher(broker, delay=5.0)
    fetch.arrivals.claimed(100)
    broker.submit("first")
    fetch.start()
    while not broker.claims:
        threading.Event().wait(0.005)
    broker.submit("second")
    threading.Event().wait(0.1)  # the batch waits about 0.6 s for more (3 short, 5 a second)
    fetch.stop.set()
    batch = fetch.take(timeout=10)
    # (on a slow machine the stop may land before the wait began: then the task comes as unstarted)
    assert [task.task_id for task in batch.tasks + batch.unstarted] == ["first"]
    assert broker.claims == [["first"]]


def batch_with_a_failing_top_up(error: Exception) -> tuple[Fetcher, object]:
    """A busy fetcher's first batch, short of full, whose top-up claim raises `error`."""
    broker = FakeBroker()
    real, calls = broker.claim, []

    def claim(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise error
        return real(*args, **kwargs)

    broker.claim = claim
    fetch = fetcher(broker, delay=0.2)
    fetch.arrivals.claimed(100)
    broker.submit("first")
    fetch.start()
    return fetch, fetch.take(timeout=10)


def test_a_top_up_the_broker_does_not_answer_leaves_the_batch_as_it_is():
    fetch, batch = batch_with_a_failing_top_up(Unavailable("the broker did not answer"))
    assert [task.task_id for task in batch.tasks] == ["first"]
    assert fetch.fatal is None and not fetch.stop.is_set()
    fetch.stop.set()


def test_a_top_up_that_breaks_still_hands_over_the_tasks_already_held():
    """A bug met while filling must not strand the batch: the worker gives its tasks back as it stops."""
    fetch, batch = batch_with_a_failing_top_up(KeyError("tasks"))
    assert [task.task_id for task in batch.tasks] == ["first"]
    fetch.join(timeout=10)
    assert isinstance(fetch.fatal, KeyError) and fetch.stop.is_set()
