"""Storage as the data plane, on real Azurite: payloads and results that go through SAS URLs instead of
through the app, and the URLs storage itself refuses when they are used for anything else."""

from __future__ import annotations

import os
import time
import urllib.parse

import pytest
import requests

from clients import blobs
from tests.support.polling import wait_for


def begin(broker, model: str, size: int, content_type: str = "application/octet-stream", params=None,
          key: str | None = None) -> requests.Response:
    body = {"size": size, "content_type": content_type, **({"params": params} if params else {})}
    headers = {"Idempotency-Key": key} if key else {}
    return broker.post(f"/upload?model={model}", json=body, headers=headers)


def upload_task(broker, model: str, payload: bytes, content_type: str = "application/octet-stream",
                block_bytes: int = blobs.BLOCK_BYTES) -> str:
    grant = begin(broker, model, len(payload), content_type)
    assert grant.status_code == 201, grant.text
    blobs.upload(grant.json()["upload_url"], payload, content_type, block_bytes=block_bytes)
    committed = broker.post(f"/commit?task_id={grant.json()['task_id']}")
    assert committed.status_code == 202, committed.text
    return grant.json()["task_id"]


def test_a_payload_uploaded_in_blocks_reaches_the_worker_by_url_and_its_result_comes_back_by_url(broker, model):
    payload = os.urandom(300_000)
    grant = begin(broker, model, len(payload), "image/png", {"k": 1})
    assert grant.status_code == 201, grant.text
    body = grant.json()
    assert set(body) == {"task_id", "upload_url", "upload_expires_at", "commit_url"}
    assert broker.get(f"/status?task_id={body['task_id']}").status_code == 404  # no task before its commit
    blobs.upload(body["upload_url"], payload, "image/png", block_bytes=64 * 1024)  # five blocks and a list
    committed = broker.post(urllib.parse.urlsplit(body["commit_url"]).path.removeprefix("/api") + "?"
                            + urllib.parse.urlsplit(body["commit_url"]).query)
    assert committed.status_code == 202 and committed.json()["status"] == "queued"
    assert committed.headers["Location"].endswith(f"getresult?task_id={body['task_id']}")

    [task] = broker.claim(model)
    assert "payload" not in task and task["size"] == len(payload) and task["params"] == {"k": 1}
    assert task["content_type"] == "image/png"
    assert blobs.download(task["payload_url"], task["size"], block_bytes=100_000) == payload

    result = os.urandom(200_000)
    blobs.upload(task["result_upload_url"], result, "application/x-thing", block_bytes=50_000)
    put = broker.post(f"/puttaskresult?task_id={task['task_id']}&lease={task['lease']}&uploaded=1",
                      headers={**broker.worker, "Content-Type": "application/x-thing"})
    assert put.status_code == 200 and put.json()["status"] == "succeeded", put.text

    answer = broker.get(f"/getresult?task_id={task['task_id']}", allow_redirects=False)
    assert answer.status_code == 303
    link = answer.json()
    assert answer.headers["Location"] == link["result_url"] and link["size"] == len(result)
    fetched = requests.get(link["result_url"], timeout=30)
    assert fetched.content == result
    assert fetched.headers["Content-Type"] == "application/x-thing"
    assert fetched.headers["Content-Disposition"] == f'attachment; filename="{task["task_id"]}"'  # not a safe type
    as_json = broker.get(f"/getresult?task_id={task['task_id']}&format=json").json()
    assert requests.get(as_json["result_url"], timeout=30).content == result
    assert broker.status(task["task_id"])["status"] == "succeeded"


def test_a_submit_that_waits_for_a_result_the_worker_uploaded_is_sent_to_it(broker, model):
    """`Prefer: wait` answers as getresult would then: for a result in storage, a 303 whose Location is
    the result's URL (not the broker's getresult link, which would send the client round again)."""
    from concurrent.futures import ThreadPoolExecutor

    result = os.urandom(100_000)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(requests.post, f"{broker.url}/predict?model={model}", data=b"p",
                              headers={"Prefer": "wait=30"}, allow_redirects=False, timeout=90)
        [task] = broker.claim(model, wait=20)
        blobs.upload(task["result_upload_url"], result, "application/x-thing")
        put = broker.post(f"/puttaskresult?task_id={task['task_id']}&lease={task['lease']}&uploaded=1",
                          headers={**broker.worker, "Content-Type": "application/x-thing"})
        assert put.status_code == 200, put.text
        answer = waiting.result(90)
    assert answer.status_code == 303 and answer.headers["Preference-Applied"] == "wait=30", answer.text
    assert answer.headers["Location"] == answer.json()["result_url"]
    assert requests.get(answer.headers["Location"], timeout=30).content == result


