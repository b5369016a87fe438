"""BrokerClient: submit a job to the broker, wait for it, get its result. Needs only `requests`.

A payload over `upload_above` bytes (4 MiB by default) does not go through the broker: the client
asks for an upload URL (POST /upload), writes the payload straight to storage in blocks, in
parallel, then commits the task (POST /commit). A result the worker uploaded the same way comes
from storage too (getresult answers 303 to it). Either way the caller sees the same calls.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import requests

from . import blobs, transport
from .errors import BrokerHTTPError, BrokerUnavailable, TaskCancelled, TaskExpired, TaskFailed, TaskTimeout
from .payload import guess_for, payload_size, read_payload
from .result import Result

DEFAULT_URL = "http://127.0.0.1:7071/api"
MAX_WAIT = 60  # the broker holds a getresult at most this long (API.md)
UPLOAD_ABOVE = 4 * 1024 * 1024  # payloads larger than this go straight to storage
SETTLED = (200, 202, 303, 410, 422)  # the answers that say where a task stands (getresult's)


@dataclass(frozen=True)
class Options:
    """What a submit may ask beyond its payload: a webhook and its events, a deadline."""

    webhook: str | None = None
    webhook_events: tuple[str, ...] = ()
    ttl: int | None = None

    def fields(self, events_as) -> dict:
        """As query parameters (`events_as=",".join`) or JSON fields (`list`)."""
        fields = {"webhook": self.webhook} if self.webhook else {}
        if self.webhook_events:
            fields["webhook_events"] = events_as(self.webhook_events)
        return fields

    def headers(self) -> dict:
        return {"Cancel-After": str(self.ttl)} if self.ttl else {}


def _task_id(response) -> str:
    """The task id of a submit's answer: in its JSON, or (a result's bytes) in its Location."""
    if response.status_code in (201, 202) or response.headers.get("Content-Type", "").startswith("application/json"):
        with contextlib.suppress(ValueError, KeyError):
            return response.json()["task_id"]
    return parse_qs(urlsplit(response.headers["Location"]).query)["task_id"][0]


class BrokerClient:
    """A client of one broker.

    `timeout` bounds each HTTP exchange (a long-poll gets its `wait` on top); `retries` and
    `backoff` govern the retries on connection errors and 503.
    """

    def __init__(self, base_url: str = DEFAULT_URL, key: str | None = None, timeout: float = 30,
                 retries: int = 4, backoff: float = 0.5, upload_above: int = UPLOAD_ABOVE,
                 transfer_threads: int = blobs.THREADS) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = transport.session(self.base_url, retries, backoff)
        self.upload_above = upload_above
        self.transfer_threads = transfer_threads
        self._storage = None  # the session for storage URLs (never given the key), made on first use

    @classmethod
    def from_env(cls, **kwargs) -> BrokerClient:
        """A client for BROKER_URL (default the local dev host) with BROKER_CLIENT_KEY, if set."""
        return cls(os.environ.get("BROKER_URL") or DEFAULT_URL, os.environ.get("BROKER_CLIENT_KEY") or None,
                   **kwargs)

    def close(self) -> None:
        self.http.close()
        if self._storage is not None:
            self._storage.close()

    def storage(self, url: str):
        if self._storage is None:
            self._storage = blobs.pinned_session(url, self.transfer_threads + 2)
        return self._storage

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, route: str, ok: tuple[int, ...] = (200,), hold: float = 0, **kwargs):
        kwargs["headers"] = {**self.headers, **kwargs.get("headers", {})}
        response = transport.send(self.http, method, self.base_url, route, timeout=self.timeout + hold, **kwargs)
        if response.status_code not in ok:
            transport.raise_for(response)
        return response

    def submit(self, data_or_path, model: str, content_type: str | None = None, params: dict | None = None,
               idempotency_key: str | None = None, on_upload: blobs.Progress | None = None,
               on_accepted: Callable[[dict], None] | None = None, *, webhook: str | None = None,
               webhook_events: Sequence[str] | None = None, ttl: int | None = None) -> str:
        """Queue a job; returns its task id. The content type is guessed from a file name when not given.

        A payload over `upload_above` bytes is uploaded straight to storage (`on_upload(done, total)`
        hears its progress). `on_accepted` gets the broker's answer: the task's status document (its
        place in line, its model's workers online). A path that cannot be read raises the usual
        OSError (FileNotFoundError, ...) before anything is sent.

        `webhook`: a URL the broker POSTs the task's events to (`webhook_events`, among "started",
        "progress" and "completed"; default completed), signed (docs/API.md, "Webhooks"). `ttl`: seconds
        the task may wait to be started (then it expires) and, if running then, is cancelled.
        """
        options = Options(webhook, tuple(webhook_events or ()), ttl)
        response = self._submit(data_or_path, model, content_type, params, idempotency_key, on_upload,
                                options=options)
        if on_accepted is not None and response.status_code == 202:
            on_accepted(response.json())
        return _task_id(response)

    def _submit(self, data_or_path, model: str, content_type: str | None, params: dict | None,
                idempotency_key: str | None, on_upload: blobs.Progress | None, wait: int = 0,
                options: Options | None = None) -> requests.Response:
        """The answer to the submit (or to the commit of an upload), which held up to `wait` seconds for
        the result (`Prefer: wait`): 202 while the task runs, else what getresult would answer."""
        key = idempotency_key or uuid.uuid4().hex  # every retry of this submit is the same submit
        prefer = {"Prefer": f"wait={wait}"} if wait else {}
        options = options or Options()
        size = payload_size(data_or_path)
        if size is not None and size > self.upload_above:
            return self._upload(data_or_path, size, model, content_type, params, key, on_upload, prefer, options)
        payload, guessed = read_payload(data_or_path)
        query = {"model": model, "raw": "1", **options.fields(",".join)}  # raw: a JSON payload is the payload
        if params:
            query["params"] = json.dumps(params, separators=(",", ":"))
        headers = {"Content-Type": content_type or guessed, "Idempotency-Key": key, **prefer, **options.headers()}
        return self._call("POST", "predict", SETTLED, hold=wait, params=query, data=payload, headers=headers,
                          allow_redirects=False)

    def _upload(self, source, size: int, model: str, content_type: str | None, params: dict | None, key: str,
                on_upload: blobs.Progress | None, prefer: dict, options: Options) -> requests.Response:
        kind = content_type or guess_for(source)
        body = {"size": size, "content_type": kind, **({"params": params} if params else {}), **options.fields(list)}
        granted = self._call("POST", "upload", (201, 202), params={"model": model}, json=body,
                             headers={"Idempotency-Key": key, **options.headers()})
        grant = granted.json()
        if granted.status_code == 202:  # this key's task was committed already: nothing to send again
            return granted
        source = bytes(source) if isinstance(source, memoryview) else source
        for again in (False, True):
            try:
                blobs.upload(grant["upload_url"], source, kind, session=self.storage(grant["upload_url"]),
                             threads=self.transfer_threads, progress=on_upload)
                break
            except blobs.TransferError as exc:
                if again or exc.status != 403:
                    raise BrokerUnavailable(f"could not upload the payload to storage: {exc}") from None
                # The URL ran out (a slow link): the same key gives a fresh one to the same blob.
                grant = self._call("POST", "upload", (201,), params={"model": model}, json=body,
                                   headers={"Idempotency-Key": key, **options.headers()}).json()
        return self._call("POST", "commit", SETTLED, hold=int(prefer.get("Prefer", "wait=0")[5:]),
                          params={"task_id": grant["task_id"]}, headers=prefer, allow_redirects=False)

    def token(self, models: list[str], expires_in: int = 600, max_tasks: int = 100) -> dict:
        """Mint a token for a web page (this client holds a client key): {"token", "token_id", "expires_at",
        "models", "max_tasks"}. The page sends `Authorization: Bearer <token>`."""
        body = {"models": list(models), "expires_in": expires_in, "max_tasks": max_tasks}
        return self._call("POST", "token", (201,), json=body).json()

    def revoke(self, token: str) -> dict:
        """Revoke a token this client's key minted: every instance refuses it within seconds."""
        return self._call("POST", "revoke", json={"token": token}).json()

    def status(self, task_id: str) -> dict:
        return self._call("GET", "status", params={"task_id": task_id}).json()

    def cancel(self, task_id: str) -> dict:
        """Cancel a queued or running task; returns its status document."""
        response = self._call("POST", "cancel", (200, 409), params={"task_id": task_id})
        if response.status_code == 409:
            document = response.json()
            raise BrokerHTTPError(409, f"task {task_id} already {document.get('status', 'finished')} "
                                       f"and cannot be cancelled", document)
        return response.json()

    def _poll(self, task_id: str, wait: int) -> tuple[Result | None, dict, float]:
        """(result or None, status document, Retry-After) after holding up to `wait` seconds."""
        response = self._call("GET", "getresult", SETTLED, hold=wait,
                              params={"task_id": task_id, "wait": wait}, allow_redirects=False)
        return self._outcome(task_id, response)

    def _outcome(self, task_id: str, response: requests.Response) -> tuple[Result | None, dict, float]:
        """What a getresult-shaped answer says: (result or None, status document, Retry-After); raises for
        a task that failed, was cancelled or expired."""
        if response.status_code == 200:
            kind = response.headers.get("Content-Type", "application/octet-stream")
            return Result(task_id, response.content, kind), {"task_id": task_id, "status": "succeeded"}, 0
        if response.status_code == 303:  # uploaded by the worker: storage serves it (never given our key)
            link = response.json()
            try:
                content = blobs.download(link["result_url"], link.get("size"), session=self.storage(link["result_url"]),
                                         threads=self.transfer_threads)
            except blobs.TransferError as exc:
                raise BrokerUnavailable(f"could not download the result of task {task_id} from storage: {exc}") from None
            return Result(task_id, bytes(content), link.get("content_type") or "application/octet-stream"), \
                {"task_id": task_id, "status": "succeeded"}, 0
        document = response.json()
        if response.status_code == 422:
            raise TaskFailed(task_id, document.get("error") or "no reason given", document)
        if response.status_code == 410:
            raise (TaskExpired if document.get("status") == "expired" else TaskCancelled)(task_id, document)
        return None, document, transport.retry_after(response)

    def result(self, task_id: str, wait: int = 0) -> Result | None:
        """The result, or None while the task is still queued or running after `wait` seconds (0-60).

        Raises TaskFailed, TaskCancelled or TaskExpired for a task that ended that way.
        """
        return self._poll(task_id, wait)[0]

    def wait(self, task_id: str, timeout: float | None = None, poll: int = 20,
             on_status: Callable[[dict], None] | None = None) -> Result:
        """Wait for the result with the broker's long-poll, at most `timeout` seconds (None: no limit).

        Each request is held by the broker up to `poll` seconds; an early "not yet" is followed by
        a pause of the broker's Retry-After, so this never spins. `on_status` sees each "not yet".
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = MAX_WAIT if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise TaskTimeout(task_id, timeout)
            asked = time.monotonic()
            result, document, pause = self._poll(task_id, max(0, min(poll, MAX_WAIT, int(remaining))))
            if result is not None:
                return result
            if on_status:
                on_status(document)
            pause -= time.monotonic() - asked
            if pause > 0:
                time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))

    def predict(self, data_or_path, model: str, content_type: str | None = None, params: dict | None = None,
                idempotency_key: str | None = None, timeout: float | None = 300,
                on_upload: blobs.Progress | None = None, *, webhook: str | None = None,
                webhook_events: Sequence[str] | None = None, ttl: int | None = None) -> Result:
        """Submit and wait: the finished task's Result, or TaskFailed / TaskCancelled / TaskExpired / TaskTimeout.

        The submit itself asks the broker to hold its answer until the result is there (`Prefer: wait`,
        up to a minute): a quick task comes back in one request. `webhook`, `webhook_events` and `ttl`
        as for submit."""
        wait = int(min(MAX_WAIT, timeout if timeout is not None else MAX_WAIT))
        response = self._submit(data_or_path, model, content_type, params, idempotency_key, on_upload, wait,
                                Options(webhook, tuple(webhook_events or ()), ttl))
        task_id = _task_id(response)
        if response.status_code != 202:
            result, _, _ = self._outcome(task_id, response)
            if result is not None:
                return result
        return self.wait(task_id, None if timeout is None else max(0.0, timeout - wait))
