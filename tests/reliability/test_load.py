"""Load: 2,000 tasks from 16 concurrent clients while 4 echo workers drain them; nothing lost or doubled."""

from __future__ import annotations

import re
import signal
import statistics
import time

import pytest

from .conftest import final_results, record, submit_many

TASKS = 2000
CLIENTS = 16
WORKERS = 4


@pytest.mark.slow
def test_two_thousand_tasks_from_sixteen_clients(start_broker, start_workers, model):
    broker = start_broker()
    workers = start_workers(broker, model, WORKERS, "--handler", "echo", "--batch", "8", "--lease", "30")
    payloads = [f"load {i} ".encode() * 8 for i in range(TASKS)]
    latencies: list[float] = []
    started = time.monotonic()
    ids = submit_many(broker, model, payloads, clients=CLIENTS, latencies=latencies)
    submitted = time.monotonic() - started
    answers = final_results(broker, ids, timeout=300, threads=16)
    drained = time.monotonic() - started

    assert len(set(ids)) == TASKS
    wrong = [(t, answers[t].status_code) for t, p in zip(ids, payloads) if answers[t].content != p]
    assert wrong == [], wrong[:10]
    for worker in workers:
        worker.send(signal.SIGTERM)
    done = []
    for worker in workers:
        assert worker.proc.wait(60) == 0
        done.append(int(re.findall(r"stopped: done (\d+)", worker.log_text())[-1]))
    # Each put the broker accepted counted once: more than TASKS would mean a task committed twice.
    assert sum(done) == TASKS, done
    log = broker.host.log_text()
    assert "Traceback" not in log and "unexpected error" not in log

    latencies.sort()
    record("load", tasks=TASKS, clients=CLIENTS, workers=WORKERS, server_errors=0,
           submit_per_s=round(TASKS / submitted, 1), end_to_end_tasks_per_s=round(TASKS / drained, 1),
           submit_p50_ms=round(statistics.median(latencies) * 1000, 1),
           submit_p99_ms=round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
           per_worker_done="/".join(map(str, done)))
