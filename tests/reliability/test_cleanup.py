"""Cleanup beyond tests/broker/test_cleanup.py: every kind of outcome expires, unfinished tasks never do, and a
cleanup process SIGKILLed in the middle of its work is taken up by the next run with nothing left dangling.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from .conftest import record

ROOT = Path(__file__).resolve().parents[2]
TTL = 5
RUN_CLEANUP = ("import asyncio; from broker.cleanup import cleanup; print('running', flush=True); "
               "asyncio.run(cleanup(None)); print('finished', flush=True)")


@pytest.fixture(scope="module")
def storage(module_azurite):
    """Storage of its own: a cleanup with a 5 s TTL would otherwise delete other tests' results."""
    return module_azurite


@pytest.fixture(scope="module")
def ttl_broker(storage, start_broker):
    return start_broker({"BROKER_RESULT_TTL_SECONDS": str(TTL)}, connection_string=storage.connection_string)


def cleanup_process(storage) -> subprocess.Popen:
    """The timer function run once in a process of its own (so that it can be killed), as the host would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(BROKER_STORAGE_CONNECTION=storage.connection_string, BROKER_RESULT_TTL_SECONDS=str(TTL),
               BROKER_CLEANUP_BATCH="100000", PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, "-c", RUN_CLEANUP], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    assert process.stdout.readline().strip() == "running"
    return process


def run_cleanup(storage) -> None:
    process = cleanup_process(storage)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0 and "finished" in out, out


def present(storage, container: str, names: set[str]) -> set[str]:
    client = BlobServiceClient.from_connection_string(storage.connection_string).get_container_client(container)
    return {blob.name for blob in client.list_blobs()} & names


def finish_all(broker, model, count: int) -> list[str]:
    ids = [broker.submit(model, f"{i}".encode()) for i in range(count)]
    claimed = []
    while len(claimed) < count:
        claimed += broker.claim(model, max_tasks=32)
    with ThreadPoolExecutor(8) as pool:
        assert {r.status_code for r in pool.map(broker.put, claimed)} == {200}
    return ids


def test_every_outcome_expires_and_unfinished_tasks_never_do(ttl_broker, storage, model):
    succeeded, failed, cancelled, running, queued = (ttl_broker.submit(model, n.encode()) for n in
                                                     ("succeeded", "failed", "cancelled", "running", "queued"))
    tasks = {t["task_id"]: t for t in ttl_broker.claim(model, max_tasks=3)}
    assert set(tasks) == {succeeded, failed, cancelled}
    assert ttl_broker.put(tasks[succeeded]).status_code == 200
    assert ttl_broker.put_failure(tasks[failed], "broken").status_code == 200
    assert ttl_broker.post(f"/cancel?task_id={cancelled}").status_code == 200
    [held] = ttl_broker.claim(model, lease=60)
    assert held["task_id"] == running
    time.sleep(TTL + 0.5)  # the finished ones are past their TTL; the others are older than it too

    run_cleanup(storage)
    finished = {succeeded, failed, cancelled}
    assert present(storage, "outbox", finished) == set() and present(storage, "inbox", finished) == set()
    for task_id in finished:
        assert ttl_broker.get(f"/status?task_id={task_id}").status_code == 404
    # Old but unfinished: untouched, and they still finish normally.
    assert present(storage, "inbox", {running, queued}) == {running, queued}
    assert ttl_broker.status(running)["status"] == "running"
    assert ttl_broker.put(held, b"late but fine").status_code == 200
    [last] = ttl_broker.claim(model)
    assert last["task_id"] == queued and ttl_broker.put(last, b"also fine").status_code == 200
    assert ttl_broker.get(f"/getresult?task_id={queued}").content == b"also fine"


@pytest.mark.slow
def test_a_killed_cleanup_is_taken_up_by_the_next_run(ttl_broker, storage, model):
    old = set(finish_all(ttl_broker, model, 200))
    time.sleep(TTL + 0.5)

    kills, left = 0, old
    for delay in (0.05, 0.1, 0.2, 0.4, 0.8):  # kill earlier than it can finish; later if it had not started
        process = cleanup_process(storage)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        kills += 1
        left = present(storage, "outbox", old)
        if len(left) < len(old):
            break
    assert 0 < len(left) < len(old), f"the kill did not land mid-run ({len(left)} of {len(old)} left)"
    # Whatever the kill left, expired tasks read 404 (never a half-deleted state) ...
    assert {ttl_broker.get(f"/status?task_id={t}").status_code for t in list(old)[:50]} == {404}

    new = set(finish_all(ttl_broker, model, 5))
    run_cleanup(storage)  # ... and the next run finishes the job, leaving what is younger than the TTL.
    assert present(storage, "outbox", old) == set() and present(storage, "inbox", old) == set()
    assert present(storage, "outbox", new) == new
    assert all(ttl_broker.get(f"/getresult?task_id={t}").content for t in new)
    record("cleanup", expired_tasks=len(old), kills_before_partial=kills, left_by_the_killed_run=len(left),
           newer_untouched=len(new))
