"""Peer reference: the same dispatch round trip through Celery with a Redis broker and result
backend, on this machine, against the broker with an mlserver `echo` worker, in turns.

One client submits a 1 KiB payload and waits for it to come back, one task at a time:
- broker: POST /predict, then GET /getresult?wait=20 (worker: `python -m mlserver --handler echo`);
- Celery: `echo.delay(payload).get()` (worker: `celery worker --pool solo`, Redis from Debian's
  `redis-server`, in memory, no persistence).
Both are started here and stopped by PID. The figure is broker p50 / Celery p50: what durable
blob + queue storage behind HTTP costs against an in-memory broker.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time

import requests

from devstack.services import Worker

from . import common

PAYLOAD = os.urandom(1024)


class Proc:
    """A child process with its output in a log file; stopped by its PID."""

    def __init__(self, command: list[str], log_path, env: dict | None = None) -> None:
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=common.ROOT, start_new_session=True)

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
    redis = Proc([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--daemonize", "no"], work / "redis.log")
    env = {**os.environ, "BENCH_REDIS_URL": url}
    worker = Proc([sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "--pool", "solo",
                   "--concurrency", "1", "-Q", "bench", "--without-gossip", "--without-mingle",
                   "--without-heartbeat", "--loglevel", "WARNING"], work / "celery.log", env)
    client = Celery("bench", broker=url, backend=url)
    client.conf.update(task_default_queue="bench", task_serializer="json", result_serializer="json",
                       broker_connection_retry_on_startup=True)
    return redis, worker, client


def main(argv=None) -> dict:
    common.parse_args("celery_ref", argv)
    common.note_load("celery_ref")
    count = common.pick(40, 150)
    text64 = base64.b64encode(PAYLOAD).decode()
    broker_times, celery_times = [], []
    with common.Stack() as stack:
        redis, cworker, capp = start_celery(stack.work)
        model = common.model_name("peer")
        worker = Worker(stack.url, common.WORKER_KEY, ["--model", model, "--handler", "echo", "--batch", "1",
                                                       "--wait", "5", "--status-interval", "600"],
                        log_dir=stack.work / "mlserver").start(timeout=60)
        try:
            task = capp.signature("bench.echo")
            task.delay(text64).get(timeout=60)  # warm-up: the Celery worker is up once this answers
            session = requests.Session()

            def broker_trip() -> float:
                t0 = time.perf_counter()
                r = session.post(f"{stack.url}/predict?model={model}", data=PAYLOAD,
                                 headers={"Content-Type": "application/octet-stream"})
                task_id = r.json()["task_id"]
                while (r := session.get(f"{stack.url}/getresult", params={"task_id": task_id, "wait": 20})).status_code == 202:
                    pass
                assert r.content == PAYLOAD
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
        finally:
            worker.stop()
            cworker.stop()
            redis.stop()
    b, c = common.summary_ms(broker_times), common.summary_ms(celery_times)
    r = common.ratio(b["p50_ms"], c["p50_ms"])
    text = common.table(f"Dispatch round trip, one client, 1 KiB echo ({count} each, in turns), ms",
                        ["system", "p50", "p95", "ratio p50"],
                        [["Celery + Redis (in memory)", c["p50_ms"], c["p95_ms"], 1.0],
                         ["broker over HTTP + Azurite", b["p50_ms"], b["p95_ms"], r]])
    data = {"count": count, "celery_redis": c, "broker": b, "ratio_broker_over_celery": r, "table": text}
    common.save("celery_ref", data)
    return data


def summary(d: dict) -> list[list]:
    """This benchmark's row of the summary table (bench.plot)."""
    return [["6 peer", "round trip: broker / Celery+Redis", f"{d['broker']['p50_ms']:.1f} ms",
             f"{d['celery_redis']['p50_ms']:.1f} ms", d["ratio_broker_over_celery"], "report", ""]]


if __name__ == "__main__":
    main()
