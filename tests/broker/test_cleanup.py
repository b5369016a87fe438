"""Results expire: 404 from finished_at + TTL on, and the timer function deletes them in batches."""

import asyncio
import importlib
import time

import pytest
from azure.storage.blob import BlobServiceClient

from tests.support.polling import run_async


@pytest.fixture
def ttl_broker(start_broker):
    return start_broker({"BROKER_RESULT_TTL_SECONDS": "2"})


def finish(broker, model, count):
    ids = [broker.submit(model, f"{i}".encode()) for i in range(count)]
    for task in broker.claim(model, max_tasks=count):
        assert broker.put(task).status_code == 200
    return ids


def run_cleanup(monkeypatch, azurite, ttl, batch, at: float | None = None):
    """Run the timer function itself, in this process, against the test's Azurite; `at`: the wall-clock
    time it runs at (default: the real one), so that a slow run cannot age what a short TTL spares."""
    monkeypatch.setenv("BROKER_STORAGE_CONNECTION", azurite.connection_string)
    monkeypatch.setenv("BROKER_RESULT_TTL_SECONDS", str(ttl))
    monkeypatch.setenv("BROKER_CLEANUP_BATCH", str(batch))
    cleanup = importlib.import_module("broker.cleanup").cleanup
    store = importlib.import_module("broker.store")
    load = importlib.import_module("broker.settings").load

    async def once():
        try:
            if at is not None:
                store.get_store(load()).now = lambda: at  # the store the timer function gets
            await cleanup(None)
        finally:
            for key, task_store in list(store._stores.items()):
                if key[0] is asyncio.get_running_loop():
                    await task_store.storage.close()
                    del store._stores[key]

    run_async(once)


def test_expired_result_reads_404_before_the_timer_runs(ttl_broker, model):
    [task_id] = finish(ttl_broker, model, 1)
    assert ttl_broker.get(f"/getresult?task_id={task_id}").status_code == 200
    time.sleep(2.2)
    for path in ("/getresult", "/status"):
        assert ttl_broker.get(f"{path}?task_id={task_id}").status_code == 404
    assert ttl_broker.post(f"/cancel?task_id={task_id}").status_code == 404


def test_timer_deletes_expired_results_in_batches_and_leaves_newer_ones(ttl_broker, broker, azurite, model,
                                                                        monkeypatch):
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    outbox = blobs.get_container_client("outbox")
    old = finish(ttl_broker, model, 5)
    # A leftover of a crash: the inbox blob of a finished task still there.
    blobs.get_blob_client("inbox", old[0]).upload_blob(b"leftover", overwrite=True)
    time.sleep(2.5)
    at = time.time()  # the cleanup runs at this time: the old results are past their TTL, the new ones not
    new = finish(ttl_broker, model, 2)

    def present(ids):
        return {i for i in ids if outbox.get_blob_client(i).exists()}

    # Other tests' results are in the same outbox: count only this test's.
    run_cleanup(monkeypatch, azurite, ttl=2, batch=100000, at=at)
    assert present(old) == set()
    assert present(new) == set(new)
    assert not blobs.get_blob_client("inbox", old[0]).exists()
    assert broker.get(f"/getresult?task_id={new[0]}").status_code == 200  # (a broker whose TTL is not 2 s)


def test_an_interrupted_cleanup_resumes(ttl_broker, azurite, model, monkeypatch):
    outbox = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("outbox")
    old = finish(ttl_broker, model, 5)
    time.sleep(2.5)
    remaining = []
    for _ in range(100):  # each run stops after 2 deletions, as if cut short; the next one goes on
        run_cleanup(monkeypatch, azurite, ttl=2, batch=2)
        remaining.append(len([i for i in old if outbox.get_blob_client(i).exists()]))
        if remaining[-1] == 0:
            break
    assert remaining[-1] == 0
    assert len(remaining) >= 2  # it took more than one bounded run


def test_cleanup_leaves_a_task_submitted_again_under_the_same_key(ttl_broker, azurite, lease_secret, model,
                                                                  monkeypatch):
    """A repeat with the Idempotency-Key of an expired result makes a new task under the same blob name;
    a cleanup that listed the old result just before must not delete the new task's payload."""
    from .test_submit import InProcess

    headers = {"Idempotency-Key": f"again-{model}", "Content-Type": "text/plain"}
    first = ttl_broker.post(f"/predict?model={model}", data=b"p", headers=headers).json()["task_id"]
    [task] = ttl_broker.claim(model)
    assert ttl_broker.put(task).status_code == 200
    time.sleep(2.5)
    repeats = []

    async def cleanup_with_a_repeat_in_between(store):
        page = store.storage.outbox.page

        async def listed_then_repeated(*args, **kwargs):
            listing = await page(*args, **kwargs)
            if not repeats:
                repeats.append(ttl_broker.post(f"/predict?model={model}", data=b"p", headers=headers))
            return listing

        store.storage.outbox.page = listed_then_repeated
        return await store.cleanup()

    InProcess(azurite, lease_secret, monkeypatch, BROKER_RESULT_TTL_SECONDS="2").run(cleanup_with_a_repeat_in_between)
    again = repeats[0].json()
    assert again["task_id"] == first and again["status"] == "queued"
    assert ttl_broker.status(first)["status"] == "queued"  # the new task is still there
    [task] = ttl_broker.claim(model)
    assert ttl_broker.put(task, b"second run").status_code == 200
    assert ttl_broker.get(f"/getresult?task_id={first}").content == b"second run"
