"""Reliability fixtures: real Azurite (on disk where it gets stopped), real dev hosts, real workers.

Measured figures (tasks, kills, fuzz cases, throughput...) are collected in FIGURES and printed at the
end of the run; timings are reported, never asserted.
"""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from devstack.services import Azurite, Worker
from tests.conftest import Broker
from tests.support import polling

FIGURES: dict[str, dict] = {}
FIGURES_FILE = Path(os.environ.get("RELIABILITY_FIGURES", "/tmp/reliability-figures.json"))


def record(section: str, **values) -> None:
    """Keep measured figures for the summary (and docs/reliability.md)."""
    FIGURES.setdefault(section, {}).update(values)
    FIGURES_FILE.write_text(json.dumps(FIGURES, indent=2, sort_keys=True))


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("reliability figures")
        for section, values in FIGURES.items():
            terminalreporter.write_line(f"{section}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


@pytest.fixture
def disk_azurite(tmp_path):
    """Azurite keeping its data on disk, so it can be stopped and started again on the same ports and data."""
    service = Azurite(location=tmp_path / "azurite-data", log_dir=tmp_path / "azurite").start()
    yield service
    service.stop()


class WorkerPool:
    """Real `python -m mlserver` workers started against a broker; stop_all() ends each one by its PID."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Worker] = []

    def start(self, broker: Broker, model: str, count: int, *args: str, env: dict | None = None) -> list[Worker]:
        fresh = []
        for _ in range(count):
            worker = Worker(broker.url, broker.worker_key,
                            ["--model", model, "--wait", "2", "--status-interval", "1", *args],
                            env={"PYTHONPATH": str(Path(__file__).resolve().parents[2]), **(env or {})},
                            log_dir=self.log_dir / f"worker-{len(self.started)}")
            self.started.append(worker)
            fresh.append(worker.start(timeout=120))
        return fresh

    def stop_all(self) -> None:
        for worker in self.started:
            if worker.alive():
                worker.send(signal.SIGCONT)  # in case a test left it frozen
                worker.send(signal.SIGTERM)
        for worker in self.started:
            worker.stop(timeout=20)


@pytest.fixture
def start_workers(tmp_path):
    """start_workers(broker, model, count, *args, env=None) -> [Worker]; every one is stopped afterwards."""
    pool = WorkerPool(tmp_path)
    yield pool.start
    pool.stop_all()


def submit_many(broker: Broker, model: str, payloads: list[bytes], params: list[dict] | None = None,
                clients: int = 8, latencies: list[float] | None = None, keys: list[str] | None = None) -> list[str]:
    """Submit every payload (raw bytes, with its params and Idempotency-Key) through `clients` concurrent
    sessions; the ids in order.

    Each submit's latency (seconds) is appended to `latencies` when given.
    """
    sessions = [requests.Session() for _ in range(clients)]

    def one(index: int) -> str:
        query = f"/predict?model={model}"
        if params:
            query += "&params=" + requests.utils.quote(json.dumps(params[index]))
        headers = {"Content-Type": "application/octet-stream"}
        if keys:
            headers["Idempotency-Key"] = keys[index]
        started = time.perf_counter()
        response = sessions[index % clients].post(broker.url + query, data=payloads[index], timeout=60,
                                                  headers=headers)
        if latencies is not None:
            latencies.append(time.perf_counter() - started)
        assert response.status_code == 202, response.text
        return response.json()["task_id"]

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(len(payloads))))


def final_results(broker: Broker, ids: list[str], timeout: float, threads: int = 8) -> dict[str, requests.Response]:
    """Each task's final getresult answer (not 202, not a passing 503), long-polling; fails after `timeout`."""
    return polling.final_results(broker.url, ids, timeout, threads)


def statuses(broker: Broker, ids: list[str], threads: int = 8) -> dict[str, dict]:
    session = requests.Session()
    with ThreadPoolExecutor(threads) as pool:
        answers = pool.map(lambda t: session.get(f"{broker.url}/status?task_id={t}", timeout=60), ids)
        return {task_id: answer.json() for task_id, answer in zip(ids, answers)}
