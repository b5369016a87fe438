"""The task store in process, on the session's Azurite, with a clock the test moves: TTLs and lease
deadlines pass at once instead of in real seconds. A lease "running out" is the clock moving past
it plus its message made visible again (what the queue does when its visibility timeout passes)."""

from __future__ import annotations

import dataclasses
import time

import pytest
import requests

from broker import settings as broker_settings
from broker.lease import Lease
from broker.storage import Storage
from broker.store import TaskStore
from tests.support.clock import ManualClock
from tests.support.polling import run_async


def wall_clock() -> ManualClock:
    """The store's wall clock, set by hand, from now."""
    return ManualClock(time.time())


async def lapse(store: TaskStore, claim) -> None:
    """Let the claim's lease run out: past its deadline on the store's clock, its message visible."""
    lease = Lease.decode(claim.lease, claim.task_id, store.settings.lease_secrets)
    store.now.advance(3600)
    await store.storage.queues.update(lease.model, lease.msg, lease.receipt, 0)


async def claimed_upload(store: TaskStore, model: str, payload: bytes = b"abcd"):
    """An upload's grant and its task's claim: granted, written through its URL, committed, claimed."""
    grant = await store.begin_upload(model, len(payload), "text/plain", {})
    requests.put(grant.url, data=payload, headers={"x-ms-blob-type": "BlockBlob"}, timeout=30)
    await store.commit_upload(grant.task_id)
    [claim] = await store.claim(model, 1, 0, 30)
    return grant, claim


def spy(target, *names: str) -> list[tuple[str, tuple]]:
    """Record each call of the async methods `names` of `target` (a storage container, the queues) as
    (name, args), in order; the calls still go through, to Azurite."""
    calls: list[tuple[str, tuple]] = []
    for name in names:
        real = getattr(target, name)

        async def recorded(*args, _real=real, _name=name, **kwargs):
            calls.append((_name, args))
            return await _real(*args, **kwargs)

        setattr(target, name, recorded)
    return calls


def token(store: TaskStore, claim) -> Lease:
    return Lease.decode(claim.lease, claim.task_id, store.settings.lease_secrets)


@pytest.fixture
def run_store(azurite, lease_secret, monkeypatch):
    """run_store(scenario, **settings): run `async scenario(store)` on a fresh clocked store."""
    monkeypatch.setenv("BROKER_STORAGE_CONNECTION", azurite.connection_string)
    monkeypatch.setenv("BROKER_LEASE_SECRET", lease_secret)

    def run(scenario, **overrides):
        async def go():
            storage = Storage(azurite.connection_string, 2)
            try:
                settings = dataclasses.replace(broker_settings.load(), **overrides)
                return await scenario(TaskStore(storage, settings, clock=wall_clock()))
            finally:
                await storage.close()

        return run_async(go)

    return run
