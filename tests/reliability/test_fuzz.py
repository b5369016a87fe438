"""Fuzzing the dev host: schemathesis over openapi.yaml, then hand-written hostile requests.

Whatever comes in, the broker answers: no 5xx (storage is up, so not even the documented 503), no
hang, no dropped connection, an error body that is one JSON sentence, and it is healthy afterwards.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from tests.conftest import WORKER_KEY
from tests.support.routes import TASK_ROUTES

from .conftest import record

SPEC = Path(__file__).resolve().parents[2] / "openapi.yaml"
EXAMPLES = 400  # per generation mode
TIMEOUT = 30  # seconds: an answer later than this is a hang


@pytest.fixture(scope="module")
def target(start_broker):
    """A broker of its own, so its log shows only what the fuzzing did to it."""
    return start_broker({"BROKER_MAX_PAYLOAD_BYTES": "65536"})


class Tally:
    """Every answer checked the same way; problems are collected so one run shows them all."""

    def __init__(self) -> None:
        self.cases = 0
        self.server_errors = 0
        self.problems: list[str] = []

    def check(self, label: str, method: str, response: requests.Response | None, error: str | None = None) -> None:
        self.cases += 1
        if response is None:
            self.problems.append(f"{label}: no answer ({error})")
            return
        status = response.status_code
        if status >= 500:
            self.server_errors += 1
            self.problems.append(f"{label}: {status} {response.text[:200]}")
        elif status >= 400 and method != "HEAD":
            try:
                body = response.json()
                assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]
            except (ValueError, AssertionError):
                self.problems.append(f"{label}: {status} without a JSON error: {response.text[:200]!r}")

    def send(self, session: requests.Session, label: str, method: str, url: str, **kwargs) -> requests.Response | None:
        try:
            response = session.request(method, url, timeout=TIMEOUT, **kwargs)
        except requests.RequestException as exc:
            self.check(label, method, None, f"{type(exc).__name__}: {exc}")
            return None
        self.check(label, method, response)
        return response


def clamp_waits(case) -> None:
    """A long-poll with a valid wait would just wait (up to 60 s) on a model nobody submits to: keep it at 0."""
    if isinstance(case.query, dict) and case.path in ("/getnexttask", "/getresult"):
        wait = case.query.get("wait")
        if wait is None or (isinstance(wait, int) and not isinstance(wait, bool) and 0 <= wait <= 60):
            case.query["wait"] = 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_schemathesis_finds_no_server_error(target, mode):
    schema = schemathesis.openapi.from_path(SPEC)
    tally = Tally()
    session = requests.Session()
    seen_operations = set()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=schema.as_strategy(mode))
    def run(case):
        clamp_waits(case)
        seen_operations.add(f"{case.method} {case.path}")
        label = f"{case.method} {case.path} query={case.query!r} body={str(case.body)[:80]!r}"
        try:
            response = case.call(base_url=target.url, session=session, timeout=TIMEOUT,
                                 headers={"Authorization": f"Bearer {WORKER_KEY}"})
        except requests.RequestException as exc:
            tally.check(label, case.method, None, f"{type(exc).__name__}: {exc}")
            return
        tally.check(label, case.method, response)

    run()
    record(f"fuzz ({mode.value})", cases=tally.cases, server_errors=tally.server_errors,
           operations=len(seen_operations))
    assert tally.problems == [], "\n".join(tally.problems[:20])
    # Every operation was exercised (negative mode has nothing to break in /health and /demo: no inputs).
    assert len(seen_operations) == (17 if mode == GenerationMode.POSITIVE else 15), seen_operations
    assert_healthy(target)


# ---- hand-written hostile requests ----------------------------------------------------------------------

BAD_IDS = ["../../etc/passwd", "..%2F..%2Finbox", "%00", "0" * 31 + "%00", "0" * 32 + "%0A", "\u202e" * 32,
           "\x7f" * 32, "0" * 20_000, "0" * 32 + "/../" + "0" * 32, "０" * 32, "{task_id}"]
BAD_MODELS = ["../../x", "a" * 41, "a" * 20_000, "%00", "a%00b", "-a", "a-", "a--b", "UPPER", "ｍodel", "a b",
              "tasks/../x", "\u202eevil", "\x00"]
BAD_NUMBERS = ["-1", "-0", "+5", "99999999999999999999999", "1e9", "0x10", "NaN", "inf", "１", " 5", "5 ", "5.0",
               "-99999999999999999999", "\x00"]
NESTED = "[" * 2000 + "]" * 2000  # under the 4 KiB params limit, far deeper than any parser's recursion limit


def lease_token(fields) -> str:
    return base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")


def hostile_requests(model: str, task_id: str) -> list[tuple[str, str, str, dict]]:
    """(label, method, path and query, requests kwargs) for everything a stranger might send."""
    cases = []
    for bad in BAD_IDS:
        for method, path in TASK_ROUTES:
            cases.append((f"task_id {bad[:40]!r} on {path}", method, f"{path}?task_id={bad}&lease=x&seconds=5", {}))
    for bad in BAD_MODELS:
        cases.append((f"model {bad[:40]!r} on predict", "POST", f"/predict?model={bad}", {"data": b"x"}))
        cases.append((f"model {bad[:40]!r} on getnexttask", "GET", f"/getnexttask?model={bad}&wait=0", {}))
        cases.append((f"model {bad[:40]!r} in the JSON body", "POST", "/predict",
                      {"json": {"payload": "eA==", "model": bad}}))
    for bad in BAD_NUMBERS:
        for name in ("max_tasks", "wait", "lease"):  # (another model: a valid number would claim the task)
            cases.append((f"{name}={bad!r}", "GET", f"/getnexttask?model={model}-x&wait=0&{name}={bad}", {}))
        cases.append((f"getresult wait={bad!r}", "GET", f"/getresult?task_id={task_id}&wait={bad}", {}))
        cases.append((f"extendlease seconds={bad!r}", "POST", f"/extendlease?task_id={task_id}&lease=x&seconds={bad}", {}))
    # params: oversized, deeply nested, not an object, non-standard numbers
    for label, params in [("huge params", json.dumps({"x": "y" * 5000})), ("params null", "null"), ("params list", "[]"),
                          ("params number", "1e999"),
                          ("params NaN", '{"x": NaN}'), ("params Infinity", '{"x": -Infinity}'),
                          ("params not JSON", "{'x': 1}"), ("params control chars", '{"x": "\x00\x1b[31m"}')]:
        cases.append((label, "POST", f"/predict?model={model}&params={requests.utils.quote(params)}", {"data": b"x"}))
        cases.append((f"{label} in the JSON body", "POST", f"/predict?model={model}",
                      {"data": f'{{"payload": "eA==", "params": {params}}}'.encode(),
                       "headers": {"Content-Type": "application/json"}}))
    # bodies and content types
    json_type = {"Content-Type": "application/json"}
    for label, body in [("JSON body not an object", b"[1, 2]"),
                        ("JSON body not JSON", b"{payload:"), ("JSON body in UTF-16", '{"payload": "eA=="}'.encode("utf-16")),
                        ("JSON body with a BOM", b'\xef\xbb\xbf{"payload": "eA=="}'),
                        ("payload not base64", b'{"payload": "***"}'), ("payload a number", b'{"payload": 12}'),
                        ("payload empty", b'{"payload": ""}'), ("payload too large", json.dumps(
                            {"payload": base64.b64encode(b"x" * 70_000).decode()}).encode()),
                        ("content_type a dict", b'{"payload": "eA==", "content_type": {}}'),
                        ("model a list", b'{"payload": "eA==", "model": ["m"]}'),
                        ("huge number", b'{"payload": "eA==", "params": {"n": 1' + b"0" * 4000 + b"}}")]:
        cases.append((label, "POST", f"/predict?model={model}", {"data": body, "headers": json_type}))
    for label, kind in [("content type 300 chars", "a/" + "b" * 300), ("content type latin-1", "image/p\xe9g"),
                        ("content type with a tab", "image/png;\tx=\ty"), ("multipart", "multipart/form-data; boundary=x"),
                        ("JSON upper case", "APPLICATION/JSON; charset=utf-8")]:
        cases.append((label, "POST", f"/predict?model={model}",
                      {"data": b"\x00\x01binary", "headers": {"Content-Type": kind.encode("latin-1")}}))
    cases.append(("raw payload too large", "POST", f"/predict?model={model}", {"data": b"x" * 70_000}))
    cases.append(("empty raw payload", "POST", f"/predict?model={model}", {"data": b""}))
    for label, key in [("empty Idempotency-Key", ""), ("Idempotency-Key 201 chars", "k" * 201),
                       ("Idempotency-Key with a tab", "a\tb"), ("Idempotency-Key latin-1", "cl\xe9".encode("latin-1"))]:
        cases.append((label, "POST", f"/predict?model={model}", {"data": b"x", "headers": {"Idempotency-Key": key}}))
    # bodies on GETs, methods the routes do not list, odd paths
    for path in (f"/status?task_id={task_id}", f"/getresult?task_id={task_id}", "/health", "/stats", "/demo",
                 f"/getnexttask?model={model}-x&wait=0"):
        cases.append((f"GET {path.split('?')[0]} with a body", "GET", path, {"data": b"{" * 100_000}))
        for method in ("HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"):
            cases.append((f"{method} {path.split('?')[0]}", method, path, {}))
    for path in ("/", "/predict/extra", "/..%2Fpredict", "/%00", "/nosuchroute", "/" + "a" * 5000):
        cases.append((f"path {path[:40]!r}", "GET", path, {}))
    # lease tokens: malformed, and well-formed but lying about the task
    for label, token in [("token garbage", "!!!"), ("token not JSON", lease_token("x")[:-2] + "%%"),
                         ("token wrong arity", lease_token([task_id])), ("token a dict", lease_token({"a": 1})),
                         ("token nested", lease_token(json.loads("[" * 900 + "]" * 900))),
                         ("token other task", lease_token(["f" * 32, model, "m", "r", 1, 1.0, 1.0, None])),
                         ("token huge", "A" * 20_000)]:
        for method, path in TASK_ROUTES[3:]:
            cases.append((f"{label} on {path}", method, f"{path}?task_id={task_id}&lease={token}&seconds=5",
                          {"data": b'{"error": "x"}'}))
    # failure reports
    for label, report in [("report not JSON", b"{"), ("report list", b"[]"),
                          ("report error empty", b'{"error": " "}'), ("report retryable 1", b'{"error": "x", "retryable": 1}'),
                          ("report error a number", b'{"error": 5}')]:
        cases.append((label, "POST", f"/puttaskresult?task_id={task_id}&lease=x&status=failed", {"data": report}))
    cases.append(("status=maybe", "POST", f"/puttaskresult?task_id={task_id}&lease=x&status=maybe", {"data": b"x"}))
    cases.append(("huge Authorization", "GET", "/stats", {"headers": {"Authorization": "Bearer " + "k" * 6000}}))
    return cases


def test_hostile_requests_get_clear_4xx_answers(target, model):
    task_id = target.submit(model, b"a task the hostile requests can name")
    tally = Tally()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {WORKER_KEY}"
    for label, method, path, kwargs in hostile_requests(model, task_id):
        tally.send(session, label, method, target.url + path, **kwargs)
    record("fuzz (hand-written)", cases=tally.cases, server_errors=tally.server_errors)
    assert tally.problems == [], "\n".join(tally.problems)
    assert_healthy(target)
    assert target.status(task_id)["status"] == "queued"  # nothing hostile touched the real task


def test_deeply_nested_json_is_a_400_not_a_crash(target, model):
    """A few KB of brackets nest deeper than Python's recursion limit: every JSON input must still be a 400."""
    task_id = target.submit(model, b"x")
    [task] = target.claim(model)
    json_type = {"Content-Type": "application/json"}
    nested_object = '{"a":' * 1000 + "1" + "}" * 1000
    cases = [("params in the query", f"/predict?model={model}&params={NESTED}", {"data": b"x"}),
             ("object params in the query", f"/predict?model={model}&params={nested_object}", {"data": b"x"}),
             ("the JSON body", f"/predict?model={model}", {"data": NESTED.encode(), "headers": json_type}),
             ("params in the JSON body", f"/predict?model={model}",
              {"data": f'{{"payload": "eA==", "params": {nested_object}}}'.encode(), "headers": json_type}),
             ("the lease token", f"/extendlease?task_id={task_id}&seconds=5&lease="
                                 + base64.urlsafe_b64encode(NESTED.encode()).decode(), {}),
             ("the failure report", f"/puttaskresult?task_id={task_id}&lease={task['lease']}&status=failed",
              {"data": NESTED.encode(), "headers": json_type})]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {WORKER_KEY}"
    tally = Tally()
    for label, path, kwargs in cases:
        response = tally.send(session, label, "POST", target.url + path, **kwargs)
        if response is not None and response.status_code != 400:
            tally.problems.append(f"{label}: {response.status_code}, not 400")
    assert tally.problems == [], "\n".join(tally.problems)
    assert target.put(task, b"done").status_code == 200  # the task itself was not disturbed


