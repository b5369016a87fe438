"""Large payloads and results through a real worker: fetched from and written to storage through the
claim's URLs (not through the broker), and a worker killed while writing a result changes nothing a
client can see except that its task runs again."""

from __future__ import annotations

import os
import re
import threading

import requests

from clients import blobs
from tests.support.storage_proxy import StorageProxy

from .conftest import result


def _upload(broker, model: str, payload: bytes, content_type: str) -> str:
    grant = broker.post(f"/upload?model={model}", json={"size": len(payload), "content_type": content_type}).json()
    blobs.upload(grant["upload_url"], payload, content_type, block_bytes=1024 * 1024)
    assert broker.post(f"/commit?task_id={grant['task_id']}").status_code == 202
    return grant["task_id"]


def _fetch(broker, task_id: str) -> requests.Response:
    """The result, following getresult's 303 to storage (without the key: it is not storage's)."""
    answer = result(broker, task_id)
    assert answer.status_code in (200, 303), answer.text
    if answer.status_code == 303:
        return requests.get(answer.headers["Location"], timeout=60)
    return answer


def test_large_payloads_and_results_travel_through_storage(start_broker, model, start_worker):
    broker = start_broker({"BROKER_INLINE_BYTES": "65536"})
    uploaded = os.urandom(3 * 1024 * 1024 + 17)
    inline_large = os.urandom(200_000)
    small = b"small payload"
    ids = [_upload(broker, model, uploaded, "application/x-big"),
           broker.submit(model, inline_large, "image/png"), broker.submit(model, small, "text/plain")]
    # With three decode threads: the two payloads in storage may download side by side.
    worker = start_worker(model, "--handler", "echo", "--batch", "4", "--decode-threads", "3", via=broker)
    answers = [_fetch(broker, task_id) for task_id in ids]
    assert [a.content for a in answers] == [uploaded, inline_large, small]
    assert [a.headers["Content-Type"].split(";")[0] for a in answers] == ["application/x-big", "image/png", "text/plain"]
    for task_id in ids[:2]:  # the two large results were uploaded by the worker: getresult points at storage
        assert broker.get(f"/getresult?task_id={task_id}", allow_redirects=False).status_code == 303
    assert broker.get(f"/getresult?task_id={ids[2]}").status_code == 200  # the small one comes inline
    assert "Traceback" not in worker.log_text()


def test_a_worker_killed_while_writing_a_result_leaves_no_half_result_and_the_task_runs_again(
        start_broker, model, start_worker):
    broker = start_broker({"BROKER_INLINE_BYTES": "65536"})
    payload = os.urandom(2 * 1024 * 1024)
    task_id = broker.submit(model, payload, "application/x-data")
    proxy = StorageProxy(stall=lambda method, url: method == "PUT" and "/uploads/results/" in url)
    seen: list[int] = []
    watching = threading.Event()

    def watch_results():  # every answer a client could get meanwhile: "not yet", never a part
        while not watching.is_set():
            answer = broker.get(f"/getresult?task_id={task_id}", allow_redirects=False)
            seen.append(answer.status_code)
            if answer.status_code in (200, 303):
                return
            watching.wait(0.2)

    watcher = threading.Thread(target=watch_results)
    watcher.start()
    try:
        first = start_worker(model, "--handler", "echo", "--lease", "5", via=broker, env={"HTTP_PROXY": proxy.url})
        assert proxy.stalled.wait(60), first.log_text()  # its result upload is under way, and held there
        first.kill()
        second = start_worker(model, "--handler", "echo", "--lease", "5", via=broker)
        answer = _fetch(broker, task_id)
        assert answer.content == payload
        status = broker.status(task_id)
        assert status["status"] == "succeeded" and status["attempts"] == 2  # the lease ran out; it ran again
        assert "Traceback" not in second.log_text()
    finally:
        watcher.join(30)  # it ends once it sees the result
        watching.set()
        proxy.close()
    assert set(seen) <= {202, 303} and seen[-1] == 303, seen


def test_a_batch_holds_large_payloads_up_to_its_budget_and_gives_back_the_rest(start_broker, model, start_worker):
    broker = start_broker({"BROKER_INLINE_BYTES": "65536"})
    payloads = [os.urandom(700_000) for _ in range(3)]
    ids = [broker.submit(model, payload) for payload in payloads]
    worker = start_worker(model, "--handler", "echo", "--batch", "3", "--max-batch-mib", "1", "--decode-threads", "3",
                          via=broker)  # the budget holds however many tasks are fetched at once
    assert [_fetch(broker, task_id).content for task_id in ids] == payloads
    worker.stop(timeout=30)
    gave_back = int(re.search(r"gave back (\d+)", worker.log_text()).group(1))
    assert gave_back >= 2  # the first batch: one payload fetched, two given back for later claims
    assert all(broker.status(task_id)["attempts"] == 1 for task_id in ids)  # a give-back spends no attempt
