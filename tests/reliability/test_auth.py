"""Keys beyond tests/broker/test_auth.py: every route against near-miss keys on a broker with both key kinds,
and no secret in answers, logs, the demo page or the repository.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from devstack.services import ACCOUNT_KEY
from tests.conftest import CLIENT_KEY, WORKER_KEY
from tests.support.routes import CLIENT_ROUTES, WORKER_ROUTES

from .conftest import WorkerPool, final_results, record

ROOT = Path(__file__).resolve().parents[2]
SECOND_WORKER_KEY = "second-worker-key-abcdefghij"


def near_misses(key: str) -> list[str]:
    """The key with one character changed at the start, middle and end; cut short; lengthened; re-cased."""
    def change(i: int) -> str:
        return key[:i] + ("x" if key[i] != "x" else "y") + key[i + 1:]
    return [change(0), change(len(key) // 2), change(len(key) - 1), key[:-1], key + "x", key.upper(), f" {key}x"]


@pytest.fixture(scope="module")
def keyed(start_broker):
    return start_broker({"BROKER_WORKER_KEYS": f" {WORKER_KEY} , {SECOND_WORKER_KEY} ,",
                         "BROKER_CLIENT_KEYS": f"{CLIENT_KEY},second-client-key"})


def call(broker, method, path, authorization=None):
    headers = {"Authorization": authorization} if authorization is not None else {}
    bodies = {"/upload": b'{"size": 3}', "/token": b'{"models": ["m"]}', "/revoke": b'{"token": "tok_x.y"}'}
    body = next((b for prefix, b in bodies.items() if path.startswith(prefix)), b"abc")  # a body the route accepts
    return broker.session.request(method, broker.url + path, headers=headers, data=body, timeout=30)


def test_worker_routes_on_a_broker_with_client_keys_take_only_worker_keys(keyed):
    refused = [None, "", "Bearer", "Bearer ", f"Bearer {CLIENT_KEY}", "Bearer second-client-key", f"Basic {WORKER_KEY}",
               f"{WORKER_KEY}", f"Bearer {WORKER_KEY},{SECOND_WORKER_KEY}", f"Bearer {WORKER_KEY} x"]
    refused += [f"Bearer {k}" for k in near_misses(WORKER_KEY) + near_misses(SECOND_WORKER_KEY)]
    for method, path in WORKER_ROUTES:
        for authorization in refused:
            response = call(keyed, method, path, authorization)
            assert response.status_code == 401, (method, path, authorization, response.status_code)
            assert response.json()["error"].startswith("a valid worker key is required")
        for key in (WORKER_KEY, SECOND_WORKER_KEY):  # either configured key, any scheme case, padded
            for authorization in (f"Bearer {key}", f"bearer {key}", f"Bearer   {key}  "):
                assert call(keyed, method, path, authorization).status_code in (200, 204, 400), authorization
    # A key in the query string (the Functions host's ?code=) is not a key here.
    assert keyed.get(f"/stats?code={WORKER_KEY}").status_code == 401


def test_client_routes_take_only_client_keys_when_configured(keyed):
    for method, path in CLIENT_ROUTES:
        for key in [WORKER_KEY, SECOND_WORKER_KEY, *near_misses(CLIENT_KEY), "second-client-ke"]:
            response = call(keyed, method, path, f"Bearer {key}")
            assert response.status_code == 401, (method, path, key)
        # the right key gets past the check (400/404 about the request itself, never 401)
        assert call(keyed, method, path, f"Bearer {CLIENT_KEY}").status_code in (201, 202, 400, 404)


def test_keys_unconfigured_close_every_worker_route(start_broker):
    closed = start_broker({"BROKER_WORKER_KEYS": " , ,", "BROKER_CLIENT_KEYS": CLIENT_KEY})
    for method, path in WORKER_ROUTES:
        for authorization in (None, f"Bearer {WORKER_KEY}", f"Bearer {CLIENT_KEY}", "Bearer  "):
            response = call(closed, method, path, authorization)
            assert (response.status_code, response.json()) == (503, {"error": "no worker key configured"})


# ---- no secret anywhere ------------------------------------------------------------------------------------

STORAGE_SECRET = "c2VjcmV0LXN0b3JhZ2Uta2V5LWZvci10ZXN0cw=="


@pytest.fixture(scope="module")
def broken(start_broker):
    """A misconfigured broker: its storage account key is not valid base64, so no request can be signed."""
    bad_key = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
               f"AccountKey={STORAGE_SECRET[:-2]}!!;BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"
               "QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;")
    return start_broker({"BROKER_CLIENT_KEYS": CLIENT_KEY}, connection_string=bad_key)


def test_a_storage_key_that_cannot_sign_is_a_503_not_a_500(broken):
    """Like a missing storage setting (tests/broker/test_outage.py): misconfigured means 503, /health included."""
    # /token signs with BROKER_LEASE_SECRET and stores nothing (tokens are verified without storage),
    # so it works here; every route that needs storage is a 503 (/revoke too, given a real token).
    minted = call(broken, "POST", "/token", f"Bearer {CLIENT_KEY}")
    assert minted.status_code == 201, minted.text
    for method, path in [("GET", "/health"), *(route for route in CLIENT_ROUTES if route[1] not in ("/token", "/revoke"))]:
        response = call(broken, method, path, f"Bearer {CLIENT_KEY}")
        assert response.status_code == 503, (path, response.status_code, response.text)
        assert "error" in response.json()
    revoked = broken.session.post(broken.url + "/revoke", json={"token": minted.json()["token"]},
                                  headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=30)
    assert revoked.status_code == 503 and "error" in revoked.json()


def test_no_key_or_connection_string_in_answers_logs_or_the_demo_page(keyed, broken, tmp_path, model):
    answers = []
    # Real traffic: a real worker with the worker key, clients with right and wrong keys.
    pool = WorkerPool(tmp_path)
    try:
        worker = pool.start(keyed, model, 1, "--handler", "echo", "--batch", "2")[0]
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        ids = [keyed.post(f"/predict?model={model}", data=b"x", headers=headers).json()["task_id"] for _ in range(3)]
        keyed.session.headers.update(headers)
        try:
            answers += [r.text for r in final_results(keyed, ids, timeout=60).values()]
        finally:
            del keyed.session.headers["Authorization"]
    finally:
        pool.stop_all()
    for method, path in WORKER_ROUTES + CLIENT_ROUTES:
        for authorization in (f"Bearer {WORKER_KEY}x", f"Bearer {CLIENT_KEY}x", None):
            answers.append(call(keyed, method, path, authorization).text)
    answers += [keyed.get("/demo").text, call(keyed, "GET", "/demo", f"Bearer {WORKER_KEY}").text]

    for method, path in CLIENT_ROUTES + [("GET", "/health"), ("GET", "/stats")]:
        for authorization in (f"Bearer {CLIENT_KEY}", f"Bearer {WORKER_KEY}"):
            answers.append(call(broken, method, path, authorization).text)

    logs = keyed.host.log_text() + broken.host.log_text() + worker.log_text()
    secrets_ = [WORKER_KEY, SECOND_WORKER_KEY, CLIENT_KEY, "second-client-key", STORAGE_SECRET[:24], "AccountKey",
                ACCOUNT_KEY[:24]]
    for secret in secrets_:
        leaks = [a[:200] for a in answers if secret in a]
        assert leaks == [], (secret, leaks[:3])
        assert secret not in logs, (secret, logs[max(0, logs.find(secret) - 300):logs.find(secret) + 100])
    # The worker key travels in the environment, never on the command line (visible to every local user).
    assert all(WORKER_KEY not in arg for arg in worker.command())


SECRET_PATTERNS = {
    "storage account key": re.compile(r"AccountKey=([A-Za-z0-9+/]{40,}={0,2})"),
    "SAS signature": re.compile(r"[?&;]sig=[A-Za-z0-9%+/=]{20,}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "Functions key in a URL": re.compile(r"[?&]code=[A-Za-z0-9_\-]{30,}"),
    "AWS access key": re.compile(r"AKIA[0-9A-Z]{16}"),
    "GitHub token": re.compile(r"gh[pousr]_[A-Za-z0-9]{36}"),
    "Slack token": re.compile(r"xox[abprs]-[A-Za-z0-9-]{10,}"),
    "instrumentation key": re.compile(r"InstrumentationKey=[0-9a-f]{8}-(?!0000)"),
}


def test_the_repository_holds_no_secret():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    names = [f.decode() for f in files if f]
    assert "local.settings.json" not in names and "local.settings.json" in (ROOT / ".gitignore").read_text()
    found = []
    for name in names:
        path = ROOT / name
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        text = path.read_text(errors="replace")
        for label, pattern in SECRET_PATTERNS.items():
            for match in pattern.finditer(text):
                # Azurite's account key is public, documented and the same everywhere.
                if label == "storage account key" and match.group(1) == ACCOUNT_KEY:
                    continue
                found.append(f"{name}: {label}: {match.group(0)[:40]}")
    record("auth", repository_files_scanned=len(names))
    assert found == []
    assert len(names) > 50  # the scan saw the repository


def test_the_scan_would_catch_a_planted_secret(tmp_path):
    planted = "UseDevelopmentStorage=false;AccountKey=" + "A1b2" * 21 + "==;"
    assert SECRET_PATTERNS["storage account key"].search(planted)
    assert not any(p.search(f"AccountKey={ACCOUNT_KEY};") and n != "storage account key"
                   for n, p in SECRET_PATTERNS.items())
