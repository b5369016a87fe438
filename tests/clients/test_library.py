"""The Python library against a real broker (dev host + Azurite) and a real echo worker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid

import pytest

from clients import BrokerClient, BrokerHTTPError, BrokerUnavailable, Result, TaskCancelled, TaskExpired, TaskFailed, TaskTimeout
from tests.conftest import CLIENT_KEY, WORKER_KEY
from tests.support.relay import Relay


@pytest.fixture
def client(broker):
    with BrokerClient(broker.url) as c:
        yield c


@pytest.fixture
def relay(broker):
    relay = Relay(broker.host.port)
    yield relay
    relay.close()


def tasks_in_queue(broker, model: str) -> set[str]:
    """The distinct tasks a worker can claim for `model` (a spare queue message is not a task)."""
    return {task["task_id"] for task in broker.claim(model, max_tasks=32, wait=1)}


def test_predict_a_file_echoes_bytes_and_guessed_content_type(client, echo, tmp_path):
    source = tmp_path / "picture.png"
    source.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    result = client.predict(source, echo, timeout=60)
    assert isinstance(result, Result)
    assert result.content == source.read_bytes()
    assert result.content_type == "image/png"
    assert result.save(tmp_path / "out.png").read_bytes() == source.read_bytes()


def test_a_json_payload_is_sent_as_itself_and_parsed_back(client, echo):
    document = {"payload": "not the broker's wrapper", "n": [1, 2, 3]}
    result = client.predict(json.dumps(document).encode(), echo, content_type="application/json", timeout=60)
    assert result.json() == document
    assert result.is_json


def test_failed_task_raises_task_failed_with_the_servers_error(client, echo):
    with pytest.raises(TaskFailed) as caught:
        client.predict(b"x", echo, params={"fail": "the model ran out of patience"}, timeout=60)
    assert "the model ran out of patience" in caught.value.error
    assert caught.value.task_id in str(caught.value)
    assert client.status(caught.value.task_id)["status"] == "failed"


def test_cancel_a_queued_task(client, model):
    task_id = client.submit(b"x", model)
    assert client.result(task_id) is None  # still queued: no result yet
    assert client.cancel(task_id)["status"] == "cancelled"
    assert client.cancel(task_id)["status"] == "cancelled"  # again: the same answer
    with pytest.raises(TaskCancelled) as caught:
        client.wait(task_id, timeout=10)
    assert caught.value.task_id == task_id


def test_a_task_nobody_starts_in_time_raises_task_expired(start_broker, model):
    short = start_broker({"BROKER_QUEUED_TTL_SECONDS": "1"})
    with BrokerClient(short.url) as expiring:
        with pytest.raises(TaskExpired) as caught:
            expiring.predict(b"x", model, timeout=30)
    assert "not started within 1 second " in str(caught.value) and caught.value.document["status"] == "expired"


def test_cancelling_a_finished_task_says_so(client, echo):
    task_id = client.submit(b"x", echo)
    client.wait(task_id, timeout=60)
    with pytest.raises(BrokerHTTPError) as caught:
        client.cancel(task_id)
    assert caught.value.status == 409
    assert caught.value.message == f"task {task_id} already succeeded and cannot be cancelled"


def test_timeout_names_the_task_and_leaves_it_queued(client, model):
    with pytest.raises(TaskTimeout) as caught:
        client.predict(b"x", model, timeout=2)
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.task_id in str(caught.value)
    assert client.status(caught.value.task_id)["status"] == "queued"


def test_waiting_long_polls_instead_of_spinning(broker, relay, model):
    # A task nobody serves, waited on for 4 s: a long-poll needs one or two requests, a tight loop hundreds.
    with BrokerClient(relay.url(broker.url)) as client:
        task_id = client.submit(b"x", model)
        with pytest.raises(TaskTimeout):
            client.wait(task_id, timeout=4)
        assert 1 <= relay.count(b"GET /api/getresult") <= 3
        # Without the long-poll (poll=0) the broker's Retry-After: 1 paces the requests.
        with pytest.raises(TaskTimeout):
            client.wait(task_id, timeout=4, poll=0)
        assert relay.count(b"GET /api/getresult") <= 3 + 6


def test_same_idempotency_key_gives_the_same_task(client, broker, model):
    key = uuid.uuid4().hex
    first = client.submit(b"x", model, idempotency_key=key)
    assert client.submit(b"x", model, idempotency_key=key) == first
    assert tasks_in_queue(broker, model) == {first}


def test_a_lost_answer_is_retried_without_a_second_task(broker, model):
    relay = Relay(broker.host.port, lose_answers=1)
    try:
        with BrokerClient(relay.url(broker.url), backoff=0.1) as client:
            task_id = client.submit(b"x", model)
        assert relay.count(b"POST /api/predict") == 2  # the broker heard it twice...
        assert tasks_in_queue(broker, model) == {task_id}  # ...and created one task
    finally:
        relay.close()


def test_broker_down_is_one_clear_error(dead_url):
    with BrokerClient(dead_url, retries=1, backoff=0.1) as client:
        with pytest.raises(BrokerUnavailable) as caught:
            client.submit(b"x", "echo")
    assert str(caught.value) == f"cannot reach the broker at {dead_url} (connection refused)"


def test_storage_outage_503_is_retried_then_reported(start_broker, dead_url):
    port = int(dead_url.rsplit(":", 1)[1].split("/")[0])
    cut_off = start_broker(connection_string=f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                                             f"AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
                                             f"QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    relay = Relay(cut_off.host.port)
    try:
        with BrokerClient(relay.url(cut_off.url), retries=2, backoff=0.1) as client:
            with pytest.raises(BrokerHTTPError) as caught:
                client.status(uuid.uuid4().hex)
        assert caught.value.status == 503
        assert caught.value.message == "storage is unavailable right now; retry shortly"
        assert relay.count(b"GET /api/status") == 3  # the first try and two retries
    finally:
        relay.close()


def test_client_key_required_when_configured(keyed_broker, model):
    with BrokerClient(keyed_broker.url) as anonymous, pytest.raises(BrokerHTTPError) as caught:
        anonymous.submit(b"x", model)
    assert caught.value.status == 401
    assert caught.value.message == "a valid client key or token is required (Authorization: Bearer <key or token>)"
    with BrokerClient(keyed_broker.url, key=WORKER_KEY) as wrong, pytest.raises(BrokerHTTPError):
        wrong.submit(b"x", model)
    with BrokerClient(keyed_broker.url, key=CLIENT_KEY) as keyed:
        task_id = keyed.submit(b"x", model)
        assert keyed.status(task_id)["status"] == "queued"


def test_a_netrc_entry_does_not_replace_the_key(monkeypatch, keyed_broker, model, tmp_path):
    # requests, left to itself, puts a matching ~/.netrc entry's credentials in place of our
    # Authorization header; a `default` entry matches every host.
    netrc = tmp_path / "netrc"
    netrc.write_text("default login someone password elsewhere\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with BrokerClient(keyed_broker.url, key=CLIENT_KEY) as keyed:
        assert keyed.status(keyed.submit(b"x", model))["status"] == "queued"


def test_unknown_task_is_a_404_with_the_servers_sentence(client):
    with pytest.raises(BrokerHTTPError) as caught:
        client.status(uuid.uuid4().hex)
    assert caught.value.status == 404
    assert caught.value.message == "no task with that id exists (it may have expired)"


def test_from_env_reads_url_and_key(monkeypatch, keyed_broker, model):
    monkeypatch.setenv("BROKER_URL", keyed_broker.url)
    monkeypatch.setenv("BROKER_CLIENT_KEY", CLIENT_KEY)
    with BrokerClient.from_env() as client:
        assert len(client.submit(b"x", model)) == 32


def test_params_reach_the_worker(client, echo):
    # The echo worker sleeps params.sleep_ms: a task that takes 1.5 s but still succeeds proves the trip.
    result = client.predict(b"slow", echo, params={"sleep_ms": 1500}, timeout=60)
    assert result.content == b"slow"
    document = client.status(result.task_id)
    assert document["status"] == "succeeded" and document["started_at"] and document["finished_at"]


def test_the_library_imports_neither_the_broker_nor_azure():
    code = "import sys, clients; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "requests" in loaded
    assert not [name for name in loaded if name.split(".")[0] in ("broker", "azure", "mlserver")]


def test_a_large_payload_goes_straight_to_storage_and_its_result_comes_back_from_there(broker, echo):
    """Over upload_above the client uploads to storage and commits; the echo worker's result, over the
    broker's inline limit, comes back through storage too. Neither passes through the broker."""
    payload = os.urandom(5 * 1024 * 1024 + 3)
    seen = []
    log_before = len(broker.host.log_text())
    with BrokerClient(broker.url, transfer_threads=3) as client:
        result = client.predict(payload, echo, content_type="application/x-big", timeout=120,
                                on_upload=lambda done, total: seen.append((done, total)))
    assert result.content == payload and result.content_type == "application/x-big"
    assert seen[-1] == (len(payload), len(payload))
    calls = re.findall(r"Executed 'Functions\.(\w+)'", broker.host.log_text()[log_before:])
    assert "upload" in calls and "commit" in calls and "predict" not in calls


