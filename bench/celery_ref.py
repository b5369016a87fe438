"""Peer reference: the same dispatch round trip through Celery with a Redis broker and result
backend, on this machine, against the broker with an mlserver `echo` worker, in turns.

Latency: one client submits a 1 KiB payload and waits for it to come back, one task at a time:
- broker: POST /predict, then GET /getresult?wait=20 (worker: `python -m mlserver --handler echo`);
- Celery: `echo.delay(payload).get()` (worker: `celery worker --pool solo`, Redis from Debian's
  `redis-server` as both broker and result backend).
Throughput: CLIENTS clients at once, each submitting and waiting in a closed loop, the same task
count on each system, one worker each (the broker's with batch 8), in turns.
Redis runs with persistence on (an append-only file, fsync every second: Redis's own durable
setting), as a durable broker should be compared. Both are started here and stopped by PID. The
figures are Celery / broker: the share of an in-memory-first broker's speed that durable blob +
queue storage behind HTTP keeps.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from devstack.services import Worker, leash

from . import common

PAYLOAD = os.urandom(1024)
CLIENTS = 8


class Proc:
    """A child process with its output in a log file; stopped by its PID."""

    def __init__(self, command: list[str], log_path, env: dict | None = None) -> None:
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(leash() + command, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=common.ROOT, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start_celery(work):
    """(Redis, a Celery worker serving bench/celery_app.py, a Celery client); celery is imported here,
    so that reading this benchmark's results (bench.plot) needs none of it."""
    from celery import Celery

    server = shutil.which("redis-server")
    if not server:
        raise SystemExit("redis-server is not installed: apt-get install -y redis-server")
    port = common.free_port()
    url = f"redis://127.0.0.1:{port}/0"
    (work / "redis").mkdir(exist_ok=True)
    redis = Proc([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                  "--appendfsync", "everysec", "--dir", str(work / "redis"), "--daemonize", "no"], work / "redis.log")
    env = {**os.environ, "BENCH_REDIS_URL": url}
    worker = Proc([sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "--pool", "solo",
                   "--concurrency", "1", "-Q", "bench", "--without-gossip", "--without-mingle",
                   "--without-heartbeat", "--loglevel", "WARNING"], work / "celery.log", env)
    def client():
        app = Celery("bench", broker=url, backend=url)
        app.conf.update(task_default_queue="bench", task_serializer="json", result_serializer="json",
                        broker_connection_retry_on_startup=True)
        return app

    return redis, worker, client


def closed_loop(trip, total: int) -> float:
    """tasks/s of CLIENTS threads each running `trip(local)` until `total` trips are done in all
    (`local` is the thread's own state: its HTTP session or Celery client)."""
    left, lock = [total], threading.Lock()

    def client(_):
        local = threading.local()
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            trip(local)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    return total / (time.perf_counter() - t0)


def echo_worker(stack, model: str, batch: int, name: str) -> Worker:
    """An mlserver echo worker on `model`, started and ready."""
    return Worker(stack.url, common.WORKER_KEY, ["--model", model, "--handler", "echo", "--batch", str(batch),
                                                 "--wait", "5", "--status-interval", "600"],
                  log_dir=stack.work / name).start(timeout=60)


def broker_echo(session: requests.Session, url: str, model: str) -> None:
    """Submit PAYLOAD and wait until it comes back."""
    r = session.post(f"{url}/predict?model={model}", data=PAYLOAD, headers={"Content-Type": "application/octet-stream"})
    task_id = r.json()["task_id"]
    while (r := session.get(f"{url}/getresult", params={"task_id": task_id, "wait": 20})).status_code == 202:
        pass
    assert r.content == PAYLOAD


