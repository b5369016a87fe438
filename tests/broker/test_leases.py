"""getnexttask, extendlease and puttaskresult: claims, leases, redelivery, first outcome wins."""

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor

from azure.storage.blob import BlobServiceClient, ContentSettings

from tests.support.polling import wait_for


def plant_outcome(azurite, task_id, status, model, body, content_type) -> BlobServiceClient:
    """Write a task's outbox blob as a finish (or a cancel) would, as if it died right after."""
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    outcome = {"status": status, "model": model, "created": 1, "finished": time.time(), "attempts": 1}
    blobs.get_blob_client("outbox", task_id).upload_blob(body, metadata={"outcome": json.dumps(outcome)},
                                                         content_settings=ContentSettings(content_type=content_type))
    return blobs


def extend(broker, task, seconds, lease=None):
    return broker.post(f"/extendlease?task_id={task['task_id']}&lease={lease or task['lease']}&seconds={seconds}",
                       headers=broker.worker)


def test_claim_answers_204_when_nothing_arrives(broker, model):
    response = broker.get(f"/getnexttask?model={model}&wait=1", headers=broker.worker)
    assert response.status_code == 204 and response.content == b""


def test_batch_claim_is_in_submission_order_and_fields_are_complete(broker, model):
    ids = [broker.submit(model, f"p{i}".encode()) for i in range(5)]
    tasks = broker.claim(model, max_tasks=5)
    assert [t["task_id"] for t in tasks] == ids
    first = tasks[0]
    assert set(first) == {"task_id", "model", "params", "content_type", "payload", "lease", "lease_expires_at",
                          "attempt", "size", "result_upload_url"}
    assert first["attempt"] == 1 and first["lease_expires_at"].endswith("Z") and first["model"] == model
    assert base64.b64decode(first["payload"]) == b"p0"
    assert all(c.isalnum() or c in "-_." for c in first["lease"])  # URL-safe


def test_a_first_claim_writes_the_lease_state_without_reading_the_payload_blob(broker, azurite, model):
    """The submit's message carries a copy of the blob (records.TaskMessage): storage sees the submit's
    upload and the claim's conditional metadata write, and no read, until the task is read back."""
    task_id = broker.submit(model, b"a small payload")
    [task] = broker.claim(model)
    assert base64.b64decode(task["payload"]) == b"a small payload" and task["attempt"] == 1

    def calls_once_the_claims_write_is_logged() -> list[str] | None:
        # Azurite's access log (morgan) writes a line once its response has gone out, so the claim's
        # answer can reach us before the line for the claim's own metadata write does.
        calls = [line.split('"')[1].split()[0] + " " + line.split('"')[1].split()[1].split(task_id)[1]
                 for line in azurite.log_text().splitlines() if f"/inbox/{task_id}" in line]
        return calls if "PUT ?comp=metadata" in calls else None

    calls = wait_for(calls_once_the_claims_write_is_logged, timeout=10, what="the claim's write in Azurite's log")
    assert calls == ["PUT ", "PUT ?comp=metadata"], calls
    assert broker.status(task_id)["status"] == "running"


def test_claim_answers_without_waiting_to_fill_the_batch(broker, model):
    broker.submit(model)
    assert len(broker.claim(model, max_tasks=32, wait=30)) == 1


def test_long_poll_is_woken_by_a_submit(broker, model):
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(broker.claim, model, 1, 30)
        time.sleep(0.5)
        task_id = broker.submit(model)
        assert [t["task_id"] for t in waiting.result(30)] == [task_id]


def test_idle_long_polls_on_one_model_share_their_storage_polls(broker, start_broker, azurite, model):
    """Eight workers waiting on one empty queue cost about one storage receive per backoff step, not
    eight; a task that arrives through another instance (no in-process wake-up) is still found."""
    other = start_broker()  # a second instance on the same storage account

    def receives() -> int:
        return azurite.log_text().count(f"/tasks-{model}/messages?numofmessages")

    with ThreadPoolExecutor(8) as pool:
        waits = [pool.submit(broker.claim, model, 1, 8) for _ in range(8)]  # 5 s to spare for the submit
        time.sleep(3)
        polled = receives()
        task_id = other.submit(model)
        claimed = [t["task_id"] for w in waits for t in w.result(30)]
    assert claimed == [task_id]
    # Each long-poll alone looks about 30 times in 3 s (backoff 20 ms doubling to 100 ms): 240 in all.
    assert 8 <= polled <= 8 + 30 + 12, polled


def test_concurrent_claimers_get_disjoint_tasks(broker, model):
    ids = {broker.submit(model, str(i).encode()) for i in range(40)}
    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(lambda _: broker.claim(model, max_tasks=3, wait=2), range(24)))
    claimed = [t["task_id"] for batch in batches for t in batch]
    assert len(claimed) == len(set(claimed)) == 40
    assert set(claimed) == ids


