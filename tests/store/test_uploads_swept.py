"""What the sweep does with the `uploads` container, on Azurite with a moved clock: an upload never
committed (a client killed half way) goes with its record and its staged blocks; a result a worker
wrote and never committed goes once its task has ended; the committed payload and result stay while
they are used and go with the task."""

from __future__ import annotations

import base64

import requests

from broker.errors import UploadPending
from broker.records import payload_blob, result_blob

from .conftest import claimed_upload, token


def _stage_block(url: str, data: bytes) -> None:
    """What a client killed mid-upload leaves: a staged block, no block list (no blob to read)."""
    block = requests.utils.quote(base64.b64encode(b"block-00000000").decode(), safe="")
    assert requests.put(f"{url}&comp=block&blockid={block}", data=data, timeout=30).status_code == 201


async def _uploads(store, prefix: str) -> list[str]:
    blobs, _ = await store.storage.uploads.page(None, 5000, uncommitted=True)
    return [blob.name for blob in blobs if blob.name.startswith(prefix)]


def test_an_upload_cut_short_never_becomes_a_task_and_is_swept_with_its_blocks(run_store, model):
    async def scenario(store):
        grant = await store.begin_upload(model, 10_000, "image/png", {})
        _stage_block(grant.url, b"x" * 5000)
        prefix = f"payloads/{grant.task_id}/"
        staged = await _uploads(store, prefix)
        try:
            await store.status(grant.task_id)
            raise AssertionError("an uncommitted upload answered as a task")
        except UploadPending:
            pass
        assert await store.sweep_uploads() == 0  # its record is there: the client may still be uploading
        await store.sweep()
        still = await store.storage.inbox.head(grant.task_id)
        store.now.advance(store.settings.upload_seconds + 301)  # its URL ran out, and the grace after it
        await store.sweep()
        gone = await store.storage.inbox.head(grant.task_id)
        return staged, still is not None, gone, await _uploads(store, prefix)

    staged, kept_while_open, record_after, left = run_store(scenario, upload_seconds=60)
    assert staged and kept_while_open
    assert record_after is None and left == []


def test_results_no_outcome_names_are_swept_once_the_task_ended_and_the_committed_one_stays(run_store, model):
    async def scenario(store):
        task, _ = await store.submit(model, b"p", "text/plain", {})
        [first] = await store.claim(model, 1, 0, 30)
        lease = token(store, first)
        # The first claim's worker writes a result and dies before putting it; a second claim commits its own.
        requests.put(first.result_upload_url, data=b"never put", headers={"x-ms-blob-type": "BlockBlob"}, timeout=30)
        await store.storage.queues.update(lease.model, lease.msg, lease.receipt, 0)
        store.now.advance(3600)
        [second] = await store.claim(model, 1, 0, 30)
        requests.put(second.result_upload_url, data=b"the result", headers={"x-ms-blob-type": "BlockBlob"},
                     timeout=30)
        prefix = f"results/{task.task_id}/"
        assert await store.sweep_uploads() == 0  # the task is open: a late put may still commit either
        await store.complete_uploaded(token(store, second), "text/plain")
        await store.discards.flush()  # the payload's delete, batched a moment after the put
        swept = await store.sweep_uploads()
        left = await _uploads(store, prefix)
        committed = result_blob(task.task_id, lease.created, token(store, second).claim)
        done, _ = await store.result(task.task_id, 0)
        # What the cleanup does for each result past its TTL (which ones it picks, tests/reliability/
        # test_cleanup.py holds; here the session's Azurite holds every other test's results too).
        await store._delete_leftover(await store.storage.outbox.head(task.task_id))
        return swept, left, committed, done.outcome.ref, await _uploads(store, prefix)

    swept, left, committed, ref, after_cleanup = run_store(scenario)
    assert swept == 1 and left == [committed] and ref == committed
    assert after_cleanup == []  # the cleanup of an expired result takes its upload too


def test_an_uploaded_payload_goes_with_its_task(run_store, model):
    async def scenario(store):
        grant, claim = await claimed_upload(store, model)
        name = payload_blob(grant.task_id, token(store, claim).created)
        before = await _uploads(store, name)
        await store.complete(token(store, claim), b"done", "text/plain")
        return before, await _uploads(store, name)

    before, after = run_store(scenario)
    assert before and after == []


def test_an_upload_leased_through_its_url_is_still_swept(run_store, model):
    async def scenario(store):
        grant = await store.begin_upload(model, 5, "text/plain", {})
        requests.put(grant.url, data=b"abcde", headers={"x-ms-blob-type": "BlockBlob"}, timeout=30)
        leased = requests.put(grant.url + "&comp=lease", headers={"x-ms-lease-action": "acquire",
                                                                  "x-ms-lease-duration": "-1"}, timeout=30)
        assert leased.status_code == 201
        store.now.advance(store.settings.upload_seconds + 301)
        await store.sweep()
        return await store.storage.inbox.head(grant.task_id), await _uploads(store, f"payloads/{grant.task_id}/")

    record, left = run_store(scenario, upload_seconds=60)
    assert record is None and left == []


def test_a_commit_or_a_fresh_grant_after_the_upload_lapsed_is_refused(run_store, model):
    from broker.errors import UploadLapsed

    async def scenario(store):
        grant = await store.begin_upload(model, 3, "text/plain", {})
        requests.put(grant.url, data=b"abc", headers={"x-ms-blob-type": "BlockBlob"}, timeout=30)
        store.now.advance(store.settings.upload_seconds + 301)
        outcomes = []
        try:
            await store.commit_upload(grant.task_id)
        except UploadLapsed:
            outcomes.append("commit refused")
        keyed = await store.begin_upload(model, 3, "text/plain", {}, "a key")
        store.now.advance(store.settings.queued_ttl_seconds + 1)
        try:
            await store.begin_upload(model, 3, "text/plain", {}, "a key")  # asking again does not live forever
        except UploadLapsed:
            outcomes.append("grant refused")
        return outcomes, keyed.task_id

    outcomes, _ = run_store(scenario, upload_seconds=60)
    assert outcomes == ["commit refused", "grant refused"]