def test_storage_refuses_the_urls_for_anything_but_their_one_blob_and_operation(start_broker, model):
    broker = start_broker({"BROKER_UPLOAD_SECONDS": "4"})  # (storage reads the expiry to the second)
    payload = b"p" * 5000
    grant = begin(broker, model, len(payload)).json()
    url = grant["upload_url"]
    base, _, query = url.partition("?")
    # Another blob with the same signature: refused by storage.
    other = requests.put(base.rsplit("/", 1)[0] + "/other?" + query, data=b"x", headers={"x-ms-blob-type": "BlockBlob"},
                         timeout=30)
    assert other.status_code == 403
    blobs.upload(url, payload)
    assert requests.get(url, timeout=30).status_code == 403  # write-only: no reading it back
    assert requests.delete(url, timeout=30).status_code == 403  # nor deleting
    time.sleep(5.5)  # past the URL's four seconds
    with pytest.raises(blobs.TransferError) as late:
        blobs.upload(url, payload)
    assert late.value.status == 403
    committed = broker.post(f"/commit?task_id={grant['task_id']}")
    assert committed.status_code == 202
    [task] = broker.claim(model)
    read = task["payload_url"]
    assert requests.put(read, data=b"x", headers={"x-ms-blob-type": "BlockBlob"}, timeout=30).status_code == 403
    with pytest.raises(blobs.TransferError):
        blobs.upload(task["result_upload_url"].replace(f"/{task['task_id']}/", "/" + "0" * 32 + "/"), b"x")
    assert blobs.download(read) == payload


def test_what_a_client_writes_after_its_commit_changes_nothing(broker, model):
    """The commit takes a snapshot: the upload URL still works until it runs out, but not on the task."""
    grant = begin(broker, model, 6).json()
    blobs.upload(grant["upload_url"], b"before")
    assert broker.post(f"/commit?task_id={grant['task_id']}").status_code == 202
    blobs.upload(grant["upload_url"], b"after!")
    [task] = broker.claim(model)
    assert blobs.download(task["payload_url"]) == b"before"


def test_a_commit_needs_the_whole_declared_upload_and_answers_the_same_when_repeated(broker, model):
    grant = begin(broker, model, 10).json()
    nothing = broker.post(f"/commit?task_id={grant['task_id']}")
    assert nothing.status_code == 400 and "nothing has been uploaded" in nothing.json()["error"]
    blobs.upload(grant["upload_url"], b"short")
    short = broker.post(f"/commit?task_id={grant['task_id']}")
    assert short.status_code == 400 and "holds 5 bytes, but 10 were declared" in short.json()["error"]
    assert broker.get(f"/getresult?task_id={grant['task_id']}").status_code == 404
    blobs.upload(grant["upload_url"], b"0123456789")
    first = broker.post(f"/commit?task_id={grant['task_id']}")
    again = broker.post(f"/commit?task_id={grant['task_id']}")
    assert first.status_code == again.status_code == 202
    assert first.json()["task_id"] == again.json()["task_id"] == grant["task_id"]
    assert len(broker.claim(model, max_tasks=5)) == 1  # one message, however often it is committed
    plain = broker.submit(model, b"inline")
    assert broker.post(f"/commit?task_id={plain}").status_code == 409  # nothing to commit
    assert broker.post(f"/commit?task_id={'0' * 32}").status_code == 404


def test_an_idempotent_upload_is_one_task_and_a_mismatch_is_409(broker, model):
    first = begin(broker, model, 4, key="upload-key-1")
    again = begin(broker, model, 4, key="upload-key-1")
    assert first.status_code == again.status_code == 201
    assert first.json()["task_id"] == again.json()["task_id"]
    assert begin(broker, model, 5, key="upload-key-1").status_code == 409
    blobs.upload(again.json()["upload_url"], b"abcd")
    assert broker.post(f"/commit?task_id={first.json()['task_id']}").status_code == 202
    after = begin(broker, model, 4, key="upload-key-1")
    assert after.status_code == 202 and after.json()["status"] == "queued"  # nothing more to upload


def test_upload_requests_are_checked(broker, model):
    assert broker.post(f"/upload?model={model}", json={"size": 0}).status_code == 400
    assert broker.post(f"/upload?model={model}", json={"size": "10"}).status_code == 400
    assert broker.post(f"/upload?model={model}", json={"size": 9 * 1024**3}).status_code == 413
    assert broker.post(f"/upload?model={model}", json={"size": 1, "params": [1]}).status_code == 400
    assert broker.post("/upload?model=Bad_Name", json={"size": 1}).status_code == 400


