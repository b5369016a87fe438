"""The dev host: settings precedence, timer schedules, and long-polls that do not block others."""

import json
import socket
import threading
import time
import urllib.parse

import requests

from broker.devhost import load_local_settings, schedule_seconds


def test_local_settings_fill_only_unset_values(tmp_path, monkeypatch):
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": {
        "BROKER_MAX_ATTEMPTS": "7", "BROKER_WORKER_KEYS": "from-file", "BROKER_CLIENT_KEYS": "file-client",
        "BROKER_RESULT_TTL_SECONDS": ""}}))
    monkeypatch.setenv("BROKER_WORKER_KEYS", "from-env")
    monkeypatch.setenv("BROKER_CLIENT_KEYS", "")  # empty counts as unset
    monkeypatch.delenv("BROKER_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("BROKER_RESULT_TTL_SECONDS", raising=False)
    applied = load_local_settings(path)
    import os

    assert os.environ["BROKER_WORKER_KEYS"] == "from-env"
    assert os.environ["BROKER_MAX_ATTEMPTS"] == "7"
    assert os.environ["BROKER_CLIENT_KEYS"] == "file-client"
    assert "BROKER_RESULT_TTL_SECONDS" not in os.environ
    assert sorted(applied) == ["BROKER_CLIENT_KEYS", "BROKER_MAX_ATTEMPTS"]
    assert load_local_settings(tmp_path / "missing.json") == []


def test_schedule_periods():
    assert schedule_seconds("0 */5 * * * *") == 300
    assert schedule_seconds("*/30 * * * * *") == 30
    assert schedule_seconds("0 0 */2 * * *") == 7200
    assert schedule_seconds("0 30 9 * * 1-5") == 300  # not a plain period: the default


def test_a_long_poll_does_not_block_other_requests(broker, model):
    polls = []
    poller = threading.Thread(target=lambda: polls.append(broker.claim(model, wait=8)))
    poller.start()
    try:
        for _ in range(5):
            assert broker.get("/health").status_code == 200
            assert poller.is_alive()  # answered while the long-poll is still waiting
    finally:
        task_id = broker.submit(model)
        poller.join(30)
    assert polls and polls[0][0]["task_id"] == task_id


def test_content_types(broker):
    health = broker.get("/health")
    assert health.headers["Content-Type"] == "application/json; charset=utf-8"
    page = broker.get("/demo")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")


def test_a_client_gone_mid_body_is_no_error(broker, model):
    """A worker killed while posting its result leaves a half-sent body: the host shrugs, no traceback."""
    url = urllib.parse.urlsplit(broker.url)
    before = len(broker.host.log_text())
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(f"POST /api/predict?model={model} HTTP/1.1\r\nHost: x\r\n"
                     "Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n".encode()
                     + b"x" * 1000)
    deadline = time.monotonic() + 10
    while "client disconnected" not in broker.host.log_text()[before:] and time.monotonic() < deadline:
        time.sleep(0.05)
    log = broker.host.log_text()[before:]
    assert "client disconnected before its request body arrived: POST /api/predict" in log
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log
    assert broker.get("/health").status_code == 200


def test_stopping_cuts_long_polls_short_without_a_traceback(start_broker, model):
    """Ctrl-C on scripts/run while a worker long-polls: a one-line log, not a traceback per request."""
    broker = start_broker()
    answers = []

    def poll():
        try:
            answers.append(broker.get(f"/getnexttask?model={model}&wait=30", headers=broker.worker, timeout=60))
        except requests.ConnectionError:
            pass  # the host closed the connection as it went

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(1)
    assert poller.is_alive()
    broker.host.stop(timeout=20)
    poller.join(30)
    log = broker.host.log_text()
    assert "cut short by shutdown: GET /api/getnexttask" in log, log
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log
    if answers:  # the answer may or may not make it out before the socket closes
        assert answers[0].status_code == 503
