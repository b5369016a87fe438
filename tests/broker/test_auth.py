"""Keys: worker routes need a worker key, client routes a client key when configured, never crossed."""

import pytest

from tests.conftest import CLIENT_KEY, WORKER_KEY
from tests.support.routes import CLIENT_ROUTES, WORKER_ROUTES


def one_off(key: str) -> str:
    return key[:-1] + ("x" if key[-1] != "x" else "y")


def call(broker, method, path, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return broker.session.request(method, broker.url + path, headers=headers, data=b"abc", timeout=30)


@pytest.fixture(scope="module")
def keyed(start_broker):
    return start_broker({"BROKER_CLIENT_KEYS": f"{CLIENT_KEY},second-client-key"})


@pytest.mark.parametrize("method, path", WORKER_ROUTES)
@pytest.mark.parametrize("key", [None, "", "wrong", CLIENT_KEY, one_off(WORKER_KEY), WORKER_KEY + "x"])
def test_worker_routes_refuse_anything_but_a_worker_key(broker, method, path, key):
    response = call(broker, method, path, key)
    assert response.status_code == 401
    assert response.json() == {"error": "a valid worker key is required (Authorization: Bearer <key>)"}
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("method, path", WORKER_ROUTES)
def test_worker_routes_accept_a_worker_key(broker, method, path):
    assert call(broker, method, path, WORKER_KEY).status_code in (200, 204, 400)


def test_other_scheme_is_refused(broker):
    response = broker.get("/stats", headers={"Authorization": f"Basic {WORKER_KEY}"})
    assert response.status_code == 401


@pytest.fixture(scope="module")
def closed(start_broker):
    return start_broker({"BROKER_WORKER_KEYS": ""})


@pytest.mark.parametrize("method, path", WORKER_ROUTES)
def test_worker_routes_are_closed_when_no_worker_key_is_configured(closed, method, path):
    for key in (None, "anything", WORKER_KEY):
        response = call(closed, method, path, key)
        assert response.status_code == 503 and response.json() == {"error": "no worker key configured"}


@pytest.mark.parametrize("method, path", CLIENT_ROUTES)
@pytest.mark.parametrize("key", [None, "wrong", WORKER_KEY, one_off(CLIENT_KEY)])
def test_client_routes_need_a_client_key_when_configured(keyed, method, path, key):
    response = call(keyed, method, path, key)
    assert response.status_code == 401
    assert response.json() == {"error": "a valid client key or token is required (Authorization: Bearer <key or token>)"}


@pytest.mark.parametrize("key", [CLIENT_KEY, "second-client-key"])
def test_client_routes_accept_any_configured_client_key(keyed, model, key):
    headers = {"Authorization": f"Bearer {key}"}
    response = keyed.post(f"/predict?model={model}", data=b"abc", headers=headers)
    assert response.status_code == 202
    task_id = response.json()["task_id"]
    assert keyed.get(f"/status?task_id={task_id}", headers=headers).status_code == 200
    assert keyed.get(f"/getresult?task_id={task_id}", headers=headers).status_code == 202
    assert keyed.post(f"/cancel?task_id={task_id}", headers=headers).status_code == 200


def test_client_key_is_not_a_worker_key_on_a_keyed_broker(keyed):
    assert call(keyed, "GET", "/stats", CLIENT_KEY).status_code == 401
    assert call(keyed, "GET", "/stats", WORKER_KEY).status_code == 200


def test_client_routes_are_open_without_client_keys(broker, model):
    assert broker.post(f"/predict?model={model}", data=b"abc").status_code == 202


@pytest.mark.parametrize("path", ["/health", "/demo"])
def test_operational_routes_are_open(keyed, path):
    assert keyed.get(path).status_code in (200, 404)  # /demo is 404 only when the page is not present


def test_no_key_appears_in_answers_or_logs(keyed, broker, model):
    answers = [call(keyed, "GET", "/stats", "wrong").text, call(keyed, "POST", "/predict?model=m", "bad").text,
               keyed.get("/demo").text, broker.get("/demo").text]
    logs = keyed.host.log_text() + broker.host.log_text()
    for secret in (WORKER_KEY, CLIENT_KEY, "second-client-key", "AccountKey", "Eby8vdM02"):
        assert all(secret not in text for text in answers), secret
        assert secret not in logs, secret
