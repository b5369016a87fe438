"""Chaos: workers SIGKILLed every 2 s and storage stopped mid-run, while stale lease tokens are replayed and
clients repeat their idempotent submits; no task is lost, none fails, none is corrupted, none is committed
twice, and no attempt counter ever goes down."""

from __future__ import annotations

import json
import random
import re
import signal
import threading
import time
from collections import defaultdict

import pytest
import requests

from tests.conftest import Broker
from tests.support.recording_proxy import RecordingProxy

from .conftest import final_results, record, statuses, submit_many

TASKS = 300
WORKERS = 3
KILL_EVERY = 2.0
KILL_FOR = 16.0
OUTAGE_AT = 6.0  # seconds into the kills
OUTAGE_SECONDS = 4.0
WORKER_ARGS = ["--handler", "echo", "--batch", "4", "--lease", "10"]
STEP = 0.02  # the pause of each troublemaker between two requests


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


class Troublemakers:
    """Threads that, while the chaos runs, do what stale workers and impatient clients do:
    - replay tokens the broker has since replaced (a give-back, a retryable failure, a heartbeat);
    - submit tasks again with their Idempotency-Key;
    - read tasks' status, checking that no attempt counter ever goes down."""

    def __init__(self, broker: Broker, proxy: RecordingProxy, model: str, ids, keys, payloads, params) -> None:
        self.broker, self.proxy, self.model = broker, proxy, model
        self.ids, self.keys, self.payloads, self.params = ids, keys, payloads, params
        self.stop = threading.Event()
        self.rng = random.Random(11)
        self.replays: dict[int, int] = defaultdict(int)  # answer status -> count
        self.replayed_200: list[str] = []
        self.resubmits: dict[int, int] = defaultdict(int)
        self.wrong_ids: list[str] = []
        self.attempts_seen: dict[str, int] = {}
        self.went_down: list[str] = []
        self.threads = [threading.Thread(target=self._loop, args=(step,), daemon=True)
                        for step in (self._replay, self._resubmit, self._watch)]

    def __enter__(self) -> Troublemakers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _loop(self, step) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            try:
                step(session)
            except requests.RequestException:
                pass  # the broker is busy riding out the outage: try again
            self.stop.wait(STEP)

    def _stale_token(self) -> tuple[str, str] | None:
        leases = list(self.proxy.leases)
        latest = {task_id: index for index, (task_id, _) in enumerate(leases)}
        stale = [(i, entry) for i, entry in enumerate(leases) if latest[entry[0]] > i]
        return self.rng.choice(stale)[1] if stale else None

    def _replay(self, session: requests.Session) -> None:
        stale = self._stale_token()
        if stale is None:
            return
        task_id, lease = stale
        base, headers = self.broker.url, self.broker.worker
        action = self.rng.choice(["give back", "retry", "heartbeat"])
        if action == "retry":
            answer = session.post(f"{base}/puttaskresult?task_id={task_id}&lease={lease}&status=failed",
                                  json={"error": "replayed", "retryable": True}, headers=headers, timeout=30)
        else:
            seconds = 0 if action == "give back" else 30
            answer = session.post(f"{base}/extendlease?task_id={task_id}&lease={lease}&seconds={seconds}",
                                  headers=headers, timeout=30)
        self.replays[answer.status_code] += 1
        if answer.status_code < 300:
            self.replayed_200.append(f"{action} {task_id}: {answer.text[:200]}")

    def _resubmit(self, session: requests.Session) -> None:
        i = self.rng.randrange(len(self.ids))
        answer = session.post(f"{self.broker.url}/predict?model={self.model}&params="
                              + requests.utils.quote(json.dumps(self.params[i])), data=self.payloads[i],
                              headers={"Idempotency-Key": self.keys[i], "Content-Type": "application/octet-stream"},
                              timeout=30)
        self.resubmits[answer.status_code] += 1
        if answer.status_code == 202 and answer.json()["task_id"] != self.ids[i]:
            self.wrong_ids.append(self.ids[i])

    def _watch(self, session: requests.Session) -> None:
        task_id = self.rng.choice(self.ids)
        answer = session.get(f"{self.broker.url}/status?task_id={task_id}", timeout=30)
        if answer.status_code != 200:
            return
        attempts = answer.json()["attempts"]
        if attempts < self.attempts_seen.get(task_id, 0):
            self.went_down.append(f"{task_id}: {self.attempts_seen[task_id]} -> {attempts}")
        self.attempts_seen[task_id] = max(attempts, self.attempts_seen.get(task_id, 0))


def commits(puts) -> dict[str, set[str]]:
    """task id -> the lease tokens whose put the broker accepted as the success."""
    accepted = defaultdict(set)
    for put in puts:
        if put.status == 200 and json.loads(put.answer)["status"] == "succeeded":
            accepted[put.task_id].add(put.lease)
    return accepted


