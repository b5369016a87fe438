"""Lease, attempt and TTL rules of the store, on Azurite with a moved clock (no sleeping): the fast
counterparts of tests/broker/test_stale_leases.py, test_expiry.py and test_leases.py, which hold
the same rules over HTTP in real time."""

from __future__ import annotations

import pytest

from broker.errors import LeaseLost, TaskExpired, TaskNotFound
from broker.lease import Lease
from broker.records import LeaseState

from .conftest import lapse, token


async def _state(store, task_id):
    blob = await store.storage.inbox.head(task_id)
    return blob.metadata.get("state")


def test_a_token_whose_lease_ran_out_and_was_claimed_again_is_refused_and_writes_nothing(run_store, model):
    async def scenario(store):
        task, _ = await store.submit(model, b"p", "text/plain", {})
        [first] = await store.claim(model, 1, 0, 30)
        await lapse(store, first)
        [second] = await store.claim(model, 1, 0, 30)
        assert (first.attempt, second.attempt) == (1, 2)
        before = await _state(store, task.task_id)
        for stale in (lambda: store.extend(token(store, first), 30), lambda: store.extend(token(store, first), 0),
                      lambda: store.fail(token(store, first), "flaky", retryable=True)):
            with pytest.raises(LeaseLost):
                await stale()
            assert await _state(store, task.task_id) == before  # a refused call writes nothing
        renewed = await store.extend(token(store, second), 30)  # the live token still works
        assert renewed.lease
        return (await store.status(task.task_id)).status(store.now())

    assert run_store(scenario) == "running"


def test_a_task_gives_up_after_max_attempts_whatever_is_replayed(run_store, model):
    async def scenario(store):
        task, _ = await store.submit(model, b"p", "text/plain", {})
        claims = []
        for _ in range(3):
            got = await store.claim(model, 1, 0, 30)
            if not got:
                break
            claims += got
            for old in claims[:-1]:  # replays of every earlier token on the way
                with pytest.raises(LeaseLost):
                    await store.extend(token(store, old), 0)
            await lapse(store, got[0])
        final = await store.status(task.task_id)
        return [c.attempt for c in claims], final.status(store.now()), final.outcome.error

    attempts, status, error = run_store(scenario, max_attempts=2)
    assert attempts == [1, 2] and status == "failed"
    assert error.startswith("gave up after 2 attempts")


def test_a_give_back_keeps_the_attempt_number(run_store, model):
    async def scenario(store):
        await store.submit(model, b"p", "text/plain", {})
        numbers = []
        for _ in range(4):
            [claim] = await store.claim(model, 1, 0, 30)
            numbers.append(claim.attempt)
            await store.extend(token(store, claim), 0)
        return numbers

    assert run_store(scenario) == [1, 1, 1, 1]


def test_a_task_not_started_within_its_queued_ttl_expires_and_is_never_handed_out(run_store, model):
    async def scenario(store):
        task, _ = await store.submit(model, b"p", "text/plain", {})
        store.now.advance(61)
        assert (await store.status(task.task_id)).status(store.now()) == "expired"
        assert await store.claim(model, 8, 0, 30) == []  # the claim that meets it writes the outcome
        await store.discards.flush()  # its payload's delete, batched a moment later
        done = await store.status(task.task_id)
        return done.outcome.status, await store.storage.inbox.head(task.task_id)

    status, payload = run_store(scenario, queued_ttl_seconds=60)
    assert status == "expired" and payload is None


def test_a_running_task_outlives_its_queued_ttl_but_a_late_give_back_expires_it(run_store, model):
    async def scenario(store):
        task, _ = await store.submit(model, b"p", "text/plain", {})
        [claim] = await store.claim(model, 1, 0, 30)
        store.now.advance(61)
        renewed = await store.extend(token(store, claim), 30)
        assert (await store.status(task.task_id)).status(store.now()) == "running"
        lease = Lease.decode(renewed.lease, task.task_id, store.settings.lease_secrets)
        with pytest.raises(TaskExpired):
            await store.extend(lease, 0)
        return (await store.status(task.task_id)).status(store.now())

    assert run_store(scenario, queued_ttl_seconds=60) == "expired"


def test_a_result_past_its_ttl_reads_as_unknown(run_store, model):
    async def scenario(store):
        task, _ = await store.submit(model, b"p", "text/plain", {})
        [claim] = await store.claim(model, 1, 0, 30)
        await store.complete(token(store, claim), b"done", "text/plain")
        assert (await store.result(task.task_id, 0))[1] == b"done"
        store.now.advance(3601)
        with pytest.raises(TaskNotFound):
            await store.status(task.task_id)

    run_store(scenario, result_ttl_seconds=3600)


def test_lease_state_records_the_claim_count(run_store, model):
    async def scenario(store):
        task, _ = await store.submit(model, b"p", "text/plain", {})
        for _ in range(3):
            [claim] = await store.claim(model, 1, 0, 30)
            await store.extend(token(store, claim), 0)
        blob = await store.storage.inbox.head(task.task_id)
        return LeaseState.from_metadata(blob.metadata).claim

    assert run_store(scenario) == 3
