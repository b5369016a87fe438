"""Stale lease tokens and replays: a refused call writes nothing, attempts only go up, the first outcome stands."""

import time

from .test_leases import extend


def expire_and_reclaim(broker, model, task, lease=5, then=30):
    """Let `task`'s `lease`-second lease run out; the claim that takes it again, holding it `then` seconds."""
    time.sleep(lease + 0.5)
    [again] = broker.claim(model, wait=10, lease=then)
    assert again["task_id"] == task["task_id"]
    return again


def test_a_stale_give_back_is_refused_and_writes_nothing(broker, model):
    task_id = broker.submit(model)
    [first] = broker.claim(model, lease=5)
    second = expire_and_reclaim(broker, model, first)
    assert second["attempt"] == 2
    for _ in range(3):  # replayed: each answer the same, nothing written
        response = extend(broker, first, 0)
        assert response.status_code == 409, response.text
        assert "lease is lost" in response.json()["error"]
    assert broker.status(task_id)["status"] == "running"
    assert broker.status(task_id)["attempts"] == 2
    assert broker.claim(model, wait=0) == []  # still held by the second claim
    assert extend(broker, second, 30).status_code == 200


def test_a_stale_retryable_failure_is_refused_and_writes_nothing(broker, model):
    task_id = broker.submit(model)
    [first] = broker.claim(model, lease=5)
    second = expire_and_reclaim(broker, model, first)
    response = broker.put_failure(first, "flaky", retryable=True)
    assert response.status_code == 409, response.text
    assert broker.status(task_id)["status"] == "running"
    assert broker.claim(model, wait=0) == []
    assert broker.put(second, b"from second").status_code == 200


def test_a_token_from_before_a_heartbeat_cannot_give_the_task_back(broker, model):
    """The same claim's older token (its pop receipt was replaced by a heartbeat) is stale too."""
    task_id = broker.submit(model)
    [task] = broker.claim(model, lease=30)
    renewed = extend(broker, task, 30).json()["lease"]
    assert extend(broker, task, 0).status_code == 409
    assert broker.put_failure(task, "flaky", retryable=True).status_code == 409
    assert broker.status(task_id)["status"] == "running"
    assert extend(broker, task, 0, lease=renewed).status_code == 200
    assert broker.status(task_id)["status"] == "queued"


def test_attempts_never_go_down_and_replays_do_not_stop_the_give_up(start_broker, model):
    strict = start_broker({"BROKER_MAX_ATTEMPTS": "2"})
    task_id = strict.submit(model)
    [first] = strict.claim(model, lease=5)
    second = expire_and_reclaim(strict, model, first, then=5)
    seen = [first["attempt"], second["attempt"]]
    for _ in range(4):
        assert extend(strict, first, 0).status_code == 409
        assert strict.put_failure(first, "x", retryable=True).status_code == 409
        seen.append(strict.status(task_id)["attempts"])
    assert seen == sorted(seen) and seen[:2] == [1, 2], seen
    time.sleep(5.5)
    assert strict.claim(model, wait=2) == []  # a third delivery is past BROKER_MAX_ATTEMPTS
    status = strict.status(task_id)
    assert status["status"] == "failed" and status["attempts"] == 2, status


def test_a_repeated_put_with_another_body_is_409_and_the_first_stands(broker, model):
    task_id = broker.submit(model)
    [task] = broker.claim(model)
    assert broker.put(task, b"first").status_code == 200
    assert broker.put(task, b"first").status_code == 200  # the same put repeated
    other = broker.put(task, b"second")
    assert other.status_code == 409 and other.json()["status"] == "succeeded"
    failed = broker.put_failure(task, "changed my mind")
    assert failed.status_code == 409 and failed.json()["status"] == "succeeded"
    other_type = broker.put(task, b"first", content_type="application/json")
    assert other_type.status_code == 409
    assert broker.get(f"/getresult?task_id={task_id}").content == b"first"


def test_a_repeated_failure_report_is_answered_alike(broker, model):
    task_id = broker.submit(model)
    [task] = broker.claim(model)
    assert broker.put_failure(task, "bad input").json()["status"] == "failed"
    assert broker.put_failure(task, "bad input").status_code == 200
    assert broker.put_failure(task, "another reason").status_code == 409
    assert broker.put(task, b"result after all").status_code == 409
    assert broker.status(task_id)["error"] == "bad input"


def test_a_stale_retryable_failure_on_the_last_attempt_is_refused_too(start_broker, model):
    """With no attempt left a retryable failure would end the task: only its current token may do that."""
    strict = start_broker({"BROKER_MAX_ATTEMPTS": "2"})
    task_id = strict.submit(model)
    [one] = strict.claim(model)
    assert strict.put_failure(one, "flaky", retryable=True).json()["status"] == "queued"
    [two] = strict.claim(model, wait=5)
    assert two["attempt"] == 2 and extend(strict, two, 0).status_code == 200  # given back
    [three] = strict.claim(model, wait=5)
    assert three["attempt"] == 2
    response = strict.put_failure(two, "replayed", retryable=True)
    assert response.status_code == 409, response.text
    assert strict.status(task_id)["status"] == "running"
    assert strict.put(three, b"fine").status_code == 200
