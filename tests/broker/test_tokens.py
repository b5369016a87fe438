"""Access a web page can use: scoped, short-lived tokens; tasks private to their owner; rate limits and
quotas held across instances. Real dev hosts over HTTP, on the session's Azurite."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from clients import BrokerClient
from tests.conftest import CLIENT_KEY
from tests.support.polling import wait_for
from tests.support.relay import Relay

OTHER_KEY = "another-client-key-0123456789"


def bearer(value: str) -> dict:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture(scope="module")
def keyed(start_broker):
    return start_broker({"BROKER_CLIENT_KEYS": f"{CLIENT_KEY},{OTHER_KEY}"})


def mint(broker, key: str = CLIENT_KEY, **request) -> dict:
    answer = broker.post("/token", json={"models": ["m-default"], **request}, headers=bearer(key))
    assert answer.status_code == 201, answer.text
    return answer.json()


def submit(broker, model: str, credential: str, payload: bytes = b"x"):
    return broker.post(f"/predict?model={model}", data=payload, headers=bearer(credential))


def test_a_token_submits_only_to_its_models_and_sees_its_tasks(keyed, model):
    minted = mint(keyed, models=[model], expires_in=120, max_tasks=5)
    assert set(minted) == {"token", "token_id", "expires_at", "models", "max_tasks"}
    assert minted["token"].startswith("tok_") and minted["models"] == [model] and minted["max_tasks"] == 5
    token = minted["token"]
    answer = submit(keyed, model, token)
    assert answer.status_code == 202
    task_id = answer.json()["task_id"]
    assert keyed.get(f"/status?task_id={task_id}", headers=bearer(token)).status_code == 200
    assert keyed.get(f"/getresult?task_id={task_id}", headers=bearer(token)).status_code == 202
    other = submit(keyed, model + "-x", token)
    assert other.status_code == 403 and other.json()["error"] == f"this token does not cover model {model}-x"
    assert keyed.get(f"/status?task_id={task_id}", headers=bearer(CLIENT_KEY)).status_code == 200  # its minter's


def test_a_token_submits_at_most_max_tasks(keyed, model):
    token = mint(keyed, models=[model], max_tasks=2)["token"]
    assert [submit(keyed, model, token).status_code for _ in range(3)] == [202, 202, 429]
    over = submit(keyed, model, token)
    assert over.status_code == 429 and "quota of 2 tasks is used up" in over.json()["error"]


def test_tokens_that_are_forged_expired_or_revoked_are_401(keyed, start_broker, lease_secret, model):
    token = mint(keyed, models=[model], expires_in=1)["token"]
    body, _, mac = token.removeprefix("tok_").partition(".")
    raw = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[2] = [model, "someone-elses-model"]  # widen it: the signature no longer matches
    forged = "tok_" + base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=") + "." + mac
    for credential, why in ((forged, "not one this broker issued"), ("tok_garbage", "not one this broker issued")):
        answer = submit(keyed, model, credential)
        assert answer.status_code == 401 and why in answer.json()["error"], answer.text
    time.sleep(1.5)
    expired = submit(keyed, model, token)
    assert expired.status_code == 401 and expired.json()["error"] == "the token has expired"

    second = start_broker({"BROKER_CLIENT_KEYS": CLIENT_KEY})  # another instance of the same app
    live = mint(keyed, models=[model], expires_in=600)
    assert submit(second, model, live["token"]).status_code == 202
    assert keyed.post("/revoke", json={"token": live["token"]}, headers=bearer(OTHER_KEY)).status_code == 404
    revoked = keyed.post("/revoke", json={"token": live["token"]}, headers=bearer(CLIENT_KEY))
    assert revoked.status_code == 200 and revoked.json() == {"token_id": live["token_id"], "revoked": True}
    assert submit(keyed, model, live["token"]).json()["error"] == "the token was revoked"
    wait_for(lambda: submit(second, model, live["token"]).status_code == 401, timeout=15,
             what="the other instance seeing the revocation")


def test_tokens_are_minted_with_a_key_on_a_keyed_broker_only(keyed, broker, model):
    token = mint(keyed, models=[model])["token"]
    assert keyed.post("/token", json={"models": [model]}, headers=bearer(token)).status_code == 403
    assert broker.post("/token", json={"models": [model]}).status_code == 400  # an open broker: nothing to scope
    for bad in ({"models": []}, {"models": ["Bad_Name"]}, {"models": [model], "expires_in": 86401},
                {"models": [model], "max_tasks": 0}, {"models": "x"}):
        assert keyed.post("/token", json=bad, headers=bearer(CLIENT_KEY)).status_code == 400, bad


def test_a_task_is_private_to_the_key_that_submitted_it_and_its_tokens(keyed, model):
    task_id = submit(keyed, model, CLIENT_KEY).json()["task_id"]
    mine = mint(keyed, CLIENT_KEY, models=[model])["token"]
    theirs = mint(keyed, OTHER_KEY, models=[model])["token"]
    for credential, seen in ((CLIENT_KEY, True), (mine, True), (OTHER_KEY, False), (theirs, False)):
        for method, path in (("GET", "/status"), ("GET", "/getresult"), ("POST", "/commit")):
            answer = keyed.session.request(method, f"{keyed.url}{path}?task_id={task_id}", headers=bearer(credential),
                                           timeout=30)
            if not seen:  # the same answer as for a task that does not exist
                assert answer.status_code == 404, (path, answer.text)
                assert answer.json()["error"] == "no task with that id exists (it may have expired)"
    assert keyed.post(f"/cancel?task_id={task_id}", headers=bearer(OTHER_KEY)).status_code == 404
    assert keyed.get(f"/status?task_id={task_id}", headers=bearer(CLIENT_KEY)).json()["status"] == "queued"
    assert keyed.post(f"/cancel?task_id={task_id}", headers=bearer(mine)).json()["status"] == "cancelled"
    assert keyed.get(f"/getresult?task_id={task_id}", headers=bearer(theirs)).status_code == 404  # finished too


def test_the_rate_limit_holds_across_instances_under_a_burst(start_broker):
    first = start_broker({"BROKER_CLIENT_KEYS": CLIENT_KEY, "BROKER_RATE_LIMIT": "40/hour"})
    second = start_broker({"BROKER_CLIENT_KEYS": CLIENT_KEY, "BROKER_RATE_LIMIT": "40/hour"})
    unknown = "0" * 32

    def ask(i: int):
        host = (first, second)[i % 2]
        return host.get(f"/status?task_id={unknown}", headers=bearer(CLIENT_KEY), timeout=60)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, range(100)))
    allowed = sum(1 for a in answers if a.status_code == 404)
    limited = [a for a in answers if a.status_code == 429]
    assert 36 <= allowed <= 44 and allowed + len(limited) == 100  # within 10 % of the limit (40)
    assert limited[0].json()["error"].startswith("over the rate limit of 40 requests a hour")
    assert 0 < int(limited[0].headers["Retry-After"]) <= 3600


def test_the_python_client_waits_out_a_429(start_broker):
    limited = start_broker({"BROKER_CLIENT_KEYS": CLIENT_KEY, "BROKER_RATE_LIMIT": "2/s"})
    relay = Relay(limited.host.port)
    try:
        with BrokerClient(relay.url(limited.url), CLIENT_KEY) as client:
            ids = [client.submit(f"payload {i}".encode(), "t-ratelimited") for i in range(6)]
        assert len(set(ids)) == 6  # every submit made it, each once (an Idempotency-Key each)
        assert relay.count(b"POST /api/predict") > 6  # the broker turned some away, and the client came back
    finally:
        relay.close()
