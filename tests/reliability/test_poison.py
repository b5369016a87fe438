"""Poison: an input that kills the worker's process fails after BROKER_MAX_ATTEMPTS; the other tasks flow."""

from __future__ import annotations

import time
import uuid

import pytest

from .conftest import WorkerPool, final_results, record, submit_many
from .handlers import POISON

MAX_ATTEMPTS = 3
LEASE = 5
BEFORE, AFTER = 3, 20  # with --batch 4, the three tasks before it share its first batch


@pytest.fixture(scope="module")
def poisoned(start_broker, tmp_path_factory):
    """One run: the poison among ordinary tasks, one worker at a time, restarted whenever it dies."""
    broker = start_broker({"BROKER_MAX_ATTEMPTS": str(MAX_ATTEMPTS)})
    model = "poison-" + uuid.uuid4().hex[:8]
    payloads = [f"before-{i}".encode() for i in range(BEFORE)] + [POISON] + [f"after-{i}".encode() for i in range(AFTER)]
    ids = submit_many(broker, model, payloads, [{"sleep_ms": 100}] * len(payloads), clients=1)
    poison_id = ids[BEFORE]
    args = ["--handler", "tests.reliability.handlers:Poison", "--batch", "4", "--lease", str(LEASE)]
    pool = WorkerPool(tmp_path_factory.mktemp("poison-workers"))
    try:
        # A supervisor's job, as systemd or a Colab cell loop would do it: a worker that dies is started again.
        worker = pool.start(broker, model, 1, *args)[0]
        deaths = 0
        deadline = time.monotonic() + 150
        while broker.status(poison_id)["status"] != "failed" and time.monotonic() < deadline:
            if not worker.alive():
                deaths += 1
                worker = pool.start(broker, model, 1, *args)[0]
            time.sleep(0.2)
        answers = final_results(broker, ids, timeout=120)
        time.sleep(2 * LEASE)  # would the poison come back and take another worker down?
        deaths += not worker.alive()
    finally:
        pool.stop_all()
    return {"ids": ids, "payloads": payloads, "answers": answers, "poison": poison_id, "deaths": deaths}


@pytest.mark.slow
def test_the_poison_fails_after_max_attempts_naming_them(poisoned):
    answer = poisoned["answers"][poisoned["poison"]]
    assert answer.status_code == 422, answer.text
    document = answer.json()
    assert document["status"] == "failed" and document["attempts"] == MAX_ATTEMPTS
    assert document["error"] == (f"gave up after {MAX_ATTEMPTS} attempts: "
                                 "the worker's lease ran out before it put a result")
    # It took a worker down once per attempt, and never again once the broker gave up on it.
    assert poisoned["deaths"] == MAX_ATTEMPTS
    record("poison", tasks=len(poisoned["ids"]), max_attempts=MAX_ATTEMPTS, worker_deaths=poisoned["deaths"],
           error=document["error"])


@pytest.mark.slow
def test_the_tasks_behind_the_poison_flow(poisoned):
    behind = list(zip(poisoned["ids"], poisoned["payloads"]))[BEFORE + 1:]
    wrong = {p: poisoned["answers"][t].status_code for t, p in behind if poisoned["answers"][t].content != p}
    assert wrong == {}


@pytest.mark.slow
def test_the_tasks_in_the_poisons_batch_do_not_die_with_it(poisoned):
    """Its batch-mates come back with it after each crash; a worker must not let them share its fate.

    (A task that comes back after a lease ran out is suspect: running it apart from the others
    confines a process-killing input to itself.)
    """
    mates = list(zip(poisoned["ids"], poisoned["payloads"]))[:BEFORE]
    answers = {p: poisoned["answers"][t] for t, p in mates}
    failed = {p: a.json().get("error") for p, a in answers.items() if a.status_code != 200}
    record("poison", innocent_batch_mates_failed=len(failed))
    assert failed == {}
    assert all(a.content == p for p, a in answers.items())
