"""What one request can make the broker store or hold: metadata in bytes, a claim's payload bytes, JSON numbers."""

import base64
import json
import uuid

import pytest
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from broker.records import MAX_ERROR_BYTES, clip_error
from tests.support.polling import run_async

EMOJI_ERROR = "\U0001f525" * 700  # 2800 bytes of UTF-8, 8400 as an escaped JSON string


def test_clip_error_bounds_the_stored_bytes_not_the_characters():
    for text in (EMOJI_ERROR, "é" * 5000, "x" * 5000, "\x01" * 3000, '"\\' * 3000):
        clipped = clip_error(text)
        assert len(json.dumps(clipped, ensure_ascii=True)) <= MAX_ERROR_BYTES, text[:5]
        assert clipped.endswith("…")
    assert clip_error("  short\n error ") == "short error"


def test_a_long_non_ascii_error_is_clipped_and_the_task_stays_readable(start_broker, model):
    strict = start_broker({"BROKER_MAX_ATTEMPTS": "2"})
    task_id = strict.submit(model)
    [task] = strict.claim(model)
    assert strict.put_failure(task, EMOJI_ERROR, retryable=True).json()["status"] == "queued"
    assert strict.status(task_id)["status"] == "queued"
    [again] = strict.claim(model, wait=5)
    assert again["attempt"] == 2
    assert strict.put_failure(again, EMOJI_ERROR, retryable=True).json()["status"] == "failed"
    status = strict.status(task_id)
    assert status["status"] == "failed" and status["error"].startswith("gave up after 2 attempts: \U0001f525")
    assert len(json.dumps(status["error"])) <= MAX_ERROR_BYTES
    assert strict.get(f"/getresult?task_id={task_id}").status_code == 422


def test_non_ascii_params_are_bounded_as_stored(broker, model):
    big = {"text": "\u4e2d" * 1000}  # 3 KB of UTF-8, 6 KB as stored (escaped)
    response = broker.post(f"/predict?model={model}", data=b"x",
                           params={"params": json.dumps(big, ensure_ascii=False)})
    assert response.status_code == 400 and "4096 bytes" in response.json()["error"]
    fits = {"text": "\u4e2d" * 600}
    assert broker.post(f"/predict?model={model}", data=b"x",
                       params={"params": json.dumps(fits, ensure_ascii=False)}).status_code == 202
    [task] = broker.claim(model)
    assert task["params"] == fits
    # The limit is on the JSON as stored (compact): a client's indentation does not count against it.
    spaced = {f"k{i}": "v" * 40 for i in range(70)}
    assert len(json.dumps(spaced, separators=(",", ":"))) < 4096 < len(json.dumps(spaced, indent=16))
    assert broker.post(f"/predict?model={model}", data=b"x",
                       params={"params": json.dumps(spaced, indent=16)}).status_code == 202
    [task] = broker.claim(model)
    assert task["params"] == spaced


def plant_unreadable_task(azurite, model, how: str) -> str:
    """A task whose stored record cannot be read back, beside the broker's own (as an older version or a
    hand edit could leave one)."""
    task_id = uuid.uuid4().hex
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    metadata = {"task": "{not json"} if how == "corrupt" else {
        "task": json.dumps({"model": model, "ct": "text/plain", "params": {}, "created": 1.0}),
        "junk": "x" * 9000}  # longer than the 8 KiB a header field may be when it is read back
    blobs.get_blob_client("inbox", task_id).upload_blob(b"payload", metadata=metadata)
    QueueClient.from_connection_string(azurite.connection_string, f"tasks-{model}").send_message(task_id)
    return task_id


def test_a_claim_that_cannot_take_one_task_hands_out_the_others(broker, azurite, model):
    good = [broker.submit(model, b"one")]
    broken = [plant_unreadable_task(azurite, model, "corrupt"), plant_unreadable_task(azurite, model, "huge")]
    good.append(broker.submit(model, b"two"))
    claimed = broker.claim(model, max_tasks=8)
    assert sorted(t["task_id"] for t in claimed) == sorted(good)
    for task in claimed:
        assert broker.put(task).status_code == 200
    for task_id in broken:  # failed, readable, and never handed out again
        status = broker.status(task_id)
        assert status["status"] == "failed" and "could not read this task's stored record" in status["error"], status
    assert broker.claim(model, wait=1) == []


def test_a_claim_carries_at_most_the_claim_byte_limit(start_broker, model):
    bounded = start_broker({"BROKER_MAX_CLAIM_BYTES": "2500"})
    ids = [bounded.submit(model, bytes([i]) * 1000) for i in range(5)]
    first = bounded.claim(model, max_tasks=32)
    assert [t["task_id"] for t in first] == ids[:2]
    rest = bounded.claim(model, max_tasks=32, wait=2)
    assert [t["task_id"] for t in rest] == ids[2:4]
    assert all(t["attempt"] == 1 for t in first + rest)  # left in the queue without losing an attempt
    assert base64.b64decode(rest[0]["payload"]) == bytes([2]) * 1000


def test_a_payload_larger_than_the_claim_limit_is_still_handed_out_alone(start_broker, model):
    bounded = start_broker({"BROKER_MAX_CLAIM_BYTES": "500"})
    ids = [bounded.submit(model, b"x" * 1000), bounded.submit(model, b"y" * 10)]
    assert [t["task_id"] for t in bounded.claim(model, max_tasks=32)] == ids[:1]
    assert [t["task_id"] for t in bounded.claim(model, max_tasks=32)] == ids[1:]


