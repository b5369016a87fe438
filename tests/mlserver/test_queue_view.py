"""An honest queue: a queued task's status says where it is in line and how many workers serve its model;
/stats says per model what waits, what runs, who serves it and how long the oldest has waited."""

from __future__ import annotations

import time

from tests.support.polling import wait_for

from .conftest import result


def test_a_queued_task_knows_its_place_in_line(broker, model):
    ids = [broker.submit(model, f"task {i}".encode()) for i in range(3)]
    document = broker.status(ids[2])
    assert document["queue_position"] == 2
    assert document["workers"] == {"online": 0, "last_seen": None}  # nobody serves this model
    broker.claim(model)  # the first in line is taken
    time.sleep(1.1)  # past the instance's one-second view of the line
    assert broker.status(ids[2])["queue_position"] == 1
    assert broker.status(ids[1])["queue_position"] == 0
    assert "queue_position" not in broker.status(ids[0])  # running now


def test_workers_online_go_from_none_to_one_and_back(broker, model, start_worker):
    def stats() -> dict:
        answer = broker.get(f"/stats?model={model}", headers=broker.worker)
        assert answer.status_code == 200, answer.text
        return answer.json()["models"][model]

    broker.submit(model, b"waiting")
    before = stats()
    assert before["workers_online"] == 0 and before["queued"] == 1 and before["oldest_queued_seconds"] >= 0
    worker = start_worker(model, "--handler", "echo", "--wait", "1")
    wait_for(lambda: stats()["workers_online"] == 1, timeout=30, what="the worker counted online")
    task_id = broker.submit(model, b"served", "text/plain")
    assert result(broker, task_id).content == b"served"
    worker.stop(timeout=30)
    wait_for(lambda: stats()["workers_online"] == 0, timeout=30, what="the stopped worker counted gone")
