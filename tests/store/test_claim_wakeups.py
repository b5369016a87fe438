"""Long-polls waiting on one model in one instance, on Azurite: a task queued there wakes one of
them, which takes it; the others do not all ask storage for it (broker/wakeups.py, notify_one); and
the woken one does not ask either when a look that began after the task was queued will find it
(broker/looks.py, covered), unless that look fails."""

from __future__ import annotations

import asyncio

import pytest

from broker import store as store_module

from .conftest import spy, wall_clock


@pytest.fixture
def no_timer_polls(monkeypatch):
    """Long-polls here look at storage only when first asked and when woken, within a test's time."""
    monkeypatch.setattr(store_module, "POLL_FIRST", 30.0)
    monkeypatch.setattr(store_module, "POLL_CAP", 30.0)


async def _waiting(claim, receives, looked: int):
    """Start a long-poll and return it once its first look is done and it waits."""
    poll = asyncio.ensure_future(claim)
    while len(receives) < looked + 1:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    return poll


def test_a_submit_wakes_one_waiting_long_poll_and_it_takes_the_task(run_store, model, no_timer_polls):
    async def scenario(store):
        receives = spy(store.storage.queues, "receive")
        polls = [asyncio.ensure_future(store.claim(model, 1, 8, 30)) for _ in range(4)]
        while store.wakeups.waiting("model:" + model) < 4:  # each looked, found nothing, and waits
            await asyncio.sleep(0.01)
        # (no timer looks: what follows is the submit's doing alone)
        task, _ = await store.submit(model, b"p", "text/plain", {})
        before = len(receives)
        done, pending = await asyncio.wait(polls, return_when=asyncio.FIRST_COMPLETED)
        after = len(receives)
        for poll in pending:
            poll.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return task.task_id, [claim.task_id for poll in done for claim in poll.result()], after - before

    task_id, claimed, looks = run_store(scenario)
    assert claimed == [task_id]
    # The woken poll's receive, and (that look came back full: one asked for, one found) one more
    # waiter's look for more: not one per waiter.
    assert 1 <= looks <= 2, looks


def test_a_claim_just_after_a_short_look_waits_with_the_others_and_still_finds_any_task(run_store, azurite, model):
    """With another long-poll waiting here, it skips its first receive (a look here just found the
    queue empty), yet a task queued here is handed out, and one queued on another instance is found
    by the shared polls; a lone claim looks at once."""
    from broker.storage import Storage
    from broker.store import TaskStore

    async def scenario(store):
        receives = spy(store.storage.queues, "receive")
        assert await store.claim(model, 8, 0, 30) == []  # the queue is empty: found short
        looked = len(receives)
        lone = asyncio.ensure_future(store.claim(model, 1, 3, 30))
        await asyncio.sleep(0)
        alone_looked = len(receives) == looked + 1  # nobody else polls here: it must
        await asyncio.sleep(0.05)  # it waits now
        assert await store.claim(model, 8, 0, 30) == []  # found short again
        looked = len(receives)
        here = asyncio.ensure_future(store.claim(model, 1, 3, 30))
        await asyncio.sleep(0)
        skipped = len(receives) == looked  # another waits here: it went straight to waiting
        task, _ = await store.submit(model, b"here", "text/plain", {})
        mine, = [claim for poll in await asyncio.gather(lone, here) for claim in poll]
        other = TaskStore(Storage(azurite.connection_string, 2), store.settings, clock=wall_clock())
        try:
            assert await store.claim(model, 8, 0, 30) == []
            waiting = asyncio.ensure_future(store.claim(model, 1, 8, 30))
            elsewhere, _ = await other.submit(model, b"there", "text/plain", {})
            [theirs] = await waiting
        finally:
            await other.storage.close()
        return (alone_looked, skipped, (mine.task_id, mine.payload), task.task_id, (theirs.task_id, theirs.payload),
                elsewhere.task_id)

    alone_looked, skipped, mine, task_id, theirs, elsewhere_id = run_store(scenario)
    assert alone_looked and skipped and mine == (task_id, b"here") and theirs == (elsewhere_id, b"there")