def test_heartbeat_renews_the_token(broker, model):
    task_id = broker.submit(model)
    [task] = broker.claim(model, lease=5)
    renewed = extend(broker, task, 30)
    assert renewed.status_code == 200 and set(renewed.json()) == {"lease", "lease_expires_at", "result_upload_url"}
    assert renewed.json()["lease"] != task["lease"]
    time.sleep(6)  # past the first lease: the heartbeat kept it
    assert broker.claim(model, wait=0) == []
    assert broker.status(task_id)["status"] == "running"
    assert broker.put({**task, "lease": renewed.json()["lease"]}).status_code == 200


def test_expired_lease_is_redelivered_and_the_stale_holder_is_refused(broker, model):
    task_id = broker.submit(model)
    [first] = broker.claim(model, lease=5)
    time.sleep(5.5)
    assert broker.status(task_id)["status"] == "queued"  # the lease ran out: queued until claimed again
    [second] = broker.claim(model, wait=10)
    assert second["task_id"] == task_id and second["attempt"] == 2
    assert broker.status(task_id)["attempts"] == 2
    assert extend(broker, first, 30).status_code == 409  # lost: claimed by another attempt
    assert broker.put(second, b"from second").status_code == 200
    late = broker.put(first, b"from first")
    assert late.status_code == 409 and late.json()["status"] == "succeeded"
    assert broker.get(f"/getresult?task_id={task_id}").content == b"from second"
    assert broker.put(second, b"from second").status_code == 200  # the same put repeated: the same 200


def test_put_after_expiry_is_accepted_when_nobody_committed(broker, model):
    task_id = broker.submit(model)
    [task] = broker.claim(model, lease=5)
    time.sleep(5.5)
    assert broker.put(task, b"late but first").status_code == 200
    assert broker.get(f"/getresult?task_id={task_id}").content == b"late but first"
    assert broker.claim(model, wait=1) == []


def test_give_back_keeps_the_attempt_number(broker, model):
    task_id = broker.submit(model)
    [task] = broker.claim(model)
    back = extend(broker, task, 0)
    assert back.status_code == 200
    assert broker.status(task_id)["status"] == "queued"
    [again] = broker.claim(model, wait=5)
    assert again["task_id"] == task_id and again["attempt"] == 1
    assert broker.put(again).status_code == 200


def test_retryable_failure_requeues_with_next_attempt(broker, model):
    task_id = broker.submit(model)
    [task] = broker.claim(model)
    response = broker.put_failure(task, "GPU out of memory", retryable=True)
    assert response.json() == {"task_id": task_id, "status": "queued"}
    [again] = broker.claim(model, wait=5)
    assert again["attempt"] == 2
    assert broker.put_failure(again, "bad", retryable=False).json()["status"] == "failed"
    assert broker.status(task_id)["error"] == "bad"


def test_max_attempts_by_retryable_failures(start_broker, model):
    strict = start_broker({"BROKER_MAX_ATTEMPTS": "2"})
    task_id = strict.submit(model)
    [one] = strict.claim(model)
    assert strict.put_failure(one, "flaky", retryable=True).json()["status"] == "queued"
    [two] = strict.claim(model, wait=5)
    assert strict.put_failure(two, "flaky again", retryable=True).json()["status"] == "failed"
    status = strict.status(task_id)
    assert status["status"] == "failed" and status["attempts"] == 2
    assert status["error"] == "gave up after 2 attempts: flaky again"


def test_max_attempts_by_expired_leases(start_broker, model):
    strict = start_broker({"BROKER_MAX_ATTEMPTS": "2"})
    task_id = strict.submit(model)
    assert len(strict.claim(model, lease=5)) == 1
    time.sleep(5.5)
    assert strict.claim(model, lease=5, wait=5)[0]["attempt"] == 2
    time.sleep(5.5)
    assert strict.claim(model, wait=2) == []  # the third delivery is not handed out
    status = strict.status(task_id)
    assert status["status"] == "failed" and status["attempts"] == 2
    assert status["error"].startswith("gave up after 2 attempts: the worker's lease ran out")
    assert strict.get(f"/getresult?task_id={task_id}").status_code == 422


def test_crash_between_commit_and_cleanup_is_healed_by_the_next_claim(broker, azurite, model):
    """The broker wrote the outbox blob and died before deleting the message: nobody gets it again."""
    task_id = broker.submit(model)
    [task] = broker.claim(model, lease=5)
    blobs = plant_outcome(azurite, task_id, "succeeded", model, b"committed", "text/plain")
    time.sleep(5.5)
    assert broker.claim(model, wait=2) == []  # the redelivered message was dropped
    assert blobs.get_container_client("inbox").get_blob_client(task_id).exists() is False
    assert broker.get(f"/getresult?task_id={task_id}").content == b"committed"
    assert broker.put(task).status_code == 409