def test_a_large_inline_payload_goes_to_the_worker_as_a_url_and_claims_stay_small(start_broker, model):
    broker = start_broker({"BROKER_INLINE_BYTES": "100000"})
    payloads = [os.urandom(150_000) for _ in range(6)]
    ids = [broker.submit(model, payload) for payload in payloads]
    small = broker.submit(model, b"tiny")
    answer = broker.get(f"/getnexttask?model={model}&max_tasks=32&wait=5", headers=broker.worker)
    assert answer.status_code == 200 and len(answer.content) < 20_000  # six URLs, no 900 kB of base64
    tasks = answer.json()["tasks"]
    assert [t["task_id"] for t in tasks] == [*ids, small]
    assert answer.json()["inline_bytes"] == 100_000
    for task, payload in zip(tasks, payloads):
        assert "payload" not in task and blobs.download(task["payload_url"]) == payload
    assert tasks[-1]["payload"] == "dGlueQ=="  # small: inline, as before


def test_an_uploaded_result_is_first_wins_and_sealed(broker, model):
    task_id = broker.submit(model)
    [task] = broker.claim(model)
    put = f"/puttaskresult?task_id={task_id}&lease={task['lease']}&uploaded=1"
    headers = {**broker.worker, "Content-Type": "text/plain"}
    missing = broker.post(put, headers=headers)
    assert missing.status_code == 400 and "no result has been uploaded" in missing.json()["error"]
    assert broker.post(put, data=b"bytes", headers=headers).status_code == 400  # the bytes are in storage
    blobs.upload(task["result_upload_url"], b"the result")
    assert broker.post(put, headers=headers).status_code == 200
    assert broker.post(put, headers=headers).status_code == 200  # the same put again: the same answer
    blobs.upload(task["result_upload_url"], b"another result")  # the worker writes again after its commit
    assert broker.post(put, headers=headers).status_code == 409  # other content: the first outcome stands
    inline = broker.put(task, b"inline instead")
    assert inline.status_code == 409
    link = broker.get(f"/getresult?task_id={task_id}&format=json").json()
    fetched = requests.get(link["result_url"], timeout=30)
    assert fetched.content == b"the result" and "Content-Disposition" not in fetched.headers  # text/plain shows


def test_a_heartbeat_hands_out_a_fresh_result_url(broker, model):
    broker.submit(model)
    [task] = broker.claim(model, lease=30)
    renewed = broker.post(f"/extendlease?task_id={task['task_id']}&lease={task['lease']}&seconds=60",
                          headers=broker.worker).json()
    assert renewed["result_upload_url"].split("?")[0] == task["result_upload_url"].split("?")[0]
    blobs.upload(renewed["result_upload_url"], b"via the renewed URL")
    put = broker.post(f"/puttaskresult?task_id={task['task_id']}&lease={renewed['lease']}&uploaded=1",
                      headers={**broker.worker, "Content-Type": "text/plain"})
    assert put.status_code == 200


def test_the_watch_signal_changes_when_a_task_is_queued(broker, model):
    answer = broker.get(f"/watch?model={model}", headers=broker.worker)
    assert answer.status_code == 200 and answer.json()["model"] == model
    url = answer.json()["signal_url"]
    session = requests.Session()
    before = blobs.etag(url, session)
    assert before is not None and blobs.etag(url, session) == before
    broker.submit(model)
    assert blobs.etag(url, session) != before
    assert requests.put(url, data=b"", headers={"x-ms-blob-type": "BlockBlob"}, timeout=30).status_code == 403
    assert broker.get(f"/watch?model={model}").status_code == 401  # a worker route


# ---- what a red-team pass found (each failed before its fix) -----------------------------------------

def test_a_broker_that_cannot_sign_urls_says_so_and_fails_no_task(azurite, start_broker, model):
    """A connection string without an account key: claims answer 503 saying what to set; the task waits."""
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    from devstack.services import ACCOUNT, ACCOUNT_KEY

    token = generate_account_sas(ACCOUNT, ACCOUNT_KEY, ResourceTypes(service=True, container=True, object=True),
                                 AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True,
                                                       create=True, update=True, process=True),
                                 datetime.now(UTC) + timedelta(hours=1), services="bq")
    keyless = (f"BlobEndpoint=http://127.0.0.1:{azurite.blob_port}/{ACCOUNT};"
               f"QueueEndpoint=http://127.0.0.1:{azurite.queue_port}/{ACCOUNT};SharedAccessSignature={token}")
    broker = start_broker(connection_string=keyless)
    task_id = broker.submit(model)
    claim = broker.get(f"/getnexttask?model={model}&wait=0", headers=broker.worker)
    assert claim.status_code == 503 and "account key" in claim.json()["error"]
    assert broker.status(task_id)["status"] == "queued"


