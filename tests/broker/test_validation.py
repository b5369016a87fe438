"""Malformed ids and numbers are 400 before storage is touched; methods a route does not list are 405."""

import pytest

from tests.support.routes import METHODS

BAD_IDS = ["", "0" * 31, "0" * 33, "G" * 32, "A" * 32, "../../etc/passwd", "%00" + "0" * 29, "0" * 32 + "%00",
           "0" * 16 + "%2F" + "0" * 13, "é" * 32, "\u202e" + "0" * 31]


@pytest.mark.parametrize("path, methods", METHODS.items())
def test_unlisted_methods_are_405(broker, path, methods):
    for method in {"GET", "POST", "PUT", "DELETE", "PATCH"} - methods:
        response = broker.session.request(method, broker.url + path, headers=broker.worker, timeout=30)
        assert response.status_code == 405, method
        assert "accepts" in response.json()["error"]
        assert set(response.headers["Allow"].split(", ")) == methods


@pytest.mark.parametrize("task_id", BAD_IDS)
def test_malformed_task_ids_are_400(broker, task_id):
    for method, path in (("GET", "/getresult"), ("GET", "/status"), ("POST", "/cancel"),
                         ("POST", "/extendlease"), ("POST", "/puttaskresult")):
        response = broker.session.request(method, f"{broker.url}{path}?task_id={task_id}&lease=x&seconds=5",
                                          headers=broker.worker, timeout=30)
        assert response.status_code == 400, (path, task_id)
        assert response.json()["error"] == "task_id must be 32 lowercase hexadecimal characters"


@pytest.mark.parametrize("query", ["max_tasks=0", "max_tasks=33", "max_tasks=1.5", "max_tasks=abc", "wait=-1",
                                   "wait=61", "lease=4", "lease=3601", "lease=99999999999999999999", "wait=1e1"])
def test_out_of_range_claim_numbers_are_400(broker, query):
    response = broker.get(f"/getnexttask?model=m&{query}", headers=broker.worker)
    assert response.status_code == 400 and "must be an integer from" in response.json()["error"]


def test_claim_needs_a_valid_model(broker):
    for query in ("", "model=", "model=UPPER", "model=" + "a" * 41):
        assert broker.get(f"/getnexttask?{query}", headers=broker.worker).status_code == 400


@pytest.mark.parametrize("query", ["wait=61", "wait=-1", "wait=x", "format=xml"])
def test_bad_getresult_parameters_are_400(broker, query):
    assert broker.get(f"/getresult?task_id={'0' * 32}&{query}").status_code == 400


@pytest.mark.parametrize("seconds", ["", "-1", "3601", "x"])
def test_bad_extend_seconds_are_400(broker, model, seconds):
    broker.submit(model)
    [task] = broker.claim(model)
    response = broker.post(f"/extendlease?task_id={task['task_id']}&lease={task['lease']}&seconds={seconds}",
                           headers=broker.worker)
    assert response.status_code == 400


def test_unknown_route_is_404_json(broker):
    response = broker.get("/nope")
    assert response.status_code == 404 and "error" in response.json()


def test_body_on_a_get_is_ignored(broker):
    response = broker.session.get(broker.url + "/health", data=b"x" * 10000, timeout=30)
    assert response.status_code == 200