FORGED_FIELDS = {  # lease token fields a worker key holder could forge; the broker must refuse or survive them
    "created a string": dict(created="yesterday"),
    "started NaN": dict(started=float("nan")),
    "created far future": dict(created=1e300),
    "attempt huge": dict(attempt=10 ** 30),
    "model path-like": dict(model="../../x"),
    "digest a list": dict(digest=["x"]),
}


@pytest.mark.parametrize("label", FORGED_FIELDS)
def test_a_lease_token_with_forged_fields_never_breaks_the_task(target, model, label):
    """Whatever a worker changes in a token (its signature then fails), the task stays readable (no 5xx)."""
    task_id = target.submit(model, b"x")
    [task] = target.claim(model)
    body, _, mac = task["lease"].partition(".")  # the signed JSON, then its signature
    fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    names = ["task_id", "model", "msg", "receipt", "attempt", "created", "started", "digest"]
    forged = dict(zip(names, fields), **FORGED_FIELDS[label])
    token = base64.urlsafe_b64encode(json.dumps([forged[n] for n in names]).encode()).decode().rstrip("=") + "." + mac
    tally = Tally()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {WORKER_KEY}"
    base = f"{target.url}/puttaskresult?task_id={task_id}&lease={token}"
    tally.send(session, "extend", "POST", f"{target.url}/extendlease?task_id={task_id}&lease={token}&seconds=30")
    tally.send(session, "put", "POST", base, data=b"result", headers={"Content-Type": "text/plain"})
    for path in ("/status", "/getresult", "/getresult?format=json&x=1"):
        tally.send(session, path, "GET", f"{target.url}{path.split('?')[0]}?task_id={task_id}")
    tally.send(session, "cancel", "POST", f"{target.url}/cancel?task_id={task_id}")
    assert tally.problems == [], "\n".join(tally.problems)


def test_params_with_non_standard_numbers_never_reach_a_worker_as_invalid_json(target, model):
    """JSON has no NaN or Infinity: params holding them are refused, or the claim still answers strict JSON."""
    params = requests.utils.quote('{"x": NaN, "y": 1e999}')
    response = target.post(f"/predict?model={model}&params={params}", data=b"x")
    assert response.status_code in (202, 400), response.text
    if response.status_code == 202:
        claim = target.get(f"/getnexttask?model={model}&wait=5", headers=target.worker)
        assert claim.status_code == 200

        def refuse(constant):
            raise ValueError(f"non-standard JSON constant {constant}")

        json.loads(claim.text, parse_constant=refuse)


def assert_healthy(broker) -> None:
    assert broker.get("/health").json() == {"status": "ok"}
    log = broker.host.log_text()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
    model = "after-" + uuid.uuid4().hex[:12]
    task_id = broker.submit(model, b"still works")
    tasks = [t for t in broker.claim(model, max_tasks=32) if t["task_id"] == task_id]
    assert tasks and broker.put(tasks[0], b"done").status_code == 200
    assert broker.get(f"/getresult?task_id={task_id}").content == b"done"
