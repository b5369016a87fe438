"""Webhooks end to end: dev hosts that run the `webhooks` queue trigger as the Functions host does,
on an Azurite of this module's own (so only these hosts deliver), POSTing to a real receiver on
127.0.0.1 (allowed by BROKER_WEBHOOK_ALLOW). Signatures are checked with the README's own `verify`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from devstack.services import Azurite
from tests.conftest import WEBHOOK_SECRET
from tests.support.receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]


def readme_verify():
    """The receiver's check exactly as the README's Security section shows it."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n( *import base64, hashlib, hmac, time\n.*?) *```", text, re.S)
    assert block, "the README shows how a receiver verifies a webhook"
    namespace: dict = {}
    exec(compile(re.sub(r"(?m)^  ", "", block.group(1)), "README.md", "exec"), namespace)  # noqa: S102
    return namespace["verify"]


verify = readme_verify()


@pytest.fixture(scope="module")
def hooked(start_broker, module_azurite):
    """A broker whose host delivers webhooks: a receiver has 2 s to answer; a retry a second after a
    failed try, then 2, 4, ..."""
    return start_broker({"BROKER_WEBHOOK_BACKOFF_SECONDS": "1", "BROKER_WEBHOOK_TIMEOUT_SECONDS": "2"},
                        connection_string=module_azurite.connection_string, queues=True)


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as running:
        yield running


def _finish(broker, model: str, body: bytes = b"result") -> dict:
    [task] = broker.claim(model)
    assert broker.put(task, body).status_code == 200
    return task


