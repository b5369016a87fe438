"""The broker's worker routes over HTTP (docs/API.md), and the errors a worker must tell apart.

Connection failures and 429/502/503/504 answers are retried here, a few times with exponential backoff
and jitter (urllib3 `Retry`): those requests never reached the broker's code, so repeating them is
safe for every route. Whatever still fails surfaces as `Unavailable`; the worker's own loops decide
how long to keep trying, because only they know whether a repeat is safe (a put is; a claim whose
answer was lost is healed by its lease running out).
"""

from __future__ import annotations

import uuid

import requests
from urllib3.util.retry import Retry

from .blobs import pinned_session

CONNECT_TIMEOUT = 10
READ_MARGIN = 30  # beyond a long-poll's own wait, for a slow broker or a cold start


class BrokerError(Exception):
    """The broker could not do what was asked; the message is one sentence."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Unavailable(BrokerError):
    """Not reachable, timed out, a 5xx or a 429: try again later."""

    @property
    def transient(self) -> bool:
        """A passing fault (no answer, 429, 502-504), not a broker that keeps failing on this request (500)."""
        return self.status is None or self.status in (429, 502, 503, 504)


class Refused(BrokerError):
    """A 4xx answer: repeating the same request will not help."""


class Unauthorized(Refused):
    """401: the worker key is missing or wrong (a configuration error, not a passing fault)."""


class Cancelled(Refused):
    """410: the task ended without this worker: cancelled by its client, or expired."""


class LeaseLost(Refused):
    """409: another attempt holds or finished the task."""


def _retry() -> Retry:
    return Retry(total=4, connect=4, read=0, status=4, other=0, allowed_methods=None,
                 status_forcelist=(429, 502, 503, 504), backoff_factor=0.3, backoff_jitter=0.3, backoff_max=5,
                 raise_on_status=False, respect_retry_after_header=True)


class BrokerClient:
    """One HTTP session to the broker with the worker key; safe to share between threads."""

    def __init__(self, url: str, key: str | None, pool_size: int = 8, function_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.session = pinned_session(self.url, pool_size, _retry())
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"
        if function_key:  # the platform's gate in front of the app (BROKER_WORKER_AUTH_LEVEL=function)
            self.session.headers["x-functions-key"] = function_key
        # Who this worker is, for the broker's count of workers online (/stats, queued tasks' status).
        self.session.headers["X-Worker-Id"] = uuid.uuid4().hex

    def claim(self, model: str, max_tasks: int, wait: int, lease: int, held: int = 0,
              poll: float | None = None) -> tuple[list[dict], int | None]:
        """Long-poll for up to `max_tasks` tasks: (the tasks, the broker's inline limit for results);
        no tasks when none came within `wait` seconds. `held` and `poll` (seconds until this worker
        asks again at the latest) tell the broker about this worker."""
        headers = {"X-Worker-Tasks": str(held), "X-Worker-Poll": f"{poll if poll is not None else max(wait, 1):g}"}
        response = self._call("GET", "getnexttask", {"model": model, "max_tasks": max_tasks, "wait": wait,
                                                     "lease": lease}, read_timeout=wait + READ_MARGIN, headers=headers)
        if response.status_code != 200:
            return [], None
        body = response.json()
        return body["tasks"], body.get("inline_bytes")

    def watch(self, model: str, poll: float = 60) -> dict:
        """Where to watch for the model's work while idle: {"signal_url", "expires_at"}; `poll`: how often
        this worker will still ask the broker itself."""
        return self._call("GET", "watch", {"model": model}, headers={"X-Worker-Poll": f"{poll:g}"}).json()

    def extend(self, task_id: str, lease: str, seconds: int) -> dict:
        """Heartbeat (seconds > 0) or give the task back at once (seconds = 0); returns the new lease."""
        return self._call("POST", "extendlease", {"task_id": task_id, "lease": lease, "seconds": seconds}).json()

    def put_result(self, task_id: str, lease: str, body: bytes, content_type: str) -> dict:
        return self._call("POST", "puttaskresult", {"task_id": task_id, "lease": lease}, data=body,
                          headers={"Content-Type": content_type}).json()

    def progress(self, task_id: str, lease: str, fraction: float, message: str) -> dict:
        """Tell how far the task is (the lease stays as it is)."""
        return self._call("POST", "progress", {"task_id": task_id, "lease": lease},
                          json={"progress": fraction, "message": message}).json()

    def put_uploaded(self, task_id: str, lease: str, content_type: str) -> dict:
        """Commit as the result what this claim wrote to its result_upload_url."""
        return self._call("POST", "puttaskresult", {"task_id": task_id, "lease": lease, "uploaded": "1"},
                          data=b"", headers={"Content-Type": content_type}).json()

    def put_failure(self, task_id: str, lease: str, error: str, retryable: bool) -> dict:
        return self._call("POST", "puttaskresult", {"task_id": task_id, "lease": lease, "status": "failed"},
                          json={"error": error, "retryable": retryable}).json()

    def close(self) -> None:
        self.session.close()

    def _call(self, method: str, route: str, params: dict, read_timeout: float = 60, **kwargs) -> requests.Response:
        try:
            response = self.session.request(method, f"{self.url}/{route}", params=params,
                                            timeout=(CONNECT_TIMEOUT, read_timeout), **kwargs)
        except requests.RequestException as exc:
            raise Unavailable(f"the broker at {self.url} did not answer {route} ({_reason(exc)})") from None
        if response.status_code < 400:
            return response
        message = f"{route} answered {response.status_code}: {_error_text(response)}"
        kind = {401: Unauthorized, 409: LeaseLost, 410: Cancelled}.get(response.status_code)
        if kind is None:
            kind = Unavailable if response.status_code >= 500 or response.status_code == 429 else Refused
        raise kind(message, response.status_code)


def _error_text(response: requests.Response) -> str:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    return str(error) if error else (response.reason or "no reason given")


def _reason(exc: requests.RequestException) -> str:
    """The innermost cause, without urllib3's long repr of pools and addresses."""
    cause: BaseException = exc
    while cause.__context__ is not None and cause.__context__ is not cause:
        cause = cause.__context__
    return type(cause).__name__ + (f": {cause.args[-1]}" if cause.args and isinstance(cause.args[-1], str) else "")
