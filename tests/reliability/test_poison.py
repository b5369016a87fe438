"""Poison: an input that kills the worker's process fails after BROKER_MAX_ATTEMPTS; the tasks behind it flow."""

from __future__ import annotations

import time

import pytest

from .conftest import final_results, record, statuses, submit_many
from .handlers import POISON

MAX_ATTEMPTS = 3
LEASE = 5


@pytest.mark.slow
def test_a_process_killing_task_fails_alone_after_max_attempts(start_broker, start_workers, model):
    broker = start_broker({"BROKER_MAX_ATTEMPTS": str(MAX_ATTEMPTS)})
    payloads = [f"before-{i}".encode() for i in range(3)] + [POISON] + [f"after-{i}".encode() for i in range(20)]
    ids = submit_many(broker, model, payloads, [{"sleep_ms": 100}] * len(payloads), clients=1)
    poison_id = ids[payloads.index(POISON)]
    args = ["--handler", "tests.reliability.handlers:Poison", "--batch", "4", "--lease", str(LEASE)]

    # A supervisor's job, as systemd or a Colab cell loop would do it: a worker that dies is started again.
    workers = start_workers(broker, model, 1, *args)
    deaths = 0
    deadline = time.monotonic() + 150
    while broker.status(poison_id)["status"] != "failed" and time.monotonic() < deadline:
        if not workers[-1].alive():
            deaths += 1
            workers += start_workers(broker, model, 1, *args)
        time.sleep(0.2)

    answers = final_results(broker, ids, timeout=120)
    poisoned = answers[poison_id]
    assert poisoned.status_code == 422, poisoned.text
    document = poisoned.json()
    assert document["status"] == "failed" and document["attempts"] == MAX_ATTEMPTS
    assert document["error"].startswith(f"gave up after {MAX_ATTEMPTS} attempts: "), document["error"]
    innocent = {t: a for t, a in answers.items() if t != poison_id}
    wrong = {t: (a.status_code, a.text[:100]) for t, a in innocent.items() if a.status_code != 200}
    assert wrong == {}, f"{len(wrong)} innocent tasks did not succeed: {wrong} " \
                        f"{[statuses(broker, list(wrong))[t] for t in list(wrong)[:3]]}"
    assert all(innocent[t].content == p for t, p in zip(ids, payloads) if t != poison_id)
    assert deaths == MAX_ATTEMPTS  # it took a worker down once per attempt, and not again after giving up
    record("poison", tasks=len(payloads), max_attempts=MAX_ATTEMPTS, worker_deaths=deaths,
           innocent_failed=0, error=document["error"])
