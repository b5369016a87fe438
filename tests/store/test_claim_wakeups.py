"""Long-polls waiting on one model in one instance, on Azurite: a task queued there wakes one of
them, which takes it; the others do not all ask storage for it (broker/wakeups.py, notify_one)."""

from __future__ import annotations

import asyncio

from .conftest import Clock, spy


def test_a_submit_wakes_one_waiting_long_poll_and_it_takes_the_task(run_store, model):
    async def scenario(store):
        receives = spy(store.storage.queues, "receive")
        polls = [asyncio.ensure_future(store.claim(model, 1, 8, 30)) for _ in range(4)]
        while len(receives) < 4:  # each one's first look goes to storage
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.5)  # they wait, sharing their polls (backoff up to 100 ms)
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
    # The woken poll's receive, and at most one shared backoff poll that was due anyway; woken all,
    # the four would each have asked.
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
        other = TaskStore(Storage(azurite.connection_string, 2), store.settings, clock=Clock())
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
