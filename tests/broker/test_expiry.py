"""BROKER_QUEUED_TTL_SECONDS: a task nobody starts in time ends `expired` (410) and its data is deleted."""

import time

from azure.storage.blob import BlobServiceClient

from .test_cleanup import run_cleanup
from .test_leases import extend


def test_a_task_nobody_starts_in_time_reads_expired(start_broker, model):
    short = start_broker({"BROKER_QUEUED_TTL_SECONDS": "2"})
    task_id = short.submit(model)
    time.sleep(2.5)
    status = short.status(task_id)
    assert status["status"] == "expired", status
    assert "not started within 2 seconds" in status["error"]
    result = short.get(f"/getresult?task_id={task_id}")
    assert result.status_code == 410 and result.json()["status"] == "expired"
    cancel = short.post(f"/cancel?task_id={task_id}")
    assert cancel.status_code == 409 and cancel.json()["status"] == "expired"
    assert short.claim(model, wait=1) == []  # never handed out
    assert short.status(task_id)["status"] == "expired"


def held_past_its_ttl(start_broker, model):
    """A broker with a 3 s queued TTL, and a task claimed (for 30 s) and held past it."""
    short = start_broker({"BROKER_QUEUED_TTL_SECONDS": "3"})
    task_id = short.submit(model)
    [task] = short.claim(model, lease=30)
    time.sleep(3.5)
    return short, task_id, task


def test_a_running_task_outlives_the_queued_ttl(start_broker, model):
    short, task_id, task = held_past_its_ttl(start_broker, model)
    renewed = extend(short, task, 30)
    assert renewed.status_code == 200, renewed.text
    assert short.status(task_id)["status"] == "running"
    assert short.put({**task, "lease": renewed.json()["lease"]}, b"done").status_code == 200
    assert short.get(f"/getresult?task_id={task_id}").content == b"done"


def test_a_task_given_back_after_its_ttl_expires(start_broker, model):
    short, task_id, task = held_past_its_ttl(start_broker, model)
    back = extend(short, task, 0)
    assert back.status_code == 410 and back.json()["status"] == "expired", back.text
    assert short.status(task_id)["status"] == "expired"
    assert short.claim(model, wait=1) == []


def test_the_sweep_deletes_expired_tasks_data(start_broker, broker, azurite, lease_secret, model, monkeypatch):
    short = start_broker({"BROKER_QUEUED_TTL_SECONDS": "2"})
    old = [short.submit(model, b"old") for _ in range(3)]
    time.sleep(2.5)
    at = time.time()  # the sweep runs at this time: the old tasks are past the TTL, the young one not
    young = short.submit(model, b"young")
    monkeypatch.setenv("BROKER_QUEUED_TTL_SECONDS", "2")
    monkeypatch.setenv("BROKER_LEASE_SECRET", lease_secret)
    run_cleanup(monkeypatch, azurite, ttl=3600, batch=1000, at=at)
    inbox = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("inbox")
    assert [inbox.get_blob_client(t).exists() for t in old] == [False] * 3
    assert inbox.get_blob_client(young).exists()
    for task_id in old:  # written by the sweep (a broker whose TTL is not 2 s reads what is written)
        assert broker.status(task_id)["status"] == "expired"
    assert broker.status(young)["status"] == "queued"  # not expired by the sweep
