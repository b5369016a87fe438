"""Storage stopped and restarted mid-test: 503 with a JSON error meanwhile, recovery without restarts."""

import pytest

from devstack.services import Azurite
from tests.conftest import Broker


@pytest.fixture
def own_storage(tmp_path):
    service = Azurite(location=tmp_path / "data", log_dir=tmp_path).start()
    yield service
    service.stop()


def test_routes_answer_503_while_storage_is_down_and_recover(own_storage, start_broker, model):
    broker: Broker = start_broker(connection_string=own_storage.connection_string)
    before = broker.submit(model, b"submitted before the outage")
    assert broker.get("/health").json() == {"status": "ok"}

    own_storage.stop()
    answers = {
        "health": broker.get("/health"),
        "predict": broker.post(f"/predict?model={model}", data=b"x"),
        "status": broker.get(f"/status?task_id={before}"),
        "getresult": broker.get(f"/getresult?task_id={before}&wait=2"),
        "getnexttask": broker.get(f"/getnexttask?model={model}&wait=2", headers=broker.worker),
        "stats": broker.get("/stats", headers=broker.worker),
        "cancel": broker.post(f"/cancel?task_id={before}"),
    }
    for name, response in answers.items():
        assert response.status_code == 503, name
        assert response.headers["Content-Type"].startswith("application/json"), name
        assert response.json() == {"error": "storage is unavailable right now; retry shortly"}, name
        assert response.elapsed.total_seconds() < 30, name  # bounded: never a hung request
    assert "Traceback" not in broker.host.log_text()

    own_storage.start()  # same ports, same data
    assert broker.get("/health").status_code == 200
    [task] = broker.claim(model, wait=10)
    assert task["task_id"] == before  # the task submitted before the outage is still there
    assert broker.put(task, b"done").status_code == 200
    assert broker.get(f"/getresult?task_id={before}").content == b"done"
    after = broker.submit(model, b"after")
    assert broker.claim(model, wait=10)[0]["task_id"] == after


def test_storage_that_never_answers_is_503(start_broker):
    # A port where nothing listens: the connection is refused.
    dead = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
            "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;")
    broker = start_broker(connection_string=dead)
    response = broker.get("/health")
    assert response.status_code == 503 and "error" in response.json()


def test_missing_storage_setting_is_a_clear_503(start_broker):
    broker = start_broker(connection_string=" ")
    response = broker.get("/health")
    assert response.status_code == 503
    assert "no storage configured" in response.json()["error"]
