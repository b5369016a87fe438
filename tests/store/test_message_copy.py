"""A plain submit's queue message carries a copy of its inbox blob (records.TaskMessage), so that
the first claim writes its lease state without reading the blob. These hold, on Azurite, that the
copy is used only while it is what the blob holds: any change to the blob sends the claim to read
it, and what the claim hands out is the same either way."""

from __future__ import annotations

import base64
import json

import pytest

from broker.records import MESSAGE_BYTES, LeaseState, TaskMessage

from .conftest import lapse, spy


def reads_of(calls) -> list[str]:
    """Which inbox reads the calls spied on were ("read", "head")."""
    return [name for name, _ in calls]


async def sent(store, model) -> TaskMessage:
    [message] = await store.storage.queues.peek(model, 1)
    return TaskMessage.parse(message.content)


def test_a_first_claim_takes_the_blob_from_its_message_without_reading_it(run_store, model):
    async def scenario(store):
        task, _ = await store.submit(model, b"small payload", "text/plain", {"k": 1})
        message = await sent(store, model)
        calls = spy(store.storage.inbox, "read", "head")
        [claim] = await store.claim(model, 1, 0, 30)
        reads = reads_of(calls)  # the claim's; not the reads below
        state = LeaseState.from_metadata((await store.storage.inbox.head(task.task_id)).metadata)
        return message, reads, claim, state, (await store.status(task.task_id)).status(store.now())

    message, reads, claim, state, status = run_store(scenario)
    assert message.etag and message.payload() == b"small payload"
    assert reads == []  # the state write, conditional on the copy's etag, was the claim's only blob call
    assert (claim.payload, claim.params, claim.content_type, claim.attempt) == (b"small payload", {"k": 1},
                                                                               "text/plain", 1)
    assert state.attempt == 1 and status == "running"


def test_a_blob_changed_since_its_submit_is_read_and_claimed_as_it_stands(run_store, model):
    async def scenario(store):
        task, _ = await store.submit(model, b"payload", "text/plain", {})
        blob = await store.storage.inbox.head(task.task_id)
        # Anything that writes the blob changes its etag: here its metadata is written again, unchanged.
        assert await store.storage.inbox.set_metadata(task.task_id, blob.metadata, blob.etag)
        calls = spy(store.storage.inbox, "read", "head")
        [claim] = await store.claim(model, 1, 0, 30)
        return reads_of(calls), claim, (await store.status(task.task_id)).status(store.now())

    reads, claim, status = run_store(scenario)
    assert reads == ["head"]  # the copy's write was refused (412): the claim looked, and wrote again
    assert (claim.payload, claim.attempt, status) == (b"payload", 1, "running")


def test_a_task_cancelled_before_its_first_claim_is_not_handed_out(run_store, model):
    async def scenario(store):
        task, _ = await store.submit(model, b"payload", "text/plain", {})
        await store.cancel(task.task_id)
        claimed = await store.claim(model, 1, 0, 30)
        return claimed, await store.storage.queues.peek(model, 1), (await store.status(task.task_id)).status(store.now())

    claimed, left, status = run_store(scenario)
    assert claimed == [] and left == [] and status == "cancelled"


def test_a_redelivery_reads_the_blob_and_counts_the_attempt(run_store, model):
    async def scenario(store):
        await store.submit(model, b"payload", "text/plain", {})
        [first] = await store.claim(model, 1, 0, 30)
        await lapse(store, first)
        calls = spy(store.storage.inbox, "read", "head")
        [second] = await store.claim(model, 1, 0, 30)
        return reads_of(calls), second

    reads, second = run_store(scenario)
    assert reads == ["read"] and (second.payload, second.attempt) == (b"payload", 2)


