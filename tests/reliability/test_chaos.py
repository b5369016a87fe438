"""Chaos: workers SIGKILLed every 2 s and storage stopped mid-run; no task is lost, none fails, none is corrupted."""

from __future__ import annotations

import random
import re
import signal
import threading
import time

import pytest

from .conftest import final_results, record, statuses, submit_many

TASKS = 300
WORKERS = 3
KILL_EVERY = 2.0
KILL_FOR = 16.0
OUTAGE_AT = 6.0  # seconds into the kills
OUTAGE_SECONDS = 4.0
WORKER_ARGS = ["--handler", "echo", "--batch", "4", "--lease", "10"]


def done_count(worker) -> int:
    """The worker's own count of results it put (its last status line)."""
    counts = re.findall(r"status: done (\d+)", worker.log_text())
    return int(counts[-1]) if counts else 0


def outage(azurite, broker, model, task_id, seen: dict) -> None:
    """Stop storage, check what the broker answers meanwhile, start storage again on the same ports and data."""
    azurite.stop()
    try:
        time.sleep(0.5)
        seen["health"] = broker.get("/health", timeout=30)
        seen["predict"] = broker.post(f"/predict?model={model}", data=b"during the outage", timeout=30)
        seen["status"] = broker.get(f"/status?task_id={task_id}", timeout=30)
        seen["getnexttask"] = broker.get(f"/getnexttask?model={model}&wait=1", headers=broker.worker, timeout=30)
        time.sleep(max(0.0, OUTAGE_SECONDS - 0.5 - sum(r.elapsed.total_seconds() for r in seen.values())))
    finally:
        azurite.start()


@pytest.mark.slow
def test_killed_workers_and_a_storage_outage_lose_nothing(disk_azurite, start_broker, start_workers, model):
    broker = start_broker(connection_string=disk_azurite.connection_string)
    rng = random.Random(5)
    payloads = [rng.randbytes(rng.randint(1024, 20 * 1024)) for _ in range(TASKS)]
    params = [{"sleep_ms": rng.randint(300, 1200)} for _ in range(TASKS)]
    ids = submit_many(broker, model, payloads, params)
    assert len(set(ids)) == TASKS

    workers = start_workers(broker, model, WORKERS, *WORKER_ARGS)
    steady = workers[0]  # never killed: it must ride out the storage outage on its own
    started = time.monotonic()
    kills = 0
    during: dict = {}
    storage_thread = None
    while time.monotonic() - started < KILL_FOR:
        time.sleep(max(0.0, started + (kills + 1) * KILL_EVERY - time.monotonic()))
        if storage_thread is None and time.monotonic() - started >= OUTAGE_AT:
            storage_thread = threading.Thread(target=outage, args=(disk_azurite, broker, model, ids[-1], during))
            storage_thread.start()
        victim = rng.choice([w for w in workers if w.alive() and w is not steady])
        victim.send(signal.SIGKILL)
        victim.proc.wait(10)
        kills += 1
        workers.remove(victim)
        workers += start_workers(broker, model, 1, *WORKER_ARGS)
    storage_thread.join(60)
    steady_done_after_outage = done_count(steady)
    chaos_seconds = time.monotonic() - started

    # While storage was down: 503 with one JSON sentence, never a hang.
    assert set(during) == {"health", "predict", "status", "getnexttask"}
    for name, response in during.items():
        assert response.status_code == 503, (name, response.status_code, response.text)
        assert response.json() == {"error": "storage is unavailable right now; retry shortly"}, name

    answers = final_results(broker, ids, timeout=240)
    total_seconds = time.monotonic() - started
    wrong = [t for t, p in zip(ids, payloads) if answers[t].status_code != 200 or answers[t].content != p]
    assert wrong == [], [(t, answers[t].status_code, answers[t].text[:200]) for t in wrong[:5]]
    documents = statuses(broker, ids)
    assert {d["status"] for d in documents.values()} == {"succeeded"}
    redelivered = sum(d["attempts"] > 1 for d in documents.values())

    # Recovered without restarting anything that was not killed on purpose.
    assert broker.host.alive() and broker.get("/health").status_code == 200
    assert all(w.alive() for w in workers)
    time.sleep(1.5)  # one more status line
    assert done_count(steady) > steady_done_after_outage, steady.log_text()[-2000:]
    log = broker.host.log_text()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
    record("chaos", tasks=TASKS, workers=WORKERS, kills=kills, storage_outages=1, outage_seconds=OUTAGE_SECONDS,
           redelivered=redelivered, max_attempts_seen=max(d["attempts"] for d in documents.values()),
           chaos_seconds=round(chaos_seconds, 1),
           all_done_seconds=round(total_seconds, 1), failed=0, lost=0)
    assert kills == int(KILL_FOR / KILL_EVERY)
    assert redelivered > 0  # the kills did take tasks down with them; otherwise this test proved nothing
