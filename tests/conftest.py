"""Shared fixtures: one real Azurite for the session, real broker dev hosts over HTTP.

Every test that touches a queue uses its own model name (`model` fixture), so tests never see
each other's tasks even though they share Azurite and the main broker.
"""

from __future__ import annotations

import os
import secrets
import uuid
from dataclasses import dataclass, field

import pytest
import requests

from devstack.services import Azurite, DevHost
from tests.support import ast_guard

ast_guard.install()  # CPython 3.11: no two threads in ast.parse at once (tests/support/ast_guard.py)

# The tests' own HTTP calls send the keys they set, never a developer's ~/.netrc entry (requests
# would put a matching one in place of the Authorization header).
os.environ["NETRC"] = os.devnull

WORKER_KEY = "test-worker-key-0123456789"
CLIENT_KEY = "test-client-key-0123456789"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes; a test's, like the keys above


@dataclass
class Broker:
    url: str
    host: DevHost
    worker_key: str | None = WORKER_KEY
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def worker(self) -> dict:
        return {"Authorization": f"Bearer {self.worker_key}"}

    def get(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 90)
        return self.session.get(self.url + path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 90)
        return self.session.post(self.url + path, **kwargs)

    # The few steps most tests need, spelled once.
    def submit(self, model: str, payload: bytes = b"payload", content_type: str = "application/octet-stream",
               **kwargs) -> str:
        response = self.post(f"/predict?model={model}", data=payload,
                             headers={"Content-Type": content_type, **kwargs.pop("headers", {})}, **kwargs)
        assert response.status_code == 202, response.text
        return response.json()["task_id"]

    def claim(self, model: str, max_tasks: int = 1, wait: int = 5, lease: int = 60) -> list[dict]:
        response = self.get(f"/getnexttask?model={model}&max_tasks={max_tasks}&wait={wait}&lease={lease}",
                            headers=self.worker)
        assert response.status_code in (200, 204), response.text
        return response.json()["tasks"] if response.status_code == 200 else []

    def put(self, task: dict, body: bytes = b"result", content_type: str = "text/plain") -> requests.Response:
        return self.post(f"/puttaskresult?task_id={task['task_id']}&lease={task['lease']}", data=body,
                         headers={**self.worker, "Content-Type": content_type})

    def put_failure(self, task: dict, error: str, retryable: bool = False) -> requests.Response:
        return self.post(f"/puttaskresult?task_id={task['task_id']}&lease={task['lease']}&status=failed",
                         json={"error": error, "retryable": retryable}, headers=self.worker)

    def status(self, task_id: str) -> dict:
        response = self.get(f"/status?task_id={task_id}")
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    with Azurite(log_dir=tmp_path_factory.mktemp("azurite")) as service:
        yield service


@pytest.fixture(scope="module")
def module_azurite(tmp_path_factory):
    """An Azurite of the test module's own: for tests whose storage no other test may share (a cleanup
    with a short TTL, hosts that deliver every webhook queued)."""
    with Azurite(log_dir=tmp_path_factory.mktemp("module-azurite")) as service:
        yield service


@pytest.fixture(scope="session")
def lease_secret() -> str:
    """The session's BROKER_LEASE_SECRET: every dev host gets it, as every instance of one app would."""
    return secrets.token_urlsafe(32)


@pytest.fixture(scope="session")
def start_broker(azurite, tmp_path_factory, lease_secret):
    """Start a dev host with the given BROKER_* settings (and dev host arguments); all are stopped at the end."""
    hosts = []

    def start(settings: dict | None = None, connection_string: str | None = None,
              host_args: list[str] | None = None, queues: bool = False) -> Broker:
        """Queue triggers (webhook deliveries) run only with `queues`: the hosts share Azurite's queues."""
        settings = {"BROKER_WORKER_KEYS": WORKER_KEY, "BROKER_LEASE_SECRET": lease_secret,
                    "BROKER_WEBHOOK_SECRET": WEBHOOK_SECRET, "BROKER_WEBHOOK_ALLOW": "127.0.0.1", **(settings or {})}
        args = ["--no-timers", *([] if queues else ["--no-queues"]), *(host_args or [])]
        host = DevHost(connection_string or azurite.connection_string, settings,
                       log_dir=tmp_path_factory.mktemp("devhost"), extra_args=args).start()
        hosts.append(host)
        keys = [k for k in settings.get("BROKER_WORKER_KEYS", "").split(",") if k]
        return Broker(host.url, host, keys[0] if keys else None)

    yield start
    for host in hosts:
        host.stop()


@pytest.fixture(scope="session")
def broker(start_broker) -> Broker:
    """The main broker: a worker key, no client keys, default limits."""
    return start_broker()


@pytest.fixture
def model() -> str:
    return "t-" + uuid.uuid4().hex[:12]
