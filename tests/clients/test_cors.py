"""A page on another origin uses the broker from a real browser with a token, as a web app would: the
dev host answers CORS from local.settings.json's Host.CORS as `func start` does; a token minted by
the app's backend (here, the test) lets the page submit and poll; without one it is refused; a page
on an origin not listed cannot read anything at all."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

import pytest

from devstack.localserver import HTTPServer
from devstack.services import DevHost, Worker
from tests.conftest import CLIENT_KEY, WORKER_KEY

PAGE = b"<!doctype html><title>another origin</title><p>an app's page"

SUBMIT_AND_WAIT = """async ({url, token, model}) => {
  const headers = token ? {"Authorization": "Bearer " + token} : {};
  const submitted = await fetch(url + "/predict?raw=1&model=" + model,
    {method: "POST", headers: {...headers, "Content-Type": "text/plain"}, body: "from another origin"});
  const out = {submit: submitted.status, submitError: submitted.ok ? null : (await submitted.json()).error};
  if (!submitted.ok) return out;
  const {task_id} = await submitted.json();
  let answer;
  for (let i = 0; i < 30; i++) {
    answer = await fetch(url + "/getresult?wait=5&task_id=" + task_id, {headers});
    if (answer.status !== 202) break;
  }
  out.result = answer.status;
  out.body = await answer.text();
  return out;
}"""

REACH = """async ({url}) => {
  try { await fetch(url + "/status?task_id=" + "0".repeat(32)); return "read"; }
  catch (error) { return "refused by the browser"; }
}"""


def serve_page() -> HTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

    return HTTPServer(Handler)


@pytest.fixture(scope="module")
def pages():
    allowed, other = serve_page(), serve_page()
    yield [f"http://127.0.0.1:{s.port}" for s in (allowed, other)]
    for server in (allowed, other):
        server.close()


@pytest.fixture(scope="module")
def cors_broker(azurite, pages, lease_secret, tmp_path_factory):
    """A broker with client keys whose local.settings.json lists the first page's origin in Host.CORS,
    and an echo worker for model `cors-echo`."""
    work = tmp_path_factory.mktemp("cors")
    settings = work / "local.settings.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": {},
                                    "Host": {"CORS": pages[0], "CORSCredentials": False}}))
    host = DevHost(azurite.connection_string, {"BROKER_WORKER_KEYS": WORKER_KEY, "BROKER_CLIENT_KEYS": CLIENT_KEY,
                                               "BROKER_LEASE_SECRET": lease_secret},
                   log_dir=work / "host", extra_args=["--no-timers"], settings_file=str(settings)).start()
    worker = Worker(host.url, WORKER_KEY, ["--model", "cors-echo", "--handler", "echo", "--wait", "2"],
                    log_dir=work / "worker").start()
    yield host
    worker.stop(timeout=30)
    host.stop()


def mint(host: DevHost) -> str:
    import requests

    answer = requests.post(f"{host.url}/token", json={"models": ["cors-echo"], "expires_in": 300, "max_tasks": 5},
                           headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=30)
    assert answer.status_code == 201, answer.text
    return answer.json()["token"]


def test_a_page_on_a_listed_origin_submits_and_polls_with_a_token(chromium, pages, cors_broker):
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(pages[0])
        args = {"url": cors_broker.url, "model": "cors-echo"}
        done = page.evaluate(SUBMIT_AND_WAIT, {**args, "token": mint(cors_broker)})
        assert done == {"submit": 202, "submitError": None, "result": 200, "body": "from another origin"}
        refused = page.evaluate(SUBMIT_AND_WAIT, {**args, "token": None})
        assert refused["submit"] == 401 and refused["submitError"].startswith("a valid client key or token is required")
        wrong = page.evaluate(SUBMIT_AND_WAIT, {**args, "token": "tok_not.a-token"})
        assert wrong["submit"] == 401
    finally:
        context.close()


def test_a_page_on_an_origin_not_listed_reads_nothing(chromium, pages, cors_broker):
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(pages[1])
        assert page.evaluate(REACH, {"url": cors_broker.url}) == "refused by the browser"
    finally:
        context.close()


def test_preflight_and_answers_carry_cors_headers_only_for_the_listed_origin(pages, cors_broker):
    import requests

    asked = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = requests.options(f"{cors_broker.url}/predict", headers={"Origin": pages[0], **asked}, timeout=30)
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == pages[0]
    assert allowed.headers["Access-Control-Allow-Headers"] == "authorization,content-type"
    other = requests.options(f"{cors_broker.url}/predict", headers={"Origin": pages[1], **asked}, timeout=30)
    assert other.status_code == 204 and "Access-Control-Allow-Origin" not in other.headers
    answer = requests.get(f"{cors_broker.url}/health", headers={"Origin": pages[0]}, timeout=30)
    assert answer.headers["Access-Control-Allow-Origin"] == pages[0] and answer.headers["Vary"] == "Origin"
    assert "Access-Control-Allow-Origin" not in requests.get(f"{cors_broker.url}/health", headers={"Origin": pages[1]},
                                                             timeout=30).headers