def main(argv=None) -> dict:
    common.parse_args("celery_ref", argv)
    common.note_load("celery_ref")
    count = common.pick(40, 150)
    text64 = base64.b64encode(PAYLOAD).decode()
    broker_times, celery_times = [], []
    with common.Stack() as stack:
        redis, cworker, celery_client = start_celery(stack.work)
        capp = celery_client()
        model = common.model_name("peer")
        worker = echo_worker(stack, model, 1, "mlserver")
        many = common.model_name("peer-many")
        batch_worker = echo_worker(stack, many, 8, "mlserver-many")
        try:
            task = capp.signature("bench.echo")
            task.delay(text64).get(timeout=60)  # warm-up: the Celery worker is up once this answers
            session = requests.Session()

            def broker_trip() -> float:
                t0 = time.perf_counter()
                broker_echo(session, stack.url, model)
                return time.perf_counter() - t0

            def celery_trip() -> float:
                t0 = time.perf_counter()
                assert task.delay(text64).get(timeout=20) == text64
                return time.perf_counter() - t0

            for _ in range(5):
                broker_trip()
                celery_trip()
            for _ in range(count):
                broker_times.append(broker_trip())
                celery_times.append(celery_trip())

            def broker_loop(local) -> None:
                if not hasattr(local, "session"):
                    local.session = requests.Session()
                broker_echo(local.session, stack.url, many)

            def celery_loop(local) -> None:
                if not hasattr(local, "task"):
                    local.task = celery_client().signature("bench.echo")
                assert local.task.delay(text64).get(timeout=60) == text64

            total = common.pick(200, 1000)
            rates = {"broker": [], "celery": []}
            for turn in range(2):  # in turns, neither always first
                for name, loop in ((("broker", broker_loop), ("celery", celery_loop)) if turn == 0
                                   else (("celery", celery_loop), ("broker", broker_loop))):
                    rates[name].append(closed_loop(loop, total))
        finally:
            worker.stop()
            batch_worker.stop()
            cworker.stop()
            redis.stop()
    b, c = common.summary_ms(broker_times), common.summary_ms(celery_times)
    r = common.ratio(b["p50_ms"], c["p50_ms"])
    broker_rate, celery_rate = max(rates["broker"]), max(rates["celery"])
    share = common.ratio(broker_rate, celery_rate)
    text = common.table(f"Dispatch round trip, one client, 1 KiB echo ({count} each, in turns), ms",
                        ["system", "p50", "p95", "ratio p50"],
                        [["Celery + Redis (AOF, fsync every second)", c["p50_ms"], c["p95_ms"], 1.0],
                         ["broker over HTTP + Azurite", b["p50_ms"], b["p95_ms"], r]])
    text += "\n" + common.table(f"Throughput, {CLIENTS} closed-loop clients, {total} tasks each run, one worker each "
                                f"(best of 2 in turns), tasks/s", ["system", "runs", "best", "broker / Celery"],
                                [["Celery + Redis", " / ".join(f"{x:.1f}" for x in rates["celery"]), round(celery_rate, 1), ""],
                                 ["broker + Azurite", " / ".join(f"{x:.1f}" for x in rates["broker"]),
                                  round(broker_rate, 1), share]])
    print(text)
    data = {"count": count, "celery_redis": c, "broker": b, "ratio_broker_over_celery": r,
            "throughput": {"clients": CLIENTS, "tasks": total, "broker_tasks_per_s": [round(x, 1) for x in rates["broker"]],
                           "celery_tasks_per_s": [round(x, 1) for x in rates["celery"]], "broker_share": share},
            "redis_persistence": "appendonly yes, appendfsync everysec", "table": text}
    common.save("celery_ref", data)
    return data


def summary(d: dict) -> list[list]:
    """This benchmark's row of the summary table (bench.plot)."""
    rows = [["6 peer", "round trip: broker / Celery+Redis", f"{d['broker']['p50_ms']:.1f} ms",
             f"{d['celery_redis']['p50_ms']:.1f} ms", d["ratio_broker_over_celery"], "report", ""]]
    if "throughput" in d:
        t = d["throughput"]
        share = t["broker_share"]
        rows.append(["6 peer", f"throughput, {t['clients']} clients: broker / Celery+Redis (AOF)",
                     f"{max(t['broker_tasks_per_s'])} tasks/s", f"{max(t['celery_tasks_per_s'])} tasks/s", share,
                     ">=0.33", common.verdict(share, 0.33, higher_is_better=True)])
    return rows


if __name__ == "__main__":
    main()
