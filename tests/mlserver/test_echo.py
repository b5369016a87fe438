"""The echo handler end to end: batches, content types, a failing task among survivors."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.support.polling import wait_for

from .conftest import result


def test_many_tasks_come_back_unchanged_in_batches(broker, model, start_worker):
    kinds = ["image/png", "text/plain; charset=utf-8", "application/octet-stream", "application/x-custom+json"]
    sent = {}
    for i in range(40):
        payload = os.urandom(16) + f"task {i}".encode() * (i + 1)
        sent[broker.submit(model, payload, kinds[i % len(kinds)])] = (payload, kinds[i % len(kinds)])
    worker = start_worker(model, "--handler", "echo", "--batch", "8")

    for task_id, (payload, kind) in sent.items():
        response = result(broker, task_id)
        assert response.status_code == 200, response.text
        assert response.content == payload
        assert response.headers["Content-Type"] == kind
        assert broker.status(task_id)["attempts"] == 1
    # All 40 were queued before the worker started, so it must have claimed them in full batches.
    # (The work may be over before the first status line: wait for it.)
    wait_for(lambda: "batch fill" in worker.log_text(), timeout=10, what="a status line")
    fills = [float(f) for f in re.findall(r"batch fill ([\d.]+)/8", worker.log_text())]
    assert max(fills) > 1, worker.log_text()


def test_a_failing_task_fails_alone_and_its_batch_survives(broker, model, start_worker):
    ids = [broker.submit(model, f"survivor {i}".encode(), "text/plain") for i in range(3)]
    poison = broker.submit(model, b"poison", "text/plain", params={"params": json.dumps({"fail": "simulated failure"})})
    ids += [broker.submit(model, f"survivor {i}".encode(), "text/plain") for i in range(3, 6)]
    worker = start_worker(model, "--handler", "echo", "--batch", "8")

    failed = result(broker, poison)
    assert failed.status_code == 422, failed.text
    assert failed.json()["error"] == "simulated failure"
    assert failed.json()["attempts"] == 1  # not retryable: failed at once, not requeued
    for i, task_id in enumerate(ids):
        response = result(broker, task_id)
        assert response.status_code == 200 and response.content == f"survivor {i}".encode()
    assert "one by one" in worker.log_text()


def test_a_bad_param_fails_that_task_with_one_sentence(broker, model, start_worker):
    bad = broker.submit(model, b"x", params={"params": json.dumps({"sleep_ms": "soon"})})
    good = broker.submit(model, b"y")
    start_worker(model, "--handler", "echo", "--batch", "4")
    assert result(broker, bad).json()["error"] == "params.sleep_ms must be a number of milliseconds from 0 to 3600000"
    assert result(broker, good).content == b"y"


def test_a_retryable_failure_is_retried_until_the_broker_gives_up(start_broker, model, start_worker):
    strict = start_broker({"BROKER_MAX_ATTEMPTS": "2"})
    flaky = strict.submit(model, b"x", params={"params": json.dumps({"fail": "GPU busy", "retryable": True})})
    start_worker(model, "--handler", "echo", "--batch", "2", via=strict)
    failed = result(strict, flaky)
    assert failed.status_code == 422
    assert (failed.json()["error"], failed.json()["attempts"]) == ("gave up after 2 attempts: GPU busy", 2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OS thread names are read from /proc")
def test_the_worker_threads_carry_their_names_at_the_os_level(broker, model, start_worker):
    worker = start_worker(model, "--handler", "echo")
    assert result(broker, broker.submit(model, b"named")).content == b"named"  # an upload thread has run
    names = {(task / "comm").read_text().strip() for task in Path(f"/proc/{worker.proc.pid}/task").iterdir()}
    assert {"mls:fetch", "mls:heartbeat", "mls:status", "mls:report_0"} <= names, names
