"""Deadlines (ttl=S on a submit) on Azurite with a moved clock: a task not started by its deadline
expires; one still running at it is cancelled, and its worker learns it at its next heartbeat or put."""

from __future__ import annotations

import pytest

from broker.errors import TaskCancelled

from .conftest import token


def test_a_task_nobody_starts_by_its_deadline_expires(run_store, model):
    async def scenario(store):
        task, _ = await store.submit(model, b"p", "text/plain", {}, ttl=10)
        store.now.advance(11)
        claimed = await store.claim(model, 1, 0, 30)
        return claimed, (await store.status(task.task_id)).document(store.now())

    claimed, document = run_store(scenario)
    assert claimed == [] and document["status"] == "expired"
    assert document["error"] == "not started before its deadline, 10 seconds after its submission (ttl)"


@pytest.mark.parametrize("step", ["heartbeat", "put", "retryable failure"])
def test_a_task_running_at_its_deadline_is_cancelled_and_its_worker_told(run_store, model, step):
    async def scenario(store):
        task, _ = await store.submit(model, b"p", "text/plain", {}, ttl=10)
        [claim] = await store.claim(model, 1, 0, 60)
        store.now.advance(11)
        read_before = (await store.status(task.task_id)).document(store.now())["status"]
        lease = token(store, claim)
        call = {"heartbeat": lambda: store.extend(lease, 30), "put": lambda: store.complete(lease, b"late", "text/plain"),
                "retryable failure": lambda: store.fail(lease, "try again", retryable=True)}[step]
        with pytest.raises(TaskCancelled):
            await call()
        return read_before, (await store.status(task.task_id)).document(store.now())

    read_before, document = run_store(scenario)
    assert read_before == "cancelled"  # derived at once, before anyone writes it
    assert document["status"] == "cancelled" and document["error"].endswith("passed while it ran")


def test_the_sweep_cancels_a_task_whose_worker_is_gone_at_its_deadline(run_store, model):
    async def scenario(store):
        task, _ = await store.submit(model, b"p", "text/plain", {}, ttl=10)
        await store.claim(model, 1, 0, 600)
        store.now.advance(11)
        await store.sweep()
        blob = await store.storage.outbox.head(task.task_id)
        return blob is not None, (await store.status(task.task_id)).document(store.now())["status"]

    written, status = run_store(scenario)
    assert written and status == "cancelled"
