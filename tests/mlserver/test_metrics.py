"""The worker's Prometheus endpoint (--metrics-port): what it did, scraped over HTTP as a scraper would."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import requests

from tests.support.polling import wait_for

from .conftest import result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(mlserver_\S+) (\S+)$", text, re.M)}


def test_the_worker_serves_its_figures_for_prometheus(broker, model, start_worker):
    port = free_port()
    ids = [broker.submit(model, f"task {i}".encode(), "text/plain") for i in range(3)]
    slow = broker.submit(model, b"slow", "text/plain", params={"params": json.dumps({"sleep_ms": 6000})})
    failing = broker.submit(model, b"x", params={"params": json.dumps({"fail": "no good"})})
    worker = start_worker(model, "--handler", "echo", "--batch", "4", "--lease", "5", "--idle-after", "2",
                          "--metrics-port", str(port))
    for task_id in [*ids, slow]:
        assert result(broker, task_id).status_code == 200
    assert result(broker, failing).status_code == 422
    assert f"metrics on http://127.0.0.1:{port}/metrics" in worker.log_text()

    figures = wait_for(lambda: (f := scrape(port)) and f['mlserver_tasks_total{outcome="done"}'] == 4 and f,
                       timeout=20, what="the done count")
    assert figures['mlserver_tasks_total{outcome="failed"}'] == 1
    assert figures["mlserver_queue_wait_seconds_count"] >= 5  # every task that reached the model
    assert figures["mlserver_batch_size_count"] >= 2 and 0 < figures["mlserver_batch_fill_ratio"] <= 1
    assert figures['mlserver_lease_renewals_total{result="renewed"}'] >= 1  # the slow task outlived half its lease
    # (renewed from 2.5 s on: 2.5 s for the heartbeat to do it before the lease would run out)
    assert figures["mlserver_images_per_second"] > 0
    wait_for(lambda: scrape(port)["mlserver_idle"] == 1.0, timeout=30, what="the worker watching storage while idle")


def test_metrics_need_prometheus_client_or_the_worker_says_what_to_install(broker, model):
    """Without prometheus-client the worker stops at once with one line (exit 2), before loading a model."""
    import subprocess
    import sys

    script = ("import sys, builtins\nreal = builtins.__import__\n"
              "def fake(name, *a, **k):\n    if name.startswith('prometheus_client'): raise ImportError(name)\n"
              "    return real(name, *a, **k)\nbuiltins.__import__ = fake\n"
              "from mlserver.__main__ import main\nsys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", script, "--model", model, "--handler", "echo", "--metrics-port", "0"],
                          env={"BROKER_URL": broker.url, "BROKER_WORKER_KEY": "k", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2, done.stderr
    assert "pip install prometheus-client" in done.stderr
