"""POST /predict: both body forms, every refusal, idempotency (also under concurrency)."""

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest

TASK_FIELDS = {"task_id", "model", "status", "created_at", "started_at", "finished_at", "attempts", "error",
               "result_content_type", "progress", "progress_message",
               "queue_position", "workers"}  # the last two: a queued task's


def test_raw_submit_answers_202_with_document_links_and_headers(broker, model):
    response = broker.post(f"/predict?model={model}&params={quote(json.dumps({'top_k': 3}))}",
                           data=b"\x89PNG raw", headers={"Content-Type": "image/png"})
    assert response.status_code == 202
    body = response.json()
    assert TASK_FIELDS | {"status_url", "result_url"} == set(body)
    assert len(body["task_id"]) == 32 and body["model"] == model and body["status"] == "queued"
    assert body["attempts"] == 0 and body["created_at"].endswith("Z")
    assert response.headers["Location"] == body["result_url"]
    assert body["result_url"].endswith(f"/api/getresult?task_id={body['task_id']}")
    assert body["status_url"].endswith(f"/api/status?task_id={body['task_id']}")
    assert response.headers["Retry-After"] == "1"
    [task] = broker.claim(model)
    assert base64.b64decode(task["payload"]) == b"\x89PNG raw"
    assert task["content_type"] == "image/png" and task["params"] == {"top_k": 3}


def test_json_wrapper_submit(broker, model):
    wrapper = {"payload": base64.b64encode(b"hello").decode(), "content_type": "text/plain",
               "model": model, "params": {"a": [1, 2]}}
    response = broker.post("/predict", json=wrapper)
    assert response.status_code == 202, response.text
    [task] = broker.claim(model)
    assert (base64.b64decode(task["payload"]), task["content_type"], task["params"]) == (b"hello", "text/plain",
                                                                                         {"a": [1, 2]})