def _report_settles(broker, task_id: str, deliveries: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        document = broker.status(task_id)
        if document.get("webhook", {}).get("deliveries") == deliveries or time.monotonic() > deadline:
            return document
        time.sleep(0.1)


def test_a_completed_event_is_retried_until_answered_2xx_with_one_id_and_a_valid_signature(hooked, receiver, model):
    path = f"/hooks/{model}"
    receiver.script[path] = [500, 503]
    submitted = hooked.post(f"/predict?model={model}&webhook={receiver.url}{path}", data=b"payload")
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["task_id"]
    assert submitted.json()["webhook"] == {"deliveries": 0, "last_status": None, "last_error": None}
    _finish(hooked, model)

    receiver.wait_for(lambda _: any(d.status == 200 for d in receiver.of(path)))
    tries = receiver.of(path)
    assert [d.status for d in tries] == [500, 503, 200]
    assert len({d.headers["webhook-id"] for d in tries}) == 1  # one event, three tries
    for delivery in tries:
        assert verify(WEBHOOK_SECRET, delivery.headers, delivery.body)
        assert not verify("whsec_" + "A" * 32, delivery.headers, delivery.body)
        event = delivery.event
        assert (event["event"], event["task_id"], event["status"]) == ("completed", task_id, "succeeded")
        assert delivery.headers["content-type"] == "application/json"
    result = requests.get(tries[-1].event["result_url"], timeout=30)
    assert result.status_code == 200 and result.content == b"result"
    assert tries[-1].event["status_url"].endswith(f"/api/status?task_id={task_id}")

    document = _report_settles(hooked, task_id, 3)
    assert document["webhook"] == {"deliveries": 3, "last_status": 200, "last_error": None}


def test_a_redirect_is_not_followed_and_a_slow_answer_is_a_failed_try(hooked, receiver, model):
    path, elsewhere = f"/hooks/{model}/moved", f"/hooks/{model}/elsewhere"
    receiver.script[path] = [(307, receiver.url + elsewhere), 4.0]  # then 200
    task_id = hooked.submit(model, params={"webhook": receiver.url + path})
    _finish(hooked, model)
    receiver.wait_for(lambda _: len(receiver.of(path)) == 3)
    document = _report_settles(hooked, task_id, 3)
    assert document["webhook"] == {"deliveries": 3, "last_status": 200, "last_error": None}
    assert receiver.of(elsewhere) == []
    assert len({d.headers["webhook-id"] for d in receiver.of(path)}) == 1


def test_a_task_sends_the_events_it_asked_for_and_no_others(hooked, receiver, model):
    every, default = f"/hooks/{model}/every", f"/hooks/{model}/default"
    chosen = hooked.post("/predict", json={"model": model, "payload": "YQ==", "webhook": receiver.url + every,
                                           "webhook_events": ["started", "progress", "completed"]})
    assert chosen.status_code == 202, chosen.text
    [task] = hooked.claim(model)
    receiver.wait_for(lambda _: receiver.of(every))
    started = receiver.of(every)[0]
    assert (started.event["event"], started.event["status"]) == ("started", "running")
    progress = hooked.post(f"/progress?task_id={task['task_id']}&lease={task['lease']}",
                           json={"progress": 0.5, "message": "half way"}, headers=hooked.worker)
    assert progress.status_code == 200, progress.text
    receiver.wait_for(lambda _: len(receiver.of(every)) >= 2)
    told = receiver.of(every)[1].event
    assert (told["event"], told["progress"], told["progress_message"]) == ("progress", 0.5, "half way")
    hooked.put({**task, "lease": progress.json()["lease"]})
    receiver.wait_for(lambda _: any(d.event["event"] == "completed" for d in receiver.of(every)))
    events = receiver.of(every)
    assert [d.event["event"] for d in events] == ["started", "progress", "completed"]
    assert len({d.headers["webhook-id"] for d in events}) == 3

    plain = hooked.post(f"/predict?model={model}&webhook={receiver.url}{default}", data=b"p")
    assert plain.status_code == 202
    _finish(hooked, model)  # claimed (a start) and finished: only the completion was asked for
    receiver.wait_for(lambda _: receiver.of(default))
    assert _report_settles(hooked, plain.json()["task_id"], 1)["webhook"]["deliveries"] == 1
    assert [d.event["event"] for d in receiver.of(default)] == ["completed"]


def test_a_failed_or_cancelled_task_completes_its_webhook_too(hooked, receiver, model):
    failed_path, cancelled_path = f"/hooks/{model}/failed", f"/hooks/{model}/cancelled"
    hooked.post(f"/predict?model={model}&webhook={receiver.url}{failed_path}", data=b"p")
    [task] = hooked.claim(model)
    assert hooked.put_failure(task, "the model said no").status_code == 200
    cancelled = hooked.post(f"/predict?model={model}&webhook={receiver.url}{cancelled_path}", data=b"p").json()
    answer = hooked.post(f"/cancel?task_id={cancelled['task_id']}")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    assert set(answer.json()["webhook"]) >= {"deliveries"}  # as every status document of a hooked task
    receiver.wait_for(lambda _: receiver.of(failed_path) and receiver.of(cancelled_path))
    [failed] = receiver.of(failed_path)
    [gone] = receiver.of(cancelled_path)
    assert (failed.event["status"], failed.event["error"]) == ("failed", "the model said no")
    assert gone.event["status"] == "cancelled"


def test_a_retry_is_delivered_after_the_app_restarts(start_broker, tmp_path_factory, receiver, model):
    """The next try waits in storage, not in the instance that made the first: stop that host, start
    another, and the event arrives, with the same id."""
    with Azurite(log_dir=tmp_path_factory.mktemp("restart-azurite")) as azurite:
        settings = {"BROKER_WEBHOOK_BACKOFF_SECONDS": "2"}
        first = start_broker(settings, connection_string=azurite.connection_string, queues=True)
        path = f"/hooks/{model}/restart"
        receiver.script[path] = [500]
        task_id = first.submit(model, params={"webhook": receiver.url + path})
        _finish(first, model)
        receiver.wait_for(lambda _: receiver.of(path))
        assert _report_settles(first, task_id, 1)["webhook"] == {
            "deliveries": 1, "last_status": 500, "last_error": "answered HTTP 500"}
        first.host.stop()
        second = start_broker(settings, connection_string=azurite.connection_string, queues=True)
        receiver.wait_for(lambda _: len(receiver.of(path)) == 2)
        tries = receiver.of(path)
        assert [d.status for d in tries] == [500, 200]
        assert tries[0].headers["webhook-id"] == tries[1].headers["webhook-id"]
        assert _report_settles(second, task_id, 2)["webhook"]["last_status"] == 200
        second.host.stop()


@pytest.mark.parametrize("url, why", [
    ("https://10.1.2.3/hook", "public"),
    ("https://127.0.0.2/hook", "public"),
    ("https://localhost/hook", "public"),
    ("https://169.254.169.254/latest/meta-data", "public"),
    ("https://[::1]/hook", "public"),
    ("https://[::ffff:10.0.0.1]/hook", "public"),
    ("https://[fe80::1]/hook", "public"),
    ("http://example.com/hook", "https"),
    ("ftp://example.com/hook", "https"),
    ("https://user:secret@example.com/hook", "credentials"),
    ("https://example.com/hook#frag", "fragment"),
    ("https://example.com/" + "a" * 1100, "1024 bytes"),
    ("https://no-such-host.invalid/hook", "does not resolve"),
    ("not-a-url", "absolute https://"),
])
def test_a_webhook_the_broker_may_not_send_to_is_refused_at_submit_and_creates_nothing(broker, model, url, why):
    refused = broker.post(f"/predict?model={model}", params={"webhook": url}, data=b"p")
    assert refused.status_code == 400, refused.text
    assert why in refused.json()["error"] and refused.json()["error"].count(". ") == 0
    assert broker.claim(model, wait=0) == []


def test_webhook_requests_that_make_no_sense_are_400(start_broker, broker, model):
    assert broker.post(f"/predict?model={model}&webhook_events=completed", data=b"p").status_code == 400
    assert broker.post(f"/predict?model={model}&webhook=https://example.com/h&webhook_events=finished",
                       data=b"p").status_code == 400
    assert broker.post("/predict", json={"model": model, "payload": "YQ==", "webhook": 7}).status_code == 400
    unsigned = start_broker({"BROKER_WEBHOOK_SECRET": ""})
    refused = unsigned.post(f"/predict?model={model}&webhook=https://example.com/h", data=b"p")
    assert refused.status_code == 400 and "BROKER_WEBHOOK_SECRET" in refused.json()["error"]
    assert broker.claim(model, wait=0) == []


def test_an_idempotent_repeat_with_another_webhook_is_a_conflict(hooked, receiver, model):
    first = hooked.post(f"/predict?model={model}&webhook={receiver.url}/a", data=b"p", headers={"Idempotency-Key": "k1"})
    again = hooked.post(f"/predict?model={model}&webhook={receiver.url}/a", data=b"p", headers={"Idempotency-Key": "k1"})
    other = hooked.post(f"/predict?model={model}&webhook={receiver.url}/b", data=b"p", headers={"Idempotency-Key": "k1"})
    assert (first.status_code, again.status_code, other.status_code) == (202, 202, 409)
    assert again.json()["task_id"] == first.json()["task_id"]


def test_the_python_client_and_the_cli_ask_for_webhooks_and_deadlines(hooked, receiver, model, tmp_path):
    from clients import BrokerClient

    with BrokerClient(hooked.url, upload_above=1024) as client:
        small = client.submit(b"small", model, webhook=receiver.url + f"/lib/{model}/small",
                              webhook_events=["started", "completed"], ttl=600)
        large = client.submit(b"L" * 4096, model, webhook=receiver.url + f"/lib/{model}/large", ttl=600)
    for task_id in (small, large):
        assert hooked.status(task_id)["webhook"] == {"deliveries": 0, "last_status": None, "last_error": None}
    (tmp_path / "in.txt").write_bytes(b"from the cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update({"BROKER_URL": hooked.url, "PYTHONPATH": str(ROOT)})
    command = [sys.executable, "-m", "clients", "predict", "in.txt", "--model", model, "--timeout", "60",
               "--webhook", receiver.url + f"/cli/{model}", "--webhook-events", "started,completed", "--ttl", "600"]
    running = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        finished = 0
        deadline = time.monotonic() + 60
        while finished < 3 and time.monotonic() < deadline:
            for task in hooked.claim(model, max_tasks=3, wait=2):
                assert hooked.put(task, b"done").status_code == 200
                finished += 1
        out, err = running.communicate(timeout=60)
    finally:
        running.kill()
    assert running.returncode == 0, err
    for path, events in ((f"/lib/{model}/small", ["started", "completed"]), (f"/lib/{model}/large", ["completed"]),
                         (f"/cli/{model}", ["started", "completed"])):
        receiver.wait_for(lambda _, path=path, events=events: len(receiver.of(path)) == len(events))
        # Events of one task come in any order (a batch of the queue is delivered at once).
        assert sorted(d.event["event"] for d in receiver.of(path)) == sorted(events), path
    assert [d.event["status"] for d in receiver.of(f"/cli/{model}") if d.event["event"] == "completed"] == ["succeeded"]
    refused = subprocess.run([sys.executable, "-m", "clients", "predict", "in.txt", "--model", model,
                              "--webhook-events", "completed"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr.strip() == "error: --webhook-events needs --webhook"
