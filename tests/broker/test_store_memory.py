"""The task store in process, on the real Azurite: what it keeps in memory between requests.

Every getresult and getnexttask watches a wake-up key while it runs; a key must not outlive its
watchers, or an instance answering for many task ids (open client routes, tasks finished on
other instances) would grow without bound.
"""

import asyncio

import pytest

from broker import settings as broker_settings
from broker.errors import TaskNotFound
from broker.storage import Storage
from broker.store import TaskStore
from tests.support.polling import run_async


def test_reading_and_polling_leave_no_wakeup_behind(azurite, monkeypatch, lease_secret, model):
    monkeypatch.setenv("BROKER_STORAGE_CONNECTION", azurite.connection_string)
    monkeypatch.setenv("BROKER_LEASE_SECRET", lease_secret)

    async def scenario() -> list[int]:
        store = TaskStore(Storage(azurite.connection_string, 20), broker_settings.load())
        try:
            submitted, _ = await store.submit(model, b"x", "text/plain", {})
            watched = []
            for i in range(50):
                with pytest.raises(TaskNotFound):
                    await store.result(f"{i:032x}", wait=0)
            watched.append(len(store.wakeups))
            waiting = asyncio.ensure_future(store.result(submitted.task_id, wait=5))
            await asyncio.sleep(0.3)
            watched.append(len(store.wakeups))  # one waiter, one key, while it waits
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            assert await store.claim(model + "-none", 1, 0.3, 60) == []
            [task] = await store.claim(model, 1, 0, 60)
            assert task.task_id == submitted.task_id
            watched.append(len(store.wakeups))
            return watched
        finally:
            await store.storage.close()

    assert run_async(scenario) == [0, 1, 0]
