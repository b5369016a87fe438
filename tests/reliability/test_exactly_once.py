"""Exactly once: leases that run out under real workers still leave every task with one committed outcome.

Two of three workers are frozen (SIGSTOP) for longer than their lease while they hold tasks, as a GC
pause or a suspended VM would; the third takes the expired tasks over; then the frozen ones wake up
and put the results they had. A recording proxy between the workers and the broker sees every put and
its answer; the test handler stamps each result with the execution that made it.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter, defaultdict

import pytest

from tests.conftest import Broker
from tests.support.recording_proxy import RecordingProxy

from .conftest import final_results, record, submit_many

TASKS = 60
LEASE = 5
FREEZE = 8  # seconds, longer than the lease


@pytest.mark.slow
def test_each_task_is_committed_once_and_keeps_its_first_commit(start_broker, start_workers, model, tmp_path):
    broker = start_broker()
    ledger = tmp_path / "ledger"
    ledger.touch()
    payloads = [f"task-{i:03d}".encode() for i in range(TASKS)]
    ids = submit_many(broker, model, payloads, [{"sleep_ms": 1000}] * TASKS)

    with RecordingProxy(broker.url) as proxy:
        via_proxy = Broker(proxy.url, broker.host, broker.worker_key)
        workers = start_workers(via_proxy, model, 3, "--handler", "tests.reliability.handlers:CountingEcho",
                                "--batch", "4", "--lease", str(LEASE), env={"RELIABILITY_LEDGER": str(ledger)})
        time.sleep(1.5)  # every worker is holding a batch by now
        frozen = workers[:2]
        for worker in frozen:
            worker.send(signal.SIGSTOP)
        try:
            time.sleep(FREEZE)
        finally:
            for worker in frozen:
                worker.send(signal.SIGCONT)
        answers = final_results(broker, ids, timeout=180)
        time.sleep(2 * LEASE)  # let the woken workers' late puts arrive and be answered
        puts = list(proxy.puts)

    executions = defaultdict(list)
    for line in ledger.read_text().splitlines():
        payload, stamp = line.split()
        executions[payload].append(stamp)
    by_task = defaultdict(list)
    for put in puts:
        by_task[put.task_id].append(put)

    problems = []
    for task_id, payload in zip(ids, payloads):
        answer = answers[task_id]
        commits = {p.lease: p for p in by_task[task_id]
                   if p.status == 200 and json.loads(p.answer)["status"] == "succeeded"}
        refused = [p for p in by_task[task_id] if p.lease not in commits]
        if answer.status_code != 200:
            problems.append(f"{task_id}: getresult {answer.status_code} {answer.text[:200]}")
        elif len(commits) != 1:
            problems.append(f"{task_id}: committed by {len(commits)} leases")
        elif answer.content != next(iter(commits.values())).body:
            problems.append(f"{task_id}: stored {answer.content!r}, committed {next(iter(commits.values())).body!r}")
        elif answer.content.split(b"|")[1].decode() not in executions[payload.decode()]:
            problems.append(f"{task_id}: stored result {answer.content!r} was made by no execution")
        problems += [f"{task_id}: a second put answered {p.status} {p.answer[:100]!r}" for p in refused
                     if p.status != 409]
    assert problems == [], "\n".join(problems[:20])

    runs = Counter(len(executions[p.decode()]) for p in payloads)
    rejected = sum(p.status == 409 for p in puts)
    record("exactly once", tasks=TASKS, lease_seconds=LEASE, frozen_workers=len(frozen), freeze_seconds=FREEZE,
           executions=sum(len(v) for v in executions.values()), executed_twice_or_more=TASKS - runs[1],
           late_puts_refused_409=rejected, double_commits=0)
    # The scenario really happened: some tasks ran twice, and the broker refused the losing puts.
    assert TASKS - runs[1] > 0 and rejected > 0, (runs, rejected)