def test_json_numbers_that_overflow_are_400(broker, model):
    for query, body, headers in (
            (f"?model={model}&params=" + "%7B%22x%22%3A1e999%7D", b"x", {"Content-Type": "text/plain"}),
            (f"?model={model}", b'{"payload": "YQ==", "params": {"x": -1e999}}', {"Content-Type": "application/json"}),
            (f"?model={model}", b'{"payload": "YQ==", "params": {"x": 1' + b"0" * 400 + b'}}',
             {"Content-Type": "application/json"})):
        response = broker.post("/predict" + query, data=body, headers=headers)
        assert response.status_code == 400 and "not valid JSON" in response.json()["error"], response.text
    broker.submit(model)
    [task] = broker.claim(model)
    response = broker.post(f"/puttaskresult?task_id={task['task_id']}&lease={task['lease']}&status=failed",
                           data=b'{"error": "x", "retryable": false, "n": 1e400}', headers=broker.worker)
    assert response.status_code == 400


def test_the_inbox_metadata_stays_within_its_budget_whatever_a_request_holds():
    """The largest submission and lease state any request can make, as stored, fit Azure's 8 KB."""
    from broker.destinations import MAX_URL_BYTES
    from broker.records import METADATA_BUDGET, Enqueued, LeaseState, Submission, _dump, stored_size
    from broker.validate import MAX_CONTENT_TYPE_CHARS, MAX_PARAMS_BYTES
    from broker.webhooks import EVENTS, MAX_BASE_BYTES, Hook, Report

    params = {"k": "x" * (MAX_PARAMS_BYTES - stored_size({"k": ""}))}  # exactly the limit, as stored
    assert stored_size(params) == MAX_PARAMS_BYTES
    sub = Submission("f" * 32, "m" * 40, "x" * MAX_CONTENT_TYPE_CHARS, params, 1e10, "d" * 32, 100 * 1024 * 1024,
                     "o" * 64, 1e10, True)
    state = LeaseState("i" * 36, 1e10, 1e10, 100, 100, clip_error(EMOJI_ERROR), 999_999, "r" * 16, "retry")
    metadata = {**sub.metadata(), **Enqueued(msg="i" * 36, pending=1e10).metadata(), "state": state.dump()}
    assert sum(len(k) + len(v) for k, v in metadata.items()) <= METADATA_BUDGET
    # A webhook is kept in its own blob (hooks), with its report: the longest URL, events and base.
    hook = Hook("https://" + "h" * (MAX_URL_BYTES - 8), EVENTS, "https://" + "b" * (MAX_BASE_BYTES - 8))
    report = Report(2**31, 599, clip_error(EMOJI_ERROR, 200), 20, True)
    kept = {"hook": _dump({**hook.record(), "created": 1e10}), **report.metadata()}
    assert sum(len(k) + len(v) for k, v in kept.items()) <= METADATA_BUDGET


@pytest.mark.parametrize("call,error", [("read", "timeout"), ("read", "cut short"), ("set_metadata", "timeout")])
def test_a_storage_error_on_one_task_releases_it_and_hands_out_the_others(azurite, lease_secret, model, monkeypatch,
                                                                          call, error):
    """One task's blob cannot be read right now (a timeout, a download cut short), or its lease state
    cannot be written (a first claim takes the blob from its message, records.TaskMessage, and only
    writes): the claim answers with the rest, and that task is back in the queue at once, its attempt
    unspent, not failed."""

    from azure.core.exceptions import IncompleteReadError, ServiceResponseError

    from broker import settings as broker_settings
    from broker.storage import Storage
    from broker.store import TaskStore

    monkeypatch.setenv("BROKER_STORAGE_CONNECTION", azurite.connection_string)
    monkeypatch.setenv("BROKER_LEASE_SECRET", lease_secret)

    async def scenario():
        storage = Storage(azurite.connection_string, 5)
        store = TaskStore(storage, broker_settings.load())
        try:
            # Idempotent submits send no copy of their blob, so their first claim reads it.
            keys = [f"{model}-{i}" if call == "read" else None for i in range(3)]
            ids = [(await store.submit(model, f"p{i}".encode(), "text/plain", {}, idempotency_key=keys[i]))[0].task_id
                   for i in range(3)]
            real = getattr(storage.inbox, call)

            async def flaky(name, *args):
                if name == ids[1]:
                    raise ServiceResponseError("timed out") if error == "timeout" else IncompleteReadError("reset")
                return await real(name, *args)

            setattr(storage.inbox, call, flaky)
            first = await store.claim(model, 8, 0, 60)
            setattr(storage.inbox, call, real)
            again = await store.claim(model, 8, 0, 60)
            return ids, first, again
        finally:
            await storage.close()

    ids, first, again = run_async(scenario)
    assert [t.task_id for t in first] == [ids[0], ids[2]]
    assert [(t.task_id, t.attempt) for t in again] == [(ids[1], 1)]


def test_stats_are_bounded(broker, azurite, model):
    from azure.storage.queue import QueueServiceClient

    queues = QueueServiceClient.from_connection_string(azurite.connection_string)
    for i in range(101):  # with the session's other models, well over the hundred /stats reads at most
        queues.create_queue(f"tasks-{model}-{i:03d}")
    stats = broker.get("/stats", headers=broker.worker).json()
    assert len(stats["models"]) == 100 and stats["truncated"] is True
    one = broker.get(f"/stats?model={model}-050", headers=broker.worker).json()
    assert one == {"models": {f"{model}-050": {"queued": 0, "running": 0, "workers_online": 0,
                                               "oldest_queued_seconds": None}}}
