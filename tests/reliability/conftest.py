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

from devstack.services import Azurite
from devstack.worker import Worker
from tests.conftest import Broker

FIGURES: dict[str, dict] = {}
FIGURES_FILE = Path(os.environ.get("RELIABILITY_FIGURES", "/tmp/reliability-figures.json"))
TERMINAL = ("succeeded", "failed", "cancelled")


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


@pytest.fixture
def start_workers(tmp_path):
    """start_workers(broker, model, count, *args, env=None) -> [Worker]; every one is stopped afterwards."""
    started: list[Worker] = []

    def start(broker: Broker, model: str, count: int, *args: str, env: dict | None = None) -> list[Worker]:
        fresh = []
        for _ in range(count):
            worker = Worker(broker.url, broker.worker_key,
                            ["--model", model, "--wait", "2", "--status-interval", "1", *args],
                            env={"PYTHONPATH": str(Path(__file__).resolve().parents[2]), **(env or {})},
                            log_dir=tmp_path / f"worker-{len(started)}")
            started.append(worker)
            fresh.append(worker.start(timeout=120))
        return fresh

    yield start
    for worker in started:
        if worker.alive():
            worker.send(signal.SIGTERM)
    for worker in started:
        worker.stop(timeout=20)


def submit_many(broker: Broker, model: str, payloads: list[bytes], params: dict | None = None,
                clients: int = 8) -> list[str]:
    """Submit every payload (raw bytes) through `clients` concurrent sessions; returns the task ids in order."""
    query = f"/predict?model={model}" + (f"&params={requests.utils.quote(json.dumps(params))}" if params else "")
    sessions = [requests.Session() for _ in range(clients)]

    def one(index: int) -> str:
        response = sessions[index % clients].post(broker.url + query, data=payloads[index], timeout=60,
                                                  headers={"Content-Type": "application/octet-stream"})
        assert response.status_code == 202, response.text
        return response.json()["task_id"]

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(len(payloads))))


def wait_finished(broker: Broker, ids: list[str], timeout: float, threads: int = 8) -> dict[str, dict]:
    """Status documents of all tasks once every one is terminal; fails listing the stragglers after `timeout`."""
    deadline = time.monotonic() + timeout
    pending = list(ids)
    done: dict[str, dict] = {}
    session = requests.Session()
    with ThreadPoolExecutor(threads) as pool:
        while pending and time.monotonic() < deadline:
            statuses = list(pool.map(lambda t: session.get(f"{broker.url}/status?task_id={t}", timeout=60), pending))
            for task_id, response in zip(pending, statuses):
                if response.status_code == 200 and response.json()["status"] in TERMINAL:
                    done[task_id] = response.json()
                else:
                    assert response.status_code in (200, 503), (task_id, response.status_code, response.text)
            pending = [t for t in pending if t not in done]
            if pending:
                time.sleep(0.5)
    assert not pending, f"{len(pending)} of {len(ids)} tasks did not finish within {timeout} s, e.g. " \
                        f"{[broker.get(f'/status?task_id={t}').text for t in pending[:3]]}"
    return done


def results(broker: Broker, ids: list[str], threads: int = 8) -> dict[str, requests.Response]:
    session = requests.Session()
    with ThreadPoolExecutor(threads) as pool:
        answers = pool.map(lambda t: session.get(f"{broker.url}/getresult?task_id={t}", timeout=60), ids)
        return dict(zip(ids, answers))