def test_a_cancel_that_died_half_way_costs_a_wasted_run_never_the_outcome(broker, azurite, model):
    """A cancel wrote the outbox blob and died before deleting the inbox blob, before any claim.

    A first delivery does not read the outbox (one storage call less per claim), so the task may be
    handed out; its worker is told 410, the cancellation stands, and the put tidies up.
    """
    task_id = broker.submit(model)
    plant_outcome(azurite, task_id, "cancelled", model, b"", "application/json")
    [task] = broker.claim(model)
    assert task["task_id"] == task_id
    assert extend(broker, task, 30).status_code == 410
    response = broker.put(task)
    assert response.status_code == 410 and response.json()["status"] == "cancelled"
    assert broker.status(task_id)["status"] == "cancelled"
    assert broker.claim(model, wait=1) == []


def test_a_repeated_put_tidies_up_what_the_first_one_left(broker, azurite, model):
    """A put wrote its result but could not delete the payload (a storage hiccup): the worker's retry
    of the same put answers as the first did and deletes it (in a batch a moment later: discards.py)."""
    task_id = broker.submit(model, b"payload")
    [task] = broker.claim(model)
    assert broker.put(task, b"done").status_code == 200
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    leftover = blobs.get_blob_client("inbox", task_id)
    wait_for(lambda: not leftover.exists(), 10, 0.05, "the first put's payload delete")
    leftover.upload_blob(b"payload")  # as if the first put's delete had failed
    repeated = broker.put(task, b"done")
    assert repeated.status_code == 200 and repeated.json()["status"] == "succeeded"
    wait_for(lambda: not leftover.exists(), 10, 0.05, "the repeated put's payload delete")
    assert broker.get(f"/getresult?task_id={task_id}").content == b"done"


def test_bad_tokens_are_400(broker, model):
    task_id = broker.submit(model)
    other_id = broker.submit(model)
    [task, other] = broker.claim(model, max_tasks=2)
    for lease in ("not-a-token", "", "W10", other["lease"]):
        response = broker.post(f"/extendlease?task_id={task_id}&lease={lease}&seconds=10", headers=broker.worker)
        assert response.status_code == 400, lease
        response = broker.post(f"/puttaskresult?task_id={task_id}&lease={lease}", headers=broker.worker, data=b"x")
        assert response.status_code == 400, lease
    assert other["task_id"] == other_id


def test_bad_failure_reports_and_statuses_are_400(broker, model):
    broker.submit(model)
    [task] = broker.claim(model)
    base = f"/puttaskresult?task_id={task['task_id']}&lease={task['lease']}"
    for suffix, body in (("&status=failed", b"{}"), ("&status=failed", b"not json"),
                         ("&status=failed", b'{"error": "x", "retryable": "yes"}'), ("&status=maybe", b"")):
        response = broker.post(base + suffix, data=body, headers=broker.worker)
        assert response.status_code == 400, (suffix, body)
    assert broker.put(task).status_code == 200


def test_oversize_result_is_413(start_broker, model):
    small = start_broker({"BROKER_MAX_PAYLOAD_BYTES": "100"})
    small.submit(model)
    [task] = small.claim(model)
    assert small.put(task, b"x" * 101).status_code == 413
    assert small.put(task, b"x" * 100).status_code == 200


def test_a_forged_or_altered_token_is_400(broker, model):
    """Tokens are signed: changing any field (or inventing a claim) is refused before storage."""
    def unb64(text):
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    task_id = broker.submit(model)
    [task] = broker.claim(model)
    body, mac = task["lease"].split(".")
    fields = json.loads(unb64(body))
    fields[5] = "yesterday"  # created
    forged = base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=") + "." + mac
    for token in (forged, body, body + ".AAAA"):
        response = broker.post(f"/puttaskresult?task_id={task_id}&lease={token}", data=b"x", headers=broker.worker)
        assert response.status_code == 400 and response.json()["error"] == "the lease token is malformed"
    assert broker.status(task_id)["status"] == "running"
    assert broker.put(task).status_code == 200


def test_progress_is_recorded_by_the_current_lease_only_and_shown_in_the_status(broker, model):
    task_id = broker.submit(model)
    [task] = broker.claim(model, lease=30)
    report = lambda lease, body, extra="": broker.post(  # noqa: E731
        f"/progress?task_id={task_id}&lease={lease}{extra}", json=body, headers=broker.worker)
    assert report(task["lease"], {"progress": 0.4, "message": "step 2 of 5"}).status_code == 200
    status = broker.status(task_id)
    assert (status["progress"], status["progress_message"]) == (0.4, "step 2 of 5")
    for bad in ({"progress": 1.5}, {"progress": "half"}, {"progress": 0.5, "message": 3}, {}):
        assert report(task["lease"], bad).status_code == 400, bad
    renewed = report(task["lease"], {"progress": 0.6}, "&seconds=60")
    assert renewed.status_code == 200 and renewed.json()["lease"] != task["lease"]  # a heartbeat too
    stale = report(task["lease"], {"progress": 0.9, "message": "from a stale token"})
    assert stale.status_code == 409
    assert broker.status(task_id)["progress"] == 0.6  # a refused report writes nothing
    broker.put({**task, "lease": renewed.json()["lease"]})
    assert broker.status(task_id)["progress"] is None  # finished: no progress to speak of
