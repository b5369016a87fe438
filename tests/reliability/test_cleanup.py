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

from broker.store import CLEANUP_PARALLEL

from .conftest import record

ROOT = Path(__file__).resolve().parents[2]
TTL = 5
MIDWAY = 40  # results the killed cleanup deletes (more than one parallel chunk of them) before it stops still
assert MIDWAY > CLEANUP_PARALLEL  # so that the first chunk has been deleted for certain when it stops
RUN_CLEANUP = """
import asyncio, sys, time
from broker import storage
import broker.cleanup as timer

stop_after = int(sys.argv[1])  # results deleted before the run stops still, to be killed (0: never)
at = float(sys.argv[2]) if sys.argv[2] else None  # the wall-clock time the run sees (none: the real one)
real_delete, real_get_store, deleted = storage.Container.delete, timer.get_store, 0

async def delete(self, name, etag=None):
    global deleted
    if stop_after and self.client.container_name == "outbox":
        deleted += 1
        if deleted > stop_after:
            print("midway", flush=True)
            time.sleep(600)  # the whole run stands still here
    return await real_delete(self, name, etag)

def get_store(settings):
    store = real_get_store(settings)
    if at is not None:
        store.now = lambda: at
    return store

storage.Container.delete, timer.get_store = delete, get_store
print("running", flush=True)
asyncio.run(timer.cleanup(None))
print("finished", flush=True)
"""


@pytest.fixture(scope="module")
def storage(module_azurite):
    """Storage of its own: a cleanup with a 5 s TTL would otherwise delete other tests' results."""
    return module_azurite


@pytest.fixture(scope="module")
def ttl_broker(storage, start_broker):
    return start_broker({"BROKER_RESULT_TTL_SECONDS": str(TTL)}, connection_string=storage.connection_string)


def cleanup_process(storage, stop_after: int = 0, at: float | None = None) -> subprocess.Popen:
    """The timer function run once in a process of its own (so that it can be killed), as the host would;
    with `stop_after`, it stands still once it has deleted that many results, and says "midway"; `at`:
    the time it runs at (a slow start cannot age what the TTL spares)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(BROKER_STORAGE_CONNECTION=storage.connection_string, BROKER_RESULT_TTL_SECONDS=str(TTL),
               BROKER_CLEANUP_BATCH="100000", PYTHONUNBUFFERED="1")
    arguments = [str(stop_after), "" if at is None else repr(at)]
    process = subprocess.Popen([sys.executable, "-c", RUN_CLEANUP, *arguments], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout.readline().strip() == "running"
    return process


def run_cleanup(storage, at: float | None = None) -> None:
    process = cleanup_process(storage, at=at)
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

    process = cleanup_process(storage, stop_after=MIDWAY)
    try:
        said = []  # what it printed before (a warning, say), for the failure message
        while (line := process.stdout.readline()) and line.strip() != "midway":
            said.append(line)
        assert line.strip() == "midway", "".join(said)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    left = present(storage, "outbox", old)
    assert len(old) - MIDWAY <= len(left) < len(old), f"the kill did not land mid-run ({len(left)} of {len(old)} left)"
    # Whatever the kill left, expired tasks read 404 (never a half-deleted state) ...
    assert {ttl_broker.get(f"/status?task_id={t}").status_code for t in list(old)[:50]} == {404}

    at = time.time()
    new = set(finish_all(ttl_broker, model, 5))
    run_cleanup(storage, at)  # ... and the next run finishes the job, leaving what is younger than the TTL.
    assert present(storage, "outbox", old) == set() and present(storage, "inbox", old) == set()
    assert present(storage, "outbox", new) == new
    record("cleanup", expired_tasks=len(old), deleted_before_the_kill=len(old) - len(left), left_by_the_killed_run=len(left),
           newer_untouched=len(new))
