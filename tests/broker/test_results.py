"""GET /getresult and /status, POST /cancel: every state and its status code."""

import base64
import threading
import time

import pytest


def test_queued_then_running_then_succeeded(broker, model):
    task_id = broker.submit(model, b"in", "text/plain")
    queued = broker.get(f"/getresult?task_id={task_id}")
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    assert queued.headers["Retry-After"] == "1"
    [task] = broker.claim(model)
    running = broker.get(f"/getresult?task_id={task_id}")
    assert running.status_code == 202 and running.json()["status"] == "running"
    assert running.json()["started_at"].endswith("Z") and running.json()["attempts"] == 1
    assert broker.put(task, b"\x00\x01result", "application/x-thing").json() == {"task_id": task_id,
                                                                                "status": "succeeded"}
    done = broker.get(f"/getresult?task_id={task_id}")
    assert done.status_code == 200
    assert done.content == b"\x00\x01result" and done.headers["Content-Type"] == "application/x-thing"
    as_json = broker.get(f"/getresult?task_id={task_id}&format=json").json()
    assert as_json == {"task_id": task_id, "status": "succeeded", "content_type": "application/x-thing",
                       "result": base64.b64encode(b"\x00\x01result").decode()}
    status = broker.status(task_id)
    assert status["status"] == "succeeded" and status["result_content_type"] == "application/x-thing"
    assert status["finished_at"] >= status["started_at"] >= status["created_at"]


def test_failed_task_reads_422_with_its_error(broker, model):
    task_id = broker.submit(model)
    [task] = broker.claim(model)
    assert broker.put_failure(task, "bad input: not an image").json() == {"task_id": task_id, "status": "failed"}
    response = broker.get(f"/getresult?task_id={task_id}")
    assert response.status_code == 422
    assert response.json()["status"] == "failed" and response.json()["error"] == "bad input: not an image"


def test_unknown_task_is_404(broker):
    for path in ("/getresult", "/status"):
        response = broker.get(f"{path}?task_id={'0' * 32}")
        assert response.status_code == 404 and "no task" in response.json()["error"]
    assert broker.post(f"/cancel?task_id={'0' * 32}").status_code == 404


def test_wait_returns_when_the_result_lands(broker, model):
    task_id = broker.submit(model)
    [task] = broker.claim(model)
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(broker.get(f"/getresult?task_id={task_id}&wait=30")))
    waiter.start()
    broker.put(task, b"late")
    waiter.join(30)
    assert answers and answers[0].status_code == 200 and answers[0].content == b"late"


def test_wait_runs_out_with_202(broker, model):
    task_id = broker.submit(model)
    response = broker.get(f"/getresult?task_id={task_id}&wait=1")
    assert response.status_code == 202 and response.json()["status"] == "queued"


def test_cancel_queued_task(broker, model):
    task_id = broker.submit(model)
    response = broker.post(f"/cancel?task_id={task_id}")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert broker.post(f"/cancel?task_id={task_id}").json()["status"] == "cancelled"  # again: the same 200
    assert broker.get(f"/getresult?task_id={task_id}").status_code == 410
    assert broker.claim(model, wait=1) == []  # never handed out


def test_cancel_running_task_reaches_its_worker(broker, model):
    task_id = broker.submit(model)
    [task] = broker.claim(model)
    assert broker.post(f"/cancel?task_id={task_id}").status_code == 200
    heartbeat = broker.post(f"/extendlease?task_id={task_id}&lease={task['lease']}&seconds=30", headers=broker.worker)
    assert heartbeat.status_code == 410 and heartbeat.json()["status"] == "cancelled"
    put = broker.put(task)
    assert put.status_code == 410
    assert broker.get(f"/getresult?task_id={task_id}").status_code == 410


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_cancel_finished_task_is_409_with_document(broker, model, outcome):
    task_id = broker.submit(model)
    [task] = broker.claim(model)
    if outcome == "succeeded":
        broker.put(task)
    else:
        broker.put_failure(task, "nope")
    response = broker.post(f"/cancel?task_id={task_id}")
    assert response.status_code == 409 and response.json()["status"] == outcome
    assert response.json()["task_id"] == task_id