def test_a_payload_too_large_for_the_message_is_read_from_its_blob(run_store, model):
    payload = bytes(range(256)) * (MESSAGE_BYTES // 256)  # base64 makes it a third larger than the budget

    async def scenario(store):
        await store.submit(model, payload, "application/octet-stream", {})
        message = await sent(store, model)
        calls = spy(store.storage.inbox, "read", "head")
        [claim] = await store.claim(model, 1, 0, 30)
        return message, reads_of(calls), claim

    message, reads, claim = run_store(scenario)
    assert message.etag and message.body is None and message.size == len(payload)
    assert reads == ["read"] and claim.payload == payload


def test_a_payload_handed_out_by_url_needs_no_read_either(run_store, model):
    async def scenario(store):
        await store.submit(model, b"x" * 2000, "application/octet-stream", {})
        message = await sent(store, model)
        calls = spy(store.storage.inbox, "read", "head")
        [claim] = await store.claim(model, 1, 0, 30)
        return message, reads_of(calls), claim

    message, reads, claim = run_store(scenario, inline_bytes=1024)
    assert message.etag and message.body is None and message.size == 2000
    assert reads == [] and claim.payload is None and claim.payload_url and claim.size == 2000


def test_an_idempotent_submit_sends_no_copy(run_store, model):
    """Its submit writes the blob again once the message is sent (the mark that it was), so a copy
    would never match: the claim reads the blob, as before."""
    async def scenario(store):
        await store.submit(model, b"payload", "text/plain", {}, idempotency_key="k1")
        message = await sent(store, model)
        [claim] = await store.claim(model, 1, 0, 30)
        return message, claim

    message, claim = run_store(scenario)
    assert message.etag is None and message.body is None and claim.payload == b"payload"


@pytest.mark.parametrize("content", [
    '{"id":"%s","size":1,"created":1.0,"etag":"e","meta":{"task":"{not json"},"body":"eA=="}',
    '{"id":"%s","size":1,"created":1.0,"etag":"e","meta":{"task":{}},"body":"eA=="}',
    '{"id":"%s","size":1,"created":1.0,"etag":"e","meta":"task","body":"eA=="}',
    '{"id":"%s","size":2,"created":1.0,"etag":"e","meta":{},"body":"eA=="}',
    '{"id":"%s","size":1,"created":1.0,"etag":"e","meta":{},"body":"not base64!"}',
])
def test_a_copy_that_does_not_read_well_is_ignored_and_the_blob_read(run_store, model, content):
    """A message's copy is only the broker's own writing, but one that is not well formed must cost a
    read, never the task."""
    async def scenario(store):
        task, _ = await store.submit(model, b"x", "text/plain", {})
        [message] = await store.storage.queues.receive(model, 1, 30)
        await store.storage.queues.delete(model, message.id, message.receipt)
        created = TaskMessage.parse(message.content).created
        etag = (await store.storage.inbox.head(task.task_id)).etag  # the blob's own: a copy used would be accepted
        forged = (content % task.task_id).replace('"created":1.0', f'"created":{created!r}').replace(
            '"etag":"e"', '"etag":' + json.dumps(etag))
        await store.storage.queues.send(model, forged, 60)
        [claim] = await store.claim(model, 1, 0, 30)
        return claim

    claim = run_store(scenario)
    assert (claim.payload, claim.attempt) == (b"x", 1)


def test_a_message_with_its_payload_stays_within_the_budget():
    for size in (0, 1, 1000, 30_000, 35_000, 36_000, 40_000, 100_000):
        payload = b"\xff" * size
        message = TaskMessage.carrying("a" * 32, size, 1.0, '"0x8DC"', {"task": '{"params":"&<>"}'}, payload)
        text = message.dump()
        assert message.fits() and len(text) <= MESSAGE_BYTES
        parsed = TaskMessage.parse(text)
        assert parsed == message
        assert parsed.payload() == (payload if message.body is not None else None)
        assert (message.body is not None) == (size <= 36_000)  # 40 KB is over 48 KiB in base64
    assert base64.b64decode(TaskMessage.carrying("a" * 32, 3, 1.0, "e", {}, b"abc").body) == b"abc"