def _a_claim_arrives_as_the_task_is_queued(store, model: str, receives: list, then=None) -> list:
    """When the next task is queued here, a claim (2 tasks, no wait) arrives, and only once its look
    has begun is a waiting long-poll woken for the task (whatever order the event loop would run them
    in); then `then()`. Returns the list the claim's answer (or error) lands in, as a one-item gather."""
    announce, arriving = store._announce, []

    async def arrive():
        claim = asyncio.ensure_future(store.claim(model, 2, 0, 30))
        while len(receives) < 2:  # the waiter's first look, and now the arriving claim's
            await asyncio.sleep(0)
        store.wakeups.notify_one("model:" + model)
        if then is not None:
            await then()
        return await asyncio.gather(claim, return_exceptions=True)

    def and_a_claim_arrives(model_):
        store._announce = announce
        store.looks.announced(model_)
        arriving.append(asyncio.ensure_future(arrive()))

    store._announce = and_a_claim_arrives
    return arriving


def test_a_woken_long_poll_does_not_look_when_a_look_that_began_since_takes_the_task(run_store, model, no_timer_polls):
    """The task wakes the waiter, but a claim that arrives at once looks first and takes it: the
    waiter's own look would find nothing, so it makes none, and it still gets the next task."""
    async def scenario(store):
        receives = spy(store.storage.queues, "receive")
        waiter = await _waiting(store.claim(model, 1, 20, 30), receives, 0)
        arriving = _a_claim_arrives_as_the_task_is_queued(store, model, receives)
        first, _ = await store.submit(model, b"first", "text/plain", {})
        [[taken]] = await arriving[0]  # the queue was short for it: it asked for 2
        for _ in range(20):
            await asyncio.sleep(0.01)
        looked_after_it = len(receives) - 2  # the waiter's first look, the arriving claim's
        second, _ = await store.submit(model, b"second", "text/plain", {})
        [got] = await asyncio.wait_for(waiter, 10)
        return taken.task_id, first.task_id, looked_after_it, got.task_id, second.task_id

    taken, first, looked_after_it, got, second = run_store(scenario)
    assert taken == first and looked_after_it == 0 and got == second


def test_a_look_that_comes_back_full_wakes_a_waiter_to_look_for_more(run_store, azurite, model, no_timer_polls):
    """Tasks queued on another instance (nothing here announced them) are found by a claim here that
    asked for fewer than there are: its full look wakes a waiting long-poll, which takes another."""
    from broker.storage import Storage
    from broker.store import TaskStore

    async def scenario(store):
        receives = spy(store.storage.queues, "receive")
        waiter = await _waiting(store.claim(model, 1, 20, 30), receives, 0)
        other = TaskStore(Storage(azurite.connection_string, 2), store.settings, clock=wall_clock())
        try:
            queued = {(await other.submit(model, f"t{i}".encode(), "text/plain", {}))[0].task_id for i in range(3)}
        finally:
            await other.storage.close()
        [taken] = await store.claim(model, 1, 0, 30)
        [got] = await asyncio.wait_for(waiter, 10)
        return queued, {taken.task_id, got.task_id}

    queued, claimed = run_store(scenario)
    assert len(claimed) == 2 and claimed <= queued


def test_a_look_that_fails_after_a_woken_long_poll_left_the_task_to_it_wakes_one_to_look(run_store, model, no_timer_polls):
    """The waiter, woken for a task, leaves it to a look that began since (covered); that look fails
    (storage went away for it): the waiter is woken again, looks, and takes the task, without waiting
    for its timer."""
    from broker.errors import StorageUnavailable

    async def scenario(store):
        receives = spy(store.storage.queues, "receive")
        waiter = await _waiting(store.claim(model, 1, 20, 30), receives, 0)
        gate, spied = asyncio.Event(), store.storage.queues.receive

        async def failing_once(*args):
            store.storage.queues.receive = spied
            receives.append(("receive", args))  # a look that began (and never reaches storage)
            await gate.wait()
            raise StorageUnavailable()

        async def then_it_fails():
            await asyncio.sleep(0.1)  # the woken waiter has left the task to that look by now
            gate.set()

        store.storage.queues.receive = failing_once  # the arriving claim's look: the next receive
        arriving = _a_claim_arrives_as_the_task_is_queued(store, model, receives, then_it_fails)
        task, _ = await store.submit(model, b"p", "text/plain", {})
        [failed] = await arriving[0]
        [got] = await asyncio.wait_for(waiter, 10)  # its timer would take 30 s
        return type(failed).__name__, got.task_id == task.task_id

    assert run_store(scenario) == ("StorageUnavailable", True)