def test_a_task_finishing_during_a_read_is_never_404(broker, model):
    """Reads race the commit: the inbox blob goes right after the outbox blob is written."""
    not_found = []
    for _ in range(30):
        task_id = broker.submit(model)
        [task] = broker.claim(model)
        stop = threading.Event()

        def read(task_id=task_id, stop=stop):
            while not stop.is_set():
                if broker.session.get(f"{broker.url}/getresult?task_id={task_id}", timeout=30).status_code == 404:
                    not_found.append(task_id)

        readers = [threading.Thread(target=read) for _ in range(3)]
        for reader in readers:
            reader.start()
        broker.put(task)
        stop.set()
        for reader in readers:
            reader.join()
    assert not_found == []


SAFE = ("image/png", "image/jpeg", "application/json", "text/plain; charset=utf-8")


@pytest.mark.parametrize("kind", ["text/html", "image/svg+xml", "application/xhtml+xml", "text/javascript",
                                  "application/octet-stream", *SAFE])
def test_results_are_never_served_as_active_content(broker, model, kind):
    task_id = broker.submit(model)
    [task] = broker.claim(model)
    assert broker.put(task, b"<script>alert(1)</script>", kind).status_code == 200
    response = broker.get(f"/getresult?task_id={task_id}")
    assert response.status_code == 200 and response.headers["Content-Type"] == kind
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == "sandbox; default-src 'none'"
    if kind in SAFE:
        assert "Content-Disposition" not in response.headers
    else:
        assert response.headers["Content-Disposition"] == f'attachment; filename="{task_id}"'


def test_every_answer_says_nosniff(broker, model):
    answers = [broker.get("/health"), broker.get("/demo"), broker.get(f"/status?task_id={'0' * 32}"),
               broker.post("/predict", data=b"x"), broker.get("/stats"), broker.get("/nothing-here")]
    for response in answers:
        assert response.headers.get("X-Content-Type-Options") == "nosniff", (response.url, response.status_code)


@pytest.fixture(scope="module")
def other(start_broker):
    """Another instance of the same app (its own dev host on the same storage)."""
    return start_broker()


def _waiting(broker, task_id: str, wait: int = 30) -> tuple[threading.Thread, list]:
    answers: list = []
    waiter = threading.Thread(target=lambda: answers.append(broker.get(f"/getresult?task_id={task_id}&wait={wait}")))
    waiter.start()
    return waiter, answers


def test_a_wait_sees_a_result_put_on_another_instance(broker, other, model):
    task_id = broker.submit(model)
    [task] = other.claim(model)
    waiter, answers = _waiting(broker, task_id)
    time.sleep(1)  # the wait is polling by now (nothing on its instance will wake it)
    assert other.put(task, b"from elsewhere").status_code == 200
    waiter.join(30)
    assert answers and answers[0].status_code == 200 and answers[0].content == b"from elsewhere"


def test_a_wait_sees_a_cancel_on_another_instance(broker, other, model):
    task_id = broker.submit(model)
    waiter, answers = _waiting(broker, task_id)
    time.sleep(1)
    assert other.post(f"/cancel?task_id={task_id}").status_code == 200
    waiter.join(30)
    assert answers and answers[0].status_code == 410 and answers[0].json()["status"] == "cancelled"


@pytest.mark.parametrize("claimed", [False, True])
def test_a_wait_ends_when_the_tasks_deadline_passes(broker, model, claimed):
    """Nothing is written when a deadline passes (the status is derived): the wait's own view of the
    task ends it, and it answers what a fresh read says."""
    task_id = broker.submit(model, params={"ttl": "2"})
    if claimed:
        broker.claim(model, lease=60)
    answer = broker.get(f"/getresult?task_id={task_id}&wait=20")
    assert answer.status_code == 410
    assert answer.json()["status"] == ("cancelled" if claimed else "expired")
