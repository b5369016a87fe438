"""Guarantees at the edges of a task's life, each forced at one exact step in process (on the test's
Azurite): a claim racing a slow claim, a late put from an earlier task under the same key, a sweep
acting on an old listing, a heartbeat after the task's message has died of old age."""

import asyncio
import time

from broker.errors import LeaseLost
from broker.lease import Lease, receipt_hash
from broker.records import LeaseState, now

from .test_leases import extend
from .test_submit import InProcess


def lease_of(store, claim) -> Lease:
    return Lease.decode(claim.lease, claim.task_id, store.settings.lease_secrets)


def test_a_claim_takes_over_from_a_slow_claim_whose_receipt_it_replaced(azurite, lease_secret, model, monkeypatch):
    """Claim A received the message, and its lease ran out before it wrote its state; claim B received
    the message again (so A's receipt is stale with the queue) and meets A's state when it writes: B
    takes the lease, rather than leaving the task invisible with a token nobody holds."""

    async def scenario(store):
        task, _ = await store.submit(model, b"p", "text/plain", {})
        [slow] = await store.storage.queues.receive(model, 1, 1)
        await asyncio.sleep(1.3)
        write = store.storage.inbox.set_metadata

        async def slow_claim_writes_first(name, metadata, etag):
            store.storage.inbox.set_metadata = write
            blob = await store.storage.inbox.head(name)
            at = now()
            state = LeaseState(slow.id, at + 60, at, 1, claim=1, receipt=receipt_hash(slow.receipt))
            assert await write(name, {**blob.metadata, "state": state.dump()}, blob.etag) is not None
            return await write(name, metadata, etag)  # B's write: the blob changed

        store.storage.inbox.set_metadata = slow_claim_writes_first
        claims = await store.claim(model, 1, 0, 30)
        assert [c.task_id for c in claims] == [task.task_id]
        renewed = await store.extend(lease_of(store, claims[0]), 30)  # B's token is the live one
        assert renewed.lease
        return (await store.status(task.task_id)).status(now())

    assert InProcess(azurite, lease_secret, monkeypatch).run(scenario) == "running"


def test_a_late_put_from_an_earlier_task_under_the_same_key_is_refused(azurite, lease_secret, model, monkeypatch):
    """The first task under a key was claimed, then cancelled; its result was cleaned away and the key
    used again. The first claim's worker puts late: 409, and the new task stays queued."""

    async def scenario(store):
        first, _ = await store.submit(model, b"p", "text/plain", {}, "again" + model)
        [claim] = await store.claim(model, 1, 0, 60)
        await store.cancel(first.task_id)
        await asyncio.sleep(1.2)  # past BROKER_RESULT_TTL_SECONDS
        await store.storage.outbox.delete(first.task_id)  # what the cleanup does
        second, created = await store.submit(model, b"p", "text/plain", {}, "again" + model)
        assert created and second.task_id == first.task_id
        try:
            await store.complete(lease_of(store, claim), b"late", "text/plain")
        except LeaseLost:
            pass
        else:
            raise AssertionError("the late put was accepted")
        return (await store.status(second.task_id)).status(now()), len(await store.claim(model, 8, 0, 60))

    run = InProcess(azurite, lease_secret, monkeypatch, BROKER_RESULT_TTL_SECONDS="1").run
    assert run(scenario) == ("queued", 1)


def test_a_key_used_again_after_a_finish_that_left_its_payload_runs_the_new_task(azurite, lease_secret, model,
                                                                                  monkeypatch):
    """A finish wrote the outcome and could not delete the payload; once the result has expired, the
    key's next submit clears both and queues its own task (it is not mistaken for the old one)."""

    async def scenario(store):
        first, _ = await store.submit(model, b"one", "text/plain", {}, "k" + model)
        [claim] = await store.claim(model, 1, 0, 60)
        left = await store.storage.inbox.read(first.task_id)
        await store.complete(lease_of(store, claim), b"done", "text/plain")
        await store.storage.inbox.put(first.task_id, left.body, left.metadata, "text/plain")  # the leftover
        await asyncio.sleep(1.2)  # past BROKER_RESULT_TTL_SECONDS, not yet cleaned away
        second, created = await store.submit(model, b"two", "text/plain", {}, "k" + model)
        claims = await store.claim(model, 8, 0, 60)
        return created, [(c.task_id, c.payload) for c in claims]

    run = InProcess(azurite, lease_secret, monkeypatch, BROKER_RESULT_TTL_SECONDS="1").run
    created, claims = run(scenario)
    assert created and len(claims) == 1 and claims[0][1] == b"two"


