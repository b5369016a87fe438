"""A getresult on the instance that ended a task answers with what it committed, and a wait on the
instance that queued it waits before its first look (broker/recent.py), on Azurite: the answers are
the ones a read of storage gives, to the same callers, for as long."""

from __future__ import annotations

import pytest

from broker.errors import TaskNotFound
from broker.storage import Storage
from broker.store import TaskStore

from .conftest import spy, token, wall_clock


async def finish(store, model, body=b"the result", owner=""):
    task, _ = await store.submit(model, b"p", "text/plain", {}, scope=owner)
    [claim] = await store.claim(model, 1, 0, 30)
    await store.complete(token(store, claim), body, "text/plain")
    return task.task_id


def test_a_result_committed_here_is_answered_as_storage_has_it_without_reading_it(run_store, azurite, model):
    async def scenario(store):
        task_id = await finish(store, model)
        calls = spy(store.storage.outbox, "read", "head")
        here = [await store.result(task_id, wait) for wait in (0, 5)]
        reads = [name for name, _ in calls]
        # Another instance on the same account has no memory of it: it reads storage.
        other = TaskStore(Storage(azurite.connection_string, 2), store.settings, clock=store.now)
        try:
            there = await other.result(task_id, 0)
        finally:
            await other.storage.close()
        return reads, here, there

    reads, here, there = run_store(scenario)
    assert reads == []
    for task, body in here:
        assert body == there[1] == b"the result"
        assert task.document(1.0) == there[0].document(1.0)


def test_a_result_committed_here_is_no_one_elses(run_store, model):
    async def scenario(store):
        task_id = await finish(store, model, owner="alice")
        with pytest.raises(TaskNotFound):
            await store.result(task_id, 0, owner="bob")
        return (await store.result(task_id, 0, owner="alice"))[1]

    assert run_store(scenario) == b"the result"


def test_a_result_past_its_ttl_is_not_answered_from_memory(run_store, model):
    async def scenario(store):
        task_id = await finish(store, model)
        store.now.advance(store.settings.result_ttl_seconds + 1)
        with pytest.raises(TaskNotFound):
            await store.result(task_id, 0)

    run_store(scenario)


def test_a_large_result_is_read_from_storage(run_store, model):
    async def scenario(store):
        task_id = await finish(store, model, body=b"r" * (64 * 1024 + 1))
        calls = spy(store.storage.outbox, "read", "head")
        _, body = await store.result(task_id, 0)
        return [name for name, _ in calls], len(body)

    reads, size = run_store(scenario)
    assert reads == ["read"] and size == 64 * 1024 + 1


def test_a_wait_on_a_task_queued_here_finds_an_outcome_put_on_another_instance(run_store, azurite, model):
    async def scenario(store):
        task, _ = await store.submit(model, b"p", "text/plain", {})
        other = TaskStore(Storage(azurite.connection_string, 2), store.settings, clock=wall_clock())
        try:
            [claim] = await other.claim(model, 1, 0, 30)
            await other.complete(token(other, claim), b"from elsewhere", "text/plain")
        finally:
            await other.storage.close()
        ended, body = await store.result(task.task_id, 10)
        return ended.status(store.now()), body

    assert run_store(scenario) == ("succeeded", b"from elsewhere")
