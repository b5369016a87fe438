"""The dev host: settings precedence, timer schedules, and long-polls that do not block others."""

import json
import threading

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