@pytest.mark.parametrize("kind", ["text/plain; x=1, text/html", "text/plain;,text/html", "image/png;x,text/html",
                                  "application/json; a=b, text/html"])
def test_a_list_of_content_types_is_refused_everywhere(broker, model, kind):
    """Browsers take the last type of a list: a result could run as HTML on storage's origin."""
    assert broker.post(f"/predict?model={model}", data=b"x", headers={"Content-Type": kind}).status_code == 400
    assert begin(broker, model, 10, kind).status_code == 400
    broker.submit(model)
    [task] = broker.claim(model)
    assert broker.put(task, b"<script>", kind).status_code == 400


def test_an_oversized_uploaded_put_leaves_the_committed_result_alone(start_broker, model):
    broker = start_broker({"BROKER_MAX_UPLOAD_BYTES": "1000"})
    task_id = broker.submit(model)
    [task] = broker.claim(model)
    put = f"/puttaskresult?task_id={task_id}&lease={task['lease']}&uploaded=1"
    headers = {**broker.worker, "Content-Type": "text/plain"}
    blobs.upload(task["result_upload_url"], b"committed")
    assert broker.post(put, headers=headers).status_code == 200
    blobs.upload(task["result_upload_url"], b"x" * 2000)
    assert broker.post(put, headers=headers).status_code == 413
    link = broker.get(f"/getresult?task_id={task_id}&format=json").json()
    assert requests.get(link["result_url"], timeout=30).content == b"committed"


def _lease(url: str) -> None:
    answer = requests.put(url + "&comp=lease", headers={"x-ms-lease-action": "acquire", "x-ms-lease-duration": "-1",
                                                         "x-ms-version": blobs.API_VERSION}, timeout=30)
    assert answer.status_code == 201, answer.text


def test_a_lease_taken_through_a_write_url_does_not_stop_the_broker(azurite, broker, model):
    """Whoever holds a write URL can lease its blob; the broker breaks such leases when it deletes."""
    grant = begin(broker, model, 7).json()
    blobs.upload(grant["upload_url"], b"payload")
    _lease(grant["upload_url"])
    assert broker.post(f"/commit?task_id={grant['task_id']}").status_code == 202
    [task] = broker.claim(model)
    blobs.upload(task["result_upload_url"], b"result")
    _lease(task["result_upload_url"])
    put = broker.post(f"/puttaskresult?task_id={task['task_id']}&lease={task['lease']}&uploaded=1",
                      headers={**broker.worker, "Content-Type": "text/plain"})
    assert put.status_code == 200, put.text
    link = broker.get(f"/getresult?task_id={task['task_id']}&format=json").json()
    assert requests.get(link["result_url"], timeout=30).content == b"result"
    from azure.storage.blob import ContainerClient

    uploads = ContainerClient.from_connection_string(azurite.connection_string, "uploads")
    left = [b.name for b in uploads.list_blobs(name_starts_with=f"payloads/{task['task_id']}/")]
    assert left == []  # its payload went with the task, lease or not


def test_metadata_written_through_an_upload_url_is_ignored(broker, model):
    """The URL allows Set Blob Metadata; a header too large to parse must not break the commit."""
    grant = begin(broker, model, 4).json()
    blobs.upload(grant["upload_url"], b"data")
    answer = requests.put(grant["upload_url"] + "&comp=metadata", headers={"x-ms-meta-a": "v" * 8000,
                                                                          "x-ms-version": blobs.API_VERSION}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert broker.post(f"/commit?task_id={grant['task_id']}").status_code == 202
    [task] = broker.claim(model)
    assert blobs.download(task["payload_url"]) == b"data"


def test_a_task_queued_just_after_a_touch_still_changes_the_signal(broker, model):
    """Touches come at most twice a second per instance; one suppressed is made at the interval's end."""
    url = broker.get(f"/watch?model={model}", headers=broker.worker).json()["signal_url"]
    session = requests.Session()
    broker.submit(model)
    after_first = blobs.etag(url, session)
    broker.submit(model)  # within the interval: no touch now...
    wait_for(lambda: blobs.etag(url, session) != after_first, timeout=10, what="the touch at the interval's end")


def test_urls_for_large_transfers_live_longer(broker, model):
    def expires(size: int) -> float:
        from datetime import datetime

        stamp = begin(broker, model, size).json()["upload_expires_at"]
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

    extra = expires(8 * 1024**3) - expires(1)
    assert 8580 < extra < 8600  # a second per MB: an 8 GiB upload has room at 1 MB/s
    watch = broker.get(f"/watch?model={model}", headers=broker.worker).json()
    assert 3500 < watch["expires_in"] <= 3600  # relative: a worker's clock may be off
