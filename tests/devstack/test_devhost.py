"""The dev host: settings precedence, timer schedules, and long-polls that do not block others."""

import json
import socket
import threading
import time
import urllib.parse

import pytest
import requests

from devstack.devhost import load_local_settings, schedule_seconds
from tests.support.polling import wait_for


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


def test_stopping_cuts_long_polls_short_without_a_traceback(start_broker, azurite, model):
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
    wait_for(lambda: f"/tasks-{model}/messages" in azurite.log_text(), timeout=30, what="the long-poll's first look")
    assert poller.is_alive()
    broker.host.stop(timeout=20)
    poller.join(30)
    log = broker.host.log_text()
    assert "cut short by shutdown: GET /api/getnexttask" in log, log
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log
    if answers:  # the answer may or may not make it out before the socket closes
        assert answers[0].status_code == 503


# ---- what a hostile client can make the dev host hold ------------------------------------------

def _connect(broker):
    url = urllib.parse.urlsplit(broker.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=20)
    return sock


def _read_response(sock) -> tuple[int, dict, bytes]:
    """One HTTP response read off the socket: (status, headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _closed_by_server(sock) -> bool:
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _send_chunked_head(sock, path, headers=""):
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{headers}\r\n".encode())


def _send_chunks(sock, count, size=65536) -> int:
    sent = 0
    chunk = f"{size:x}\r\n".encode() + b"x" * size + b"\r\n"
    try:
        for _ in range(count):
            sock.sendall(chunk)
            sent += size
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


@pytest.fixture(scope="module")
def guarded(start_broker):
    """A dev host with small limits, so that tests can reach them."""
    return start_broker({"BROKER_CLIENT_KEYS": "guarded-client-key", "BROKER_MAX_PAYLOAD_BYTES": "100000"},
                        host_args=["--header-timeout", "1", "--body-timeout", "2", "--max-connections", "12",
                                   "--max-header-bytes", "16384"])


@pytest.mark.parametrize("path, headers, status", [
    ("/api/stats", "", 405),  # a method the route does not take
    ("/api/predict?model=m", "", 401),  # a client route without the client key
    ("/api/getnexttask?model=m", "", 401),  # a worker route without the worker key
])
def test_method_and_key_are_checked_before_the_body_is_read(guarded, path, headers, status):
    """A 300 MiB chunked body is refused after its first megabyte: the answer does not wait for the rest."""
    with _connect(guarded) as sock:
        _send_chunked_head(sock, path, headers)
        _send_chunks(sock, 16)
        code, head, body = _read_response(sock)
        assert code == status and json.loads(body)["error"], body
        assert head["content-type"].startswith("application/json")
        assert _closed_by_server(sock)


def test_the_body_is_capped_while_it_streams(guarded, model):
    with _connect(guarded) as sock:
        _send_chunked_head(sock, f"/api/predict?model={model}", "Authorization: Bearer guarded-client-key\r\n")
        sent = _send_chunks(sock, 4800)  # 300 MiB, if the host kept reading
        code, _, body = _read_response(sock)
    assert code == 413 and "larger than" in json.loads(body)["error"]
    assert sent < 300 * 1024 * 1024


def test_an_oversize_header_is_431_in_json(guarded):
    with _connect(guarded) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            while sent < 8 * 1024 * 1024:  # the host answers and hangs up long before
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        code, head, body = _read_response(sock)
    assert sent < 8 * 1024 * 1024
    assert code == 431 and "headers" in json.loads(body)["error"]


def test_slow_headers_and_slow_bodies_are_cut_off(guarded):
    socks = [_connect(guarded) for _ in range(6)]
    try:
        for sock in socks[:3]:
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        for sock in socks[3:]:
            sock.sendall(b"POST /api/predict?model=m HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                         b"Authorization: Bearer guarded-client-key\r\n\r\nxx")  # a body that never comes
        assert all(_closed_by_server(sock) for sock in socks[:3])
        for sock in socks[3:]:
            code, _, body = _read_response(sock)
            assert code == 408 and json.loads(body)["error"]
    finally:
        for sock in socks:
            sock.close()
    assert guarded.get("/health").status_code == 200


def test_connections_past_the_limit_get_503_in_json(guarded):
    socks = [_connect(guarded) for _ in range(12)]
    try:
        with _connect(guarded) as extra:
            extra.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
            code, head, body = _read_response(extra)
        assert code == 503 and json.loads(body)["error"] and head.get("retry-after")
    finally:
        for sock in socks:
            sock.close()
    time.sleep(0.2)
    assert guarded.get("/health").status_code == 200


@pytest.mark.parametrize("raw, status", [
    (b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
    (b"GET /api/health HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
])
def test_every_error_is_json(guarded, raw, status):
    with _connect(guarded) as sock:
        sock.sendall(raw)
        code, head, body = _read_response(sock)
    assert code == status and head["content-type"].startswith("application/json"), (code, head, body)
    assert json.loads(body)["error"]


def test_a_client_refused_mid_upload_still_reads_the_answer(guarded, model):
    """An HTTP client sending a large body without the key gets the 401, not a broken connection."""
    response = requests.post(f"{guarded.url}/predict?model={model}", data=b"x" * (64 * 1024 * 1024), timeout=60)
    assert response.status_code == 401 and "client key" in response.json()["error"]


def test_the_header_deadline_holds_for_every_request_on_a_connection(guarded):
    """Slowloris on a keep-alive connection: after one complete request, the next one's headers trickle in."""
    with _connect(guarded) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(sock)[0] == 200
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):  # a byte now and then, each well inside any idle timeout
            time.sleep(0.6)
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                break
        assert _closed_by_server(sock)


def test_an_unknown_method_is_405_in_json(guarded):
    for method in ("TRACE", "PROPFIND"):
        with _connect(guarded) as sock:
            sock.sendall(f"{method} /api/health HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            code, head, body = _read_response(sock)
        assert code == 405 and head["content-type"].startswith("application/json") and json.loads(body)["error"]
        assert head["x-content-type-options"] == "nosniff"


def test_each_invocation_is_logged_as_the_functions_host_logs_it(broker, model):
    """`Executed 'Functions.<name>' (Succeeded|Failed, Id=<uuid>, Duration=<n>ms)`: execution time can be
    summed from the log (bench/idle.py), as from the Functions host's."""
    import re

    before = len(broker.host.log_text())
    broker.get(f"/getnexttask?model={model}&wait=1", headers=broker.worker)  # held about a second
    broker.get("/stats")  # refused before the body (no key): still an invocation of the app's code
    line = re.compile(r"Executed 'Functions\.(\w+)' \((Succeeded|Failed), Id=[0-9a-f-]{36}, Duration=(\d+)ms\)")
    deadline = time.monotonic() + 10
    while ("stats", "Succeeded") not in _names(line.findall(broker.host.log_text()[before:])) and time.monotonic() < deadline:
        time.sleep(0.05)
    found = line.findall(broker.host.log_text()[before:])
    # Another test's long-poll may end in this window and log its own line; ours is the
    # getnexttask logged last before the stats call (which was made after ours returned).
    names = _names(found)
    assert ("stats", "Succeeded") in names
    ours = [entry for entry in found[: names.index(("stats", "Succeeded"))] if entry[0] == "getnexttask"]
    assert ours and ours[-1][1] == "Succeeded"
    assert int(ours[-1][2]) >= 900  # the long-poll's second is in its duration


def _names(found):
    return [(name, outcome) for name, outcome, _ in found]