def test_raw_flag_submits_json_itself(broker, model):
    response = broker.post(f"/predict?model={model}&raw=1", data=b'{"x": 1}',
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 202
    [task] = broker.claim(model)
    assert base64.b64decode(task["payload"]) == b'{"x": 1}' and task["content_type"] == "application/json"


def test_missing_content_type_is_octet_stream(broker, model):
    response = broker.post(f"/predict?model={model}", data=b"abc", headers={"Content-Type": ""})
    assert response.status_code == 202
    assert broker.claim(model)[0]["content_type"] == "application/octet-stream"


@pytest.mark.parametrize("query, body, headers, fragment", [
    ("", b"abc", {}, "model name is required"),
    ("?model=Bad_Name", b"abc", {}, "model must be"),
    ("?model=a--b", b"abc", {}, "model must be"),
    ("?model=" + "a" * 41, b"abc", {}, "model must be"),
    ("?model=ok", b"", {}, "payload is empty"),
    ("?model=ok&params=%7Bnot%20json", b"abc", {}, "params is not valid JSON"),
    ("?model=ok&params=%5B1%5D", b"abc", {}, "params must be a JSON object"),
    ("?model=ok&params=" + quote(json.dumps({"k": "v" * 5000})), b"abc", {}, "at most 4096 bytes"),
    ("?model=ok", b"{not json", {"Content-Type": "application/json"}, "not valid JSON"),
    ("?model=ok", b"[1]", {"Content-Type": "application/json"}, "must be a JSON object"),
    ("?model=ok", b'{"payload": "***"}', {"Content-Type": "application/json"}, "not valid base64"),
    ("?model=ok", b'{"payload": ""}', {"Content-Type": "application/json"}, "non-empty base64"),
    ("?model=ok", b'{"payload": "YQ==", "model": "other"}', {"Content-Type": "application/json"}, "differ"),
    ("", b'{"payload": "YQ=="}', {"Content-Type": "application/json"}, "model name is required"),
    ("?model=ok", b'{"payload": "YQ==", "params": 3}', {"Content-Type": "application/json"}, "JSON object"),
    ("?model=ok", b"abc", {"Idempotency-Key": "x" * 201}, "Idempotency-Key"),
])
def test_bad_submits_answer_400_with_one_sentence(broker, query, body, headers, fragment):
    response = broker.post("/predict" + query, data=body, headers={"Content-Type": "text/plain", **headers})
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert fragment in response.json()["error"]


def test_oversize_payload_is_413_in_both_forms(start_broker, model):
    small = start_broker({"BROKER_MAX_PAYLOAD_BYTES": "1000"})
    assert small.post(f"/predict?model={model}", data=b"x" * 1000).status_code == 202
    response = small.post(f"/predict?model={model}", data=b"x" * 1001)
    assert response.status_code == 413 and "1000 bytes" in response.json()["error"]
    wrapped = {"payload": base64.b64encode(b"x" * 1001).decode(), "model": model}
    assert small.post("/predict", json=wrapped).status_code == 413
    # The limit is on the decoded payload, not on the base64 text.
    wrapped = {"payload": base64.b64encode(b"x" * 999).decode(), "model": model}
    assert small.post("/predict", json=wrapped).status_code == 202


def test_idempotent_repeat_returns_the_same_task(broker, model):
    headers = {"Idempotency-Key": "order-42", "Content-Type": "text/plain"}
    first = broker.post(f"/predict?model={model}", data=b"same", headers=headers)
    again = broker.post(f"/predict?model={model}", data=b"same", headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["task_id"] == again.json()["task_id"]
    [task] = broker.claim(model, max_tasks=5, wait=1)
    assert task["task_id"] == first.json()["task_id"]
    assert broker.claim(model, wait=1) == []  # one task, handed out once
    # Repeated while running: still the same task, now running, and nothing new to claim.
    third = broker.post(f"/predict?model={model}", data=b"same", headers=headers)
    assert third.json()["task_id"] == task["task_id"] and third.json()["status"] == "running"
    assert broker.put(task).status_code == 200
    done = broker.post(f"/predict?model={model}", data=b"same", headers=headers)
    assert done.status_code == 202 and done.json()["status"] == "succeeded"
    assert broker.claim(model, wait=1) == []


def test_idempotency_key_with_other_payload_or_model_is_409(broker, model):
    headers = {"Idempotency-Key": f"k-{model}"}
    assert broker.post(f"/predict?model={model}", data=b"one", headers=headers).status_code == 202
    response = broker.post(f"/predict?model={model}", data=b"two", headers=headers)
    assert response.status_code == 409 and "different payload, model" in response.json()["error"]
    assert broker.post(f"/predict?model={model}-x", data=b"one", headers=headers).status_code == 409


def test_concurrent_submits_with_one_key_create_one_task(broker, model):
    def submit(_):
        return broker.post(f"/predict?model={model}", data=b"race", headers={"Idempotency-Key": f"race-{model}"})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(submit, range(16)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["task_id"] for r in responses}) == 1
    claimed = broker.claim(model, max_tasks=32, wait=1)
    assert [t["task_id"] for t in claimed] == [responses[0].json()["task_id"]]
    assert broker.put(claimed[0]).status_code == 200
    assert broker.claim(model, max_tasks=32, wait=1) == []  # spare messages were dropped, not handed out


def test_idempotency_keys_are_scoped_per_client_key(start_broker, model):
    keyed = start_broker({"BROKER_CLIENT_KEYS": "client-a,client-b"})
    one = keyed.post(f"/predict?model={model}", data=b"p", headers={"Idempotency-Key": "k", "Authorization": "Bearer client-a"})
    two = keyed.post(f"/predict?model={model}", data=b"q", headers={"Idempotency-Key": "k", "Authorization": "Bearer client-b"})
    assert one.status_code == two.status_code == 202
    assert one.json()["task_id"] != two.json()["task_id"]


def queued(broker, model) -> int:
    response = broker.get(f"/stats?model={model}", headers=broker.worker)
    assert response.status_code == 200, response.text
    return response.json()["models"].get(model, {}).get("queued", 0)


def test_repeated_idempotent_submits_leave_one_message(broker, model):
    headers = {"Idempotency-Key": f"many-{model}"}
    ids = {broker.post(f"/predict?model={model}", data=b"same", headers=headers).json()["task_id"]
           for _ in range(20)}
    assert len(ids) == 1
    assert queued(broker, model) == 1  # the autoscaling signal counts the task once
    [task] = broker.claim(model, max_tasks=32)
    assert task["attempt"] == 1 and broker.put(task).status_code == 200
    assert queued(broker, model) == 0


def test_an_idempotency_key_with_other_params_or_content_type_is_409(broker, model):
    headers = {"Idempotency-Key": f"k2-{model}", "Content-Type": "image/png"}
    assert broker.post(f"/predict?model={model}&params=%7B%22a%22%3A1%7D", data=b"one", headers=headers).status_code == 202
    other_params = broker.post(f"/predict?model={model}&params=%7B%22a%22%3A2%7D", data=b"one", headers=headers)
    assert other_params.status_code == 409 and "params" in other_params.json()["error"]
    other_type = broker.post(f"/predict?model={model}&params=%7B%22a%22%3A1%7D", data=b"one",
                             headers={**headers, "Content-Type": "image/jpeg"})
    assert other_type.status_code == 409
    same = broker.post(f"/predict?model={model}&params=%7B%20%22a%22%3A%201%7D", data=b"one", headers=headers)
    assert same.status_code == 202  # the same params, spelled with other spaces
    assert queued(broker, model) == 1


class InProcess:
    """The task store in this process, on the test's Azurite, with the broker's settings: for forcing
    an interleaving or a storage failure at one exact step."""

    def __init__(self, azurite, lease_secret, monkeypatch, **settings) -> None:
        monkeypatch.setenv("BROKER_STORAGE_CONNECTION", azurite.connection_string)
        monkeypatch.setenv("BROKER_LEASE_SECRET", lease_secret)
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        self.connection = azurite.connection_string

    def run(self, scenario):
        """Run `async scenario(store)` to its end on a fresh store."""
        from broker import settings as broker_settings
        from broker.storage import Storage
        from broker.store import TaskStore
        from tests.support.polling import run_async

        async def go():
            storage = Storage(self.connection, 1)
            try:
                return await scenario(TaskStore(storage, broker_settings.load()))
            finally:
                await storage.close()

        return run_async(go)


async def _submit_failing(store, model, key, also_marking: bool):
    """A submit with a key whose send fails (and, with also_marking, whose marking of that fails too:
    the process died)."""
    from azure.core.exceptions import ServiceRequestError

    async def lost(*args, **kwargs):
        raise ServiceRequestError("the network went away")

    store.storage.queues.send = lost
    if also_marking:
        store.storage.inbox.set_metadata = lost
    try:
        await store.submit(model, b"payload", "text/plain", {}, key)
    except ServiceRequestError:
        return
    raise AssertionError("the submit did not fail")


def test_a_submit_whose_send_failed_is_sent_by_the_next_retry(start_broker, azurite, lease_secret, model, monkeypatch):
    fast = start_broker({"BROKER_STORAGE_TIMEOUT_SECONDS": "1"})
    InProcess(azurite, lease_secret, monkeypatch).run(lambda store: _submit_failing(store, model, f"f-{model}", False))
    headers = {"Idempotency-Key": f"f-{model}", "Content-Type": "text/plain"}
    for _ in range(5):
        assert fast.post(f"/predict?model={model}", data=b"payload", headers=headers).status_code == 202
    assert queued(fast, model) == 1
    assert len(fast.claim(model, max_tasks=8)) == 1


def test_a_submit_that_died_before_sending_is_healed_by_a_retry_once(start_broker, azurite, lease_secret, model,
                                                                      monkeypatch):
    """The first submit stored the payload and died before sending (or marking) anything; retries with
    the key send the task exactly once, after the first submit has had its chance."""
    fast = start_broker({"BROKER_STORAGE_TIMEOUT_SECONDS": "1"})
    InProcess(azurite, lease_secret, monkeypatch).run(lambda store: _submit_failing(store, model, f"d-{model}", True))
    headers = {"Idempotency-Key": f"d-{model}", "Content-Type": "text/plain"}
    early = fast.post(f"/predict?model={model}", data=b"payload", headers=headers)
    assert early.status_code == 202 and queued(fast, model) == 0  # too soon to tell a dead submit from a slow one
    time.sleep(3.5)
    for _ in range(5):
        assert fast.post(f"/predict?model={model}", data=b"payload", headers=headers).status_code == 202
    assert queued(fast, model) == 1
    [task] = fast.claim(model, max_tasks=8)
    assert task["task_id"] == early.json()["task_id"]


def test_the_sweep_sends_what_a_failed_submit_did_not_when_nobody_retries(broker, azurite, lease_secret, model,
                                                                          monkeypatch):
    store = InProcess(azurite, lease_secret, monkeypatch)
    store.run(lambda s: _submit_failing(s, model, f"s-{model}", False))
    assert queued(broker, model) == 0

    async def sweep_until_sent(s):
        for _ in range(200):  # the sweep pages through every test's inbox blobs, a page at a time
            await s.sweep()
            if s._sweep_from is None:
                break

    store.run(sweep_until_sent)
    assert queued(broker, model) == 1
    assert len(broker.claim(model, max_tasks=8)) == 1


def test_a_repeat_that_meets_the_finish_of_its_task_does_not_run_it_again(broker, azurite, lease_secret, model,
                                                                          monkeypatch):
    """The repeat's create lands just after the put deleted the payload: it finds the outcome and takes
    its own blob back; the task is not queued again and keeps its attempt count."""
    key = f"race-{model}"
    headers = {"Idempotency-Key": key, "Content-Type": "text/plain"}
    first = broker.post(f"/predict?model={model}", data=b"p", headers=headers).json()["task_id"]
    [task] = broker.claim(model)

    async def repeat_during_the_finish(store):
        create = store.storage.inbox.create

        async def finish_first(*args, **kwargs):
            assert broker.put(task, b"done").status_code == 200  # the put lands in between
            return await create(*args, **kwargs)

        store.storage.inbox.create = finish_first
        return await store.submit(model, b"p", "text/plain", {}, key)

    again, created = InProcess(azurite, lease_secret, monkeypatch).run(repeat_during_the_finish)
    assert (again.task_id, again.document()["status"], created) == (first, "succeeded", False)
    assert broker.claim(model, wait=1) == [] and queued(broker, model) == 0
    assert broker.get(f"/getresult?task_id={first}").content == b"done"


def test_only_listed_models_are_served(start_broker, model):
    listed = start_broker({"BROKER_MODELS": f"{model},other-model"})
    assert listed.post(f"/predict?model={model}", data=b"x").status_code == 202
    refused = listed.post(f"/predict?model={model}-nope", data=b"x")
    assert refused.status_code == 400 and "not served here" in refused.json()["error"]
    claim = listed.get(f"/getnexttask?model={model}-nope&wait=0", headers=listed.worker)
    assert claim.status_code == 400
    stats = listed.get("/stats", headers=listed.worker).json()
    assert set(stats["models"]) == {model, "other-model"} and stats["models"][model]["queued"] == 1


def test_a_deadline_comes_as_ttl_or_cancel_after_and_a_task_nobody_starts_by_it_expires(broker, model):
    import time

    by_query = broker.submit(model, params={"ttl": "1"})
    by_header = broker.submit(model, headers={"Cancel-After": "1"})
    time.sleep(1.5)
    for task_id in (by_query, by_header):
        answer = broker.get(f"/getresult?task_id={task_id}")
        assert answer.status_code == 410 and answer.json()["status"] == "expired"
        assert answer.json()["error"] == "not started before its deadline, 1 second after its submission (ttl)"
    for bad in ("0", "-1", "1.5", "x", str(365 * 86400 + 1)):
        assert broker.post(f"/predict?model={model}&ttl={bad}", data=b"x").status_code == 400, bad