def test_prefer_wait_answers_the_submit_with_its_result(broker, echo, model):
    """RFC 7240 `Prefer: wait=N` on predict: the result itself (as getresult gives it, with Location) if the
    task ends within N seconds, else the usual 202 after them."""
    done = broker.post(f"/predict?model={echo}", data=b"waited for", headers={"Content-Type": "text/plain",
                                                                               "Prefer": "respond-async, wait=20"})
    assert done.status_code == 200 and done.content == b"waited for"
    assert done.headers["Content-Type"].startswith("text/plain") and done.headers["Preference-Applied"] == "wait=20"
    assert "getresult?task_id=" in done.headers["Location"]
    pending = broker.post(f"/predict?model={model}", data=b"nobody serves it", headers={"Prefer": "wait=1"})
    assert pending.status_code == 202 and pending.json()["status"] == "queued"
    assert broker.post(f"/predict?model={model}", data=b"x", headers={"Prefer": "wait=61"}).status_code == 400
    failed = broker.post(f"/predict?model={echo}&params=" + json.dumps({"fail": "no good"}), data=b"x",
                         headers={"Prefer": "wait=20"})
    assert failed.status_code == 422 and failed.json()["error"] == "no good"


def test_predict_is_one_request_for_a_quick_task(broker, echo, relay):
    with BrokerClient(relay.url(broker.url)) as client:
        result = client.predict(b"quick", echo, content_type="text/plain", timeout=60)
    assert result.content == b"quick"
    assert relay.count(b"POST /api/predict") == 1 and relay.count(b"GET /api/getresult") == 0