@pytest.mark.slow
def test_killed_workers_a_storage_outage_replays_and_repeats_lose_nothing(disk_azurite, start_broker, start_workers,
                                                                           model):
    broker = start_broker(connection_string=disk_azurite.connection_string)
    rng = random.Random(5)
    payloads = [rng.randbytes(rng.randint(1024, 20 * 1024)) for _ in range(TASKS)]
    params = [{"sleep_ms": rng.randint(300, 1200)} for _ in range(TASKS)]
    keys = [f"chaos-{model}-{i}" for i in range(TASKS)]
    ids = submit_many(broker, model, payloads, params, keys=keys)
    assert len(set(ids)) == TASKS

    with RecordingProxy(broker.url) as proxy:
        via_proxy = Broker(proxy.url, broker.host, broker.worker_key)
        workers = start_workers(via_proxy, model, WORKERS, *WORKER_ARGS)
        steady = workers[0]  # never killed: it must ride out the storage outage on its own
        started = time.monotonic()
        kills = 0
        during: dict = {}
        storage_thread = None
        with Troublemakers(broker, proxy, model, ids, keys, payloads, params) as trouble:
            for _ in range(int(KILL_FOR / KILL_EVERY)):  # a count, not a deadline: a slow restart delays the rest
                time.sleep(max(0.0, started + (kills + 1) * KILL_EVERY - time.monotonic()))
                if storage_thread is None and time.monotonic() - started >= OUTAGE_AT:
                    storage_thread = threading.Thread(target=outage,
                                                      args=(disk_azurite, broker, model, ids[-1], during))
                    storage_thread.start()
                victim = rng.choice([w for w in workers if w.alive() and w is not steady])
                victim.send(signal.SIGKILL)
                victim.proc.wait(10)
                kills += 1
                workers.remove(victim)
                workers += start_workers(via_proxy, model, 1, *WORKER_ARGS)
            storage_thread.join(60)
            steady_done_after_outage = done_count(steady)
            chaos_seconds = time.monotonic() - started
            answers = final_results(broker, ids, timeout=240)
        total_seconds = time.monotonic() - started
        puts = list(proxy.puts)

    # While storage was down: 503 with one JSON sentence, never a hang.
    assert set(during) == {"health", "predict", "status", "getnexttask"}
    for name, response in during.items():
        assert response.status_code == 503, (name, response.status_code, response.text)
        assert response.json() == {"error": "storage is unavailable right now; retry shortly"}, name

    wrong = [t for t, p in zip(ids, payloads) if answers[t].status_code != 200 or answers[t].content != p]
    assert wrong == [], [(t, answers[t].status_code, answers[t].text[:200]) for t in wrong[:5]]
    documents = statuses(broker, ids)
    assert {d["status"] for d in documents.values()} == {"succeeded"}
    redelivered = sum(d["attempts"] > 1 for d in documents.values())

    # Committed exactly once: one accepted put per task, whatever was replayed or resubmitted.
    accepted = commits(puts)
    assert [t for t in ids if len(accepted[t]) != 1] == [], {t: len(accepted[t]) for t in ids if len(accepted[t]) != 1}
    # Stale tokens never changed a thing, repeats always found their task, attempts never went down.
    assert trouble.replayed_200 == [], trouble.replayed_200[:5]
    assert set(trouble.replays) <= {409, 503}, dict(trouble.replays)
    assert trouble.wrong_ids == [] and set(trouble.resubmits) <= {202, 503}, dict(trouble.resubmits)
    assert trouble.went_down == [], trouble.went_down[:5]
    assert sum(trouble.replays.values()) > 100 and trouble.resubmits[202] > 100  # the trouble really happened
    # One message per task: the queue drains to nothing once every task is done.
    deadline = time.monotonic() + 30
    while (left := broker.get(f"/stats?model={model}", headers=broker.worker).json()["models"][model]["queued"]) \
            and time.monotonic() < deadline:
        time.sleep(1)
    assert left == 0

    # Recovered without restarting anything that was not killed on purpose.
    assert broker.host.alive() and broker.get("/health").status_code == 200
    assert all(w.alive() for w in workers)
    time.sleep(1.5)  # one more status line
    assert done_count(steady) > steady_done_after_outage, steady.log_text()[-2000:]
    log = broker.host.log_text()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
    record("chaos", tasks=TASKS, workers=WORKERS, kills=kills, storage_outages=1, outage_seconds=OUTAGE_SECONDS,
           redelivered=redelivered, max_attempts_seen=max(d["attempts"] for d in documents.values()),
           stale_replays=sum(trouble.replays.values()), stale_replays_refused=trouble.replays[409],
           idempotent_repeats=trouble.resubmits[202], tasks_watched=len(trouble.attempts_seen),
           attempts_went_down=0, double_commits=0, chaos_seconds=round(chaos_seconds, 1),
           all_done_seconds=round(total_seconds, 1), failed=0, lost=0)
    assert redelivered > 0  # the kills did take tasks down with them; otherwise this test proved nothing