def test_the_sweep_does_not_expire_a_task_claimed_since_its_listing(azurite, lease_secret, model, monkeypatch):
    async def scenario(store):
        task, _ = await store.submit(model, b"p", "text/plain", {})
        listed = await store.storage.inbox.head(task.task_id)  # as a listing saw it: queued
        [claim] = await store.claim(model, 1, 0, 60)
        await asyncio.sleep(2.3)  # past the queued TTL, still held
        store.storage.inbox.page = lambda *args, **kwargs: _answer(([listed], None))
        await store.sweep()
        status = (await store.status(task.task_id)).status(now())
        await store.complete(lease_of(store, claim), b"done", "text/plain")
        return status, (await store.status(task.task_id)).status(now())

    run = InProcess(azurite, lease_secret, monkeypatch, BROKER_QUEUED_TTL_SECONDS="2").run
    assert run(scenario) == ("running", "succeeded")


def test_a_task_message_lives_at_least_as_long_as_the_task_may_wait(azurite, lease_secret, model, monkeypatch):
    async def scenario(store):
        sent = []
        send = store.storage.queues.send

        async def recording(model_name, content, ttl):
            sent.append(ttl)
            return await send(model_name, content, ttl)

        store.storage.queues.send = recording
        await store.submit(model, b"p", "text/plain", {})
        await store.submit(model, b"p", "text/plain", {}, "ttl" + model)
        return sent, store.settings.queued_ttl_seconds

    sent, ttl = InProcess(azurite, lease_secret, monkeypatch, BROKER_QUEUED_TTL_SECONDS="7").run(scenario)
    assert len(sent) == 2 and all(t >= ttl for t in sent), sent


def test_a_heartbeat_after_the_lease_and_the_message_ran_out_past_the_ttl_is_410(start_broker, model):
    """Nothing redelivers a task whose message died of old age: a heartbeat that comes after its lease
    ran out finds it expired, rather than reviving it."""
    short = start_broker({"BROKER_QUEUED_TTL_SECONDS": "2"})
    task_id = short.submit(model)
    [task] = short.claim(model, lease=5)
    time.sleep(5.5)  # the message (TTL 2 s and a 2 s margin) is gone, and the lease ran out at 5 s
    late = extend(short, task, 30)
    assert late.status_code == 410 and late.json()["status"] == "expired", late.text
    assert short.status(task_id)["status"] == "expired"
    assert short.put(task, b"late").status_code == 410


async def _answer(value):
    return value



def test_a_late_put_racing_the_reuse_of_its_key_takes_its_outcome_back(azurite, lease_secret, model, monkeypatch):
    """The late put passes its check while the old task's leftover payload is there; the key's next
    submit then clears it and creates the new task before the put's outcome lands. The put takes
    its outcome back (409), and the new task keeps its payload and runs."""

    async def scenario(store):
        first, _ = await store.submit(model, b"one", "text/plain", {}, "race" + model)
        [claim] = await store.claim(model, 1, 0, 60)
        left = await store.storage.inbox.read(first.task_id)
        await store.fail(lease_of(store, claim), "boom", retryable=False)
        await store.storage.inbox.put(first.task_id, left.body, left.metadata, "text/plain")  # a leftover
        await asyncio.sleep(1.2)  # past BROKER_RESULT_TTL_SECONDS
        create, box = store.storage.outbox.create, {}

        async def submit_again_first(name, body, metadata, content_type):
            store.storage.outbox.create = create
            box["second"] = await store.submit(model, b"two", "text/plain", {}, "race" + model)
            return await create(name, body, metadata, content_type)

        store.storage.outbox.create = submit_again_first
        try:
            await store.complete(lease_of(store, claim), b"late result of one", "text/plain")
        except LeaseLost:
            pass
        else:
            raise AssertionError("the late put was accepted")
        second, created = box["second"]
        claims = await store.claim(model, 8, 0, 60)
        return created, (await store.status(second.task_id)).status(now()), [c.payload for c in claims]

    run = InProcess(azurite, lease_secret, monkeypatch, BROKER_RESULT_TTL_SECONDS="1").run
    assert run(scenario) == (True, "running", [b"two"])


def test_a_cancelled_tasks_message_does_not_deliver_the_next_task_under_its_key(azurite, lease_secret, model,
                                                                                 monkeypatch):
    """A cancel leaves the task's message queued (it holds no receipt). When the key makes a new task
    under the same id, the old message is dropped, and the new task is delivered by its own."""

    async def scenario(store):
        sent = []
        send = store.storage.queues.send

        async def recording(model_name, content, ttl):
            message = await send(model_name, content, ttl)
            sent.append(message.id)
            return message

        store.storage.queues.send = recording
        first, _ = await store.submit(model, b"one", "text/plain", {}, "again" + model)
        await store.cancel(first.task_id)
        await asyncio.sleep(1.2)  # past BROKER_RESULT_TTL_SECONDS
        second, created = await store.submit(model, b"two", "text/plain", {}, "again" + model)
        claims = await store.claim(model, 8, 0, 30)
        if not claims:  # the claim met the old message first and dropped it
            claims = await store.claim(model, 8, 0, 30)
        [claim] = claims
        return created, lease_of(store, claim).msg == sent[1], claim.payload

    run = InProcess(azurite, lease_secret, monkeypatch, BROKER_RESULT_TTL_SECONDS="1").run
    assert run(scenario) == (True, True, b"two")
