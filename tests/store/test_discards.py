"""The payload of an ended plain task is deleted in a batch a moment after its put (discards.py), on
Azurite: what goes, what does not wait, and what a batch that fails leaves to the sweep."""

from __future__ import annotations

import asyncio

from broker.discards import BATCH, SENDING, Discards
from broker.errors import StorageUnavailable
from tests.support.polling import run_async

from .conftest import claimed_upload, spy, token


async def payloads(store, ids) -> list[str]:
    return [task_id for task_id in ids if await store.storage.inbox.head(task_id) is not None]


def test_a_put_leaves_its_payload_to_a_batch_that_deletes_it(run_store, model):
    async def scenario(store):
        ids = [(await store.submit(model, b"p%d" % i, "text/plain", {}))[0].task_id for i in range(5)]
        claims = await store.claim(model, 5, 0, 30)
        single, batches = spy(store.storage.inbox, "delete"), spy(store.storage.inbox, "delete_batch")
        for claim in claims:
            await store.complete(token(store, claim), b"done", "text/plain")
        await store.discards.flush()
        results = [(await store.result(task_id, 0))[1] for task_id in ids]
        return ids, single, batches, await payloads(store, ids), results

    ids, single, batches, left, results = run_store(scenario)
    assert single == [] and [sorted(names) for _, (names,) in batches] == [sorted(ids)]  # one request for the five
    assert left == [] and results == [b"done"] * 5


def test_a_batch_goes_by_itself_a_moment_later(run_store, model):
    async def scenario(store):
        task, _ = await store.submit(model, b"p", "text/plain", {})
        [claim] = await store.claim(model, 1, 0, 30)
        await store.complete(token(store, claim), b"done", "text/plain")
        for _ in range(100):  # its timer is half a second; nothing flushes here
            if not await payloads(store, [task.task_id]):
                return True
            await asyncio.sleep(0.1)
        return False

    assert run_store(scenario) is True


def test_an_idempotent_tasks_payload_is_deleted_at_once(run_store, model):
    """Its id comes back with its key (a new task under the same name once the result expired), so its
    delete is conditional and immediate, never a batch's."""
    async def scenario(store):
        task, _ = await store.submit(model, b"p", "text/plain", {}, idempotency_key=f"{model}-key")
        [claim] = await store.claim(model, 1, 0, 30)
        single, batches = spy(store.storage.inbox, "delete"), spy(store.storage.inbox, "delete_batch")
        await store.complete(token(store, claim), b"done", "text/plain")
        return task.task_id, single, batches, len(store.discards), await payloads(store, [task.task_id])

    task_id, single, batches, held, left = run_store(scenario)
    assert [args[0] for _, args in single] == [task_id] and batches == [] and held == 0 and left == []


def test_a_cancel_deletes_at_once(run_store, model):
    """A cancel leaves the message queued (the next claim drops it): the payload must be gone first,
    or a first claim could take the task from its message's copy."""
    async def scenario(store):
        task, _ = await store.submit(model, b"p", "text/plain", {})
        await store.cancel(task.task_id)
        return len(store.discards), await payloads(store, [task.task_id])

    assert run_store(scenario) == (0, [])


def test_a_batch_that_fails_leaves_the_payloads_to_the_sweep(run_store, model):
    async def scenario(store):
        ids = [(await store.submit(model, b"p%d" % i, "text/plain", {}))[0].task_id for i in range(3)]
        claims = await store.claim(model, 3, 0, 30)

        async def away(names):
            raise StorageUnavailable()

        store.storage.inbox.delete_batch = away
        for claim in claims:
            await store.complete(token(store, claim), b"done", "text/plain")
        await store.discards.flush()  # logged, not raised
        before = await payloads(store, ids)
        del store.storage.inbox.delete_batch
        store.now.advance(store.settings.queued_ttl_seconds + 1)
        await store.sweep()
        after = await payloads(store, ids)
        return before, after, [(await store.status(task_id)).outcome.status for task_id in ids]

    before, after, statuses = run_store(scenario, queued_ttl_seconds=60)
    assert len(before) == 3 and after == [] and statuses == ["succeeded"] * 3  # the first outcome stands


def test_a_repeated_commit_of_an_upload_that_just_ended_answers_its_outcome(run_store, model):
    async def scenario(store):
        grant, claim = await claimed_upload(store, model)
        await store.complete(token(store, claim), b"done", "text/plain")
        again = await store.commit_upload(grant.task_id)  # its payload's delete still waits for its batch
        return again.status(store.now())

    assert run_store(scenario) == "succeeded"


def test_batches_in_flight_are_bounded_and_a_full_one_goes_apart_from_its_request():
    release, sent = asyncio.Event(), []

    class Slow:
        async def delete_batch(self, names):
            await release.wait()
            sent.append(len(names))
            return len(names)

    async def scenario():
        discards = Discards(Slow(), seconds=3600)
        for i in range(BATCH * SENDING):  # fills SENDING batches: each goes in the background
            await discards.add(f"b{i}")
        background = len(discards._sending)
        blocked = asyncio.ensure_future(asyncio.gather(*(discards.add(f"c{i}") for i in range(BATCH))))
        await asyncio.sleep(0.05)
        waited = not blocked.done()  # the next full batch, with SENDING in flight, is sent by its add
        release.set()
        await blocked
        await discards.flush()
        return background, waited

    background, waited = run_async(scenario)
    assert background == SENDING and waited and sent == [BATCH] * (SENDING + 1)


def test_the_add_that_fills_a_batch_sends_it_and_nothing_more_is_held():
    sent: list[list[str]] = []

    class Container:
        async def delete_batch(self, names):
            sent.append(list(names))
            return len(names)

    async def scenario():
        discards = Discards(Container(), seconds=3600)
        for i in range(BATCH * 2 + 10):
            await discards.add(f"b{i}")
            assert len(discards) < BATCH
        held = len(discards)
        await discards.flush()
        return held, len(discards)

    held, after = run_async(scenario)
    assert sorted(len(batch) for batch in sent) == [10, BATCH, BATCH] and (held, after) == (10, 0)
    assert sorted(name for batch in sent for name in batch) == sorted(f"b{i}" for i in range(BATCH * 2 + 10))
