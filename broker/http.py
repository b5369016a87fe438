"""The HTTP functions: parse the request, call the task store, shape the response. Nothing else.

Every function is registered for all methods and answers 405 itself for the ones it does not
take, so a wrong method reads the same under the dev host and in Azure (whose host would
otherwise answer 404).
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from urllib.parse import urljoin

import azure.functions as func

from . import auth, destinations, telemetry, validate
from .errors import Rejected
from .records import Grant, iso
from .respond import ALL_METHODS, claims_response, endpoint, error_response, json_response
from .settings import Settings, worker_auth_level
from .store import get_store, shown_inline
from .tokens import BadToken, Token
from .webhooks import Hook, Report

bp = func.Blueprint()

DEMO_PAGE = Path(__file__).resolve().parent / "static" / "demo.html"  # deployed with the broker
RETRY = {"Retry-After": "1"}
# Results never run as active content on the broker's origin, whatever type a worker gave them.
RESULT_HEADERS = {"Content-Security-Policy": "sandbox; default-src 'none'"}
ENDED = {"failed": 422, "cancelled": 410, "expired": 410}


def _submit_limit(settings: Settings) -> int:
    """A predict body: the payload, in base64 inside the JSON form at most, plus room for the rest."""
    return settings.max_payload_bytes * 4 // 3 + 64 * 1024


def _result_limit(settings: Settings) -> int:
    return settings.max_payload_bytes


def _route(name: str, gated: bool = False):
    """Register a function for every method; `gated` (worker and operations routes) puts it behind the
    platform's function keys as well when BROKER_WORKER_AUTH_LEVEL=function (read as the app starts)."""
    level = func.AuthLevel.FUNCTION if gated and worker_auth_level() == "function" else func.AuthLevel.ANONYMOUS
    return bp.route(route=name, methods=ALL_METHODS, auth_level=level)


def _links(req: func.HttpRequest, task_id: str) -> dict:
    return {"status_url": urljoin(req.url, f"status?task_id={task_id}"),
            "result_url": urljoin(req.url, f"getresult?task_id={task_id}")}


@_route("predict")
@endpoint(("POST",), auth.CLIENT, body_limit=_submit_limit)
async def predict(req: func.HttpRequest, settings: Settings, caller: auth.Caller) -> func.HttpResponse:
    """Submit a job: raw bytes, or the JSON wrapper with a base64 payload."""
    began = time.time_ns()
    model, payload, content_type, params, hook = validate.submission(req, settings.max_payload_bytes, settings.models)
    key = validate.idempotency_key(req)
    wait, ttl = validate.prefer_wait(req), validate.deadline(req)
    hook = await _webhook(req, settings, hook)
    store = await _submitting(settings, caller, model)
    task, _ = await store.submit(model, payload, content_type, params, key, caller.scope, ttl, hook)
    telemetry.finished("predict", task.task_id, began, model=model, size=len(payload))
    return await _accepted(req, store, task, caller, wait)


async def _accepted(req: func.HttpRequest, store, task, caller: auth.Caller, wait: int = 0) -> func.HttpResponse:
    """202 with the task's status document and where to follow it (a submit's or a commit's answer);
    with `Prefer: wait=N`, the result as getresult gives it if the task ends within N seconds."""
    links = _links(req, task.task_id)
    if wait:
        done, body = await store.result(task.task_id, wait, caller.owner)
        if done.ended(time.time()):
            answer = await _answer(store, done, body, req.params.get("format", "") == "json")
            answer.headers["Preference-Applied"] = f"wait={wait}"
            answer.headers.setdefault("Location", links["result_url"])  # a 303's own is where the result is
            return answer
        task = done
    body = {**await _document(store, task), **links}
    return json_response(body, 202, {"Location": body["result_url"], **RETRY})


async def _document(store, task) -> dict:
    """The task's status document; a queued one says where it is in line and who serves its model, one
    with a webhook what its deliveries did."""
    document = task.document()
    if document["status"] == "queued":
        document.update(await store.presence.describe(task.task_id, task.model))
    if task.hooked:
        document["webhook"] = (await store.webhooks.report(task.task_id, task.created) or Report()).shown()
    return document


async def _webhook(req: func.HttpRequest, settings: Settings, asked: tuple[str, tuple[str, ...]] | None) -> Hook | None:
    """The submit's webhook, once its destination is one the broker may send to (destinations.py)."""
    if asked is None:
        return None
    if settings.webhook_key is None:
        raise Rejected(400, "this broker sends no webhooks (BROKER_WEBHOOK_SECRET is not set)")
    url, events = asked
    try:
        await destinations.check(url, settings.webhook_allow)
    except destinations.Refused as exc:
        raise Rejected(400, str(exc)) from None
    return Hook(url, events, urljoin(req.url, "."))


@_route("upload")
@endpoint(("POST",), auth.CLIENT)
async def upload(req: func.HttpRequest, settings: Settings, caller: auth.Caller) -> func.HttpResponse:
    """Start a submit whose payload the client uploads straight to storage: where, and until when."""
    model, size, content_type, params, hook = validate.upload(req, settings.max_upload_bytes, settings.models)
    key = validate.idempotency_key(req)
    hook = await _webhook(req, settings, hook)
    get_store(settings).check_signing()
    store = await _submitting(settings, caller, model)
    began = time.time_ns()
    granted = await store.begin_upload(model, size, content_type, params, key, caller.scope, validate.deadline(req),
                                       hook)
    telemetry.finished("upload", granted.task_id, began, model=model, size=size)
    if not isinstance(granted, Grant):  # the Idempotency-Key's task, committed already
        return await _accepted(req, store, granted, caller)
    return json_response({"task_id": granted.task_id, "upload_url": granted.url,
                          "upload_expires_at": iso(granted.expires),
                          "commit_url": urljoin(req.url, f"commit?task_id={granted.task_id}")}, 201)


@_route("commit")
@endpoint(("POST",), auth.CLIENT)
async def commit(req: func.HttpRequest, settings: Settings, caller: auth.Caller) -> func.HttpResponse:
    """Queue a task whose payload has been uploaded; answered as a predict is (Prefer: wait too)."""
    wait = validate.prefer_wait(req)
    store = get_store(settings)
    return await _accepted(req, store, await store.commit_upload(validate.task_id(req), caller.owner), caller, wait)


async def _submitting(settings: Settings, caller: auth.Caller, model: str):
    """The store, once a submit by `caller` to `model` may go on: a token must cover the model, and
    counts the task against its max_tasks."""
    caller.may_submit(model)
    store = get_store(settings)
    if caller.token is not None:
        await store.limits.spend(caller.token)
    return store


@_route("token")
@endpoint(("POST",), auth.CLIENT)
async def token(req: func.HttpRequest, settings: Settings, caller: auth.Caller) -> func.HttpResponse:
    """Mint a scoped, short-lived token for a web page (with a client key, not with a token)."""
    if not settings.client_keys:
        raise Rejected(400, "this broker has no client keys (BROKER_CLIENT_KEYS): its client routes are open, "
                            "and a token would add nothing")
    if caller.token is not None:
        raise Rejected(403, "a token cannot mint tokens: use a client key")
    models, expires_in, max_tasks = validate.token_request(req, settings.models)
    minted = Token.mint(caller.scope, models, time.time() + expires_in, max_tasks)
    return json_response({"token": minted.encode(settings.lease_secrets), "token_id": minted.id,
                          "expires_at": iso(minted.expires), "models": list(models), "max_tasks": max_tasks}, 201)


@_route("revoke")
@endpoint(("POST",), auth.CLIENT)
async def revoke(req: func.HttpRequest, settings: Settings, caller: auth.Caller) -> func.HttpResponse:
    """Revoke a token minted with the caller's client key: refused everywhere within seconds."""
    if caller.token is not None:
        raise Rejected(403, "a token cannot revoke tokens: use the client key that minted it")
    text = validate.json_object(req.get_body(), "JSON body").get("token")
    if not isinstance(text, str):
        raise Rejected(400, "the JSON body needs \"token\": the token to revoke")
    try:
        revoked = Token.decode(text, settings.lease_secrets, time.time())
    except BadToken as exc:
        raise Rejected(400, f"{exc}; there is nothing to revoke") from None
    if revoked.owner != caller.scope:
        raise Rejected(404, "no token of this client key matches")
    await get_store(settings).limits.revoke(revoked)
    return json_response({"token_id": revoked.id, "revoked": True})


@_route("getresult")
@endpoint(("GET",), auth.CLIENT)
async def getresult(req: func.HttpRequest, settings: Settings, caller: auth.Caller) -> func.HttpResponse:
    """The result when done (200), else the task's status with the status code that names it."""
    task_id = validate.task_id(req)
    wait = validate.integer(req, "wait", 0, 60, default=0)
    form = req.params.get("format", "")
    if form not in ("", "json"):
        raise Rejected(400, "format must be json or left out")
    store = get_store(settings)
    task, body = await store.result(task_id, wait, caller.owner)
    return await _answer(store, task, body, form == "json")


async def _answer(store, task, body: bytes | None, as_json: bool) -> func.HttpResponse:
    """What getresult answers for `task` as it stands (and a predict or commit that waited for it)."""
    document = await _document(store, task)
    status, task_id = document["status"], task.task_id
    if status == "succeeded" and task.outcome.ref:  # uploaded by the worker: fetched from storage directly
        url, expires = await store.result_url(task)
        found = {"task_id": task_id, "status": status, "content_type": task.result_content_type,
                 "size": task.outcome.size, "result_url": url, "result_expires_at": iso(expires)}
        if as_json:
            return json_response(found)
        return json_response(found, 303, {"Location": url})
    if status == "succeeded":
        kind = task.result_content_type or validate.DEFAULT_CONTENT_TYPE
        if as_json:
            return json_response({"task_id": task_id, "status": status, "content_type": kind,
                                  "result": base64.b64encode(body or b"").decode()})
        return func.HttpResponse(body or b"", status_code=200, headers=_result_headers(task_id, kind), mimetype=kind)
    if status in ENDED:
        return json_response(document, ENDED[status])
    return json_response(document, 202, RETRY)


def _result_headers(task_id: str, kind: str) -> dict:
    headers = {"Content-Type": kind, **RESULT_HEADERS}
    if not shown_inline(kind):
        headers["Content-Disposition"] = f'attachment; filename="{task_id}"'
    return headers


@_route("status")
@endpoint(("GET",), auth.CLIENT)
async def status(req: func.HttpRequest, settings: Settings, caller: auth.Caller) -> func.HttpResponse:
    store = get_store(settings)
    return json_response(await _document(store, await store.status(validate.task_id(req), caller.owner)))


@_route("cancel")
@endpoint(("POST",), auth.CLIENT)
async def cancel(req: func.HttpRequest, settings: Settings, caller: auth.Caller) -> func.HttpResponse:
    store = get_store(settings)
    return json_response(await _document(store, await store.cancel(validate.task_id(req), caller.owner)))


@_route("getnexttask", gated=True)
@endpoint(("GET", "POST"), auth.WORKER)
async def getnexttask(req: func.HttpRequest, settings: Settings) -> func.HttpResponse:
    """Claim up to max_tasks tasks, long-polling up to wait seconds for the first."""
    model = validate.model(req.params.get("model"), settings.models)
    max_tasks = validate.integer(req, "max_tasks", 1, 32, default=1)
    wait = validate.integer(req, "wait", 0, 60, default=20)
    lease = validate.integer(req, "lease", 5, 3600, default=60)
    settings.check_lease_secret()  # before claiming anything it could not sign a token for
    store = get_store(settings)
    store.check_signing()  # nor a URL for
    await _seen(req, store, model, wait)
    began = time.time_ns()
    claims = await store.claim(model, max_tasks, wait, lease)
    for claim in claims:  # a span in each task's trace: from the long-poll's start to its claim
        telemetry.finished("getnexttask", claim.task_id, began, model=model, attempt=claim.attempt, size=claim.size)
    if not claims:
        return func.HttpResponse(status_code=204)
    return claims_response(claims, settings.inline_bytes)


async def _seen(req: func.HttpRequest, store, model: str, default_interval: float) -> None:
    """Note the worker asking (X-Worker-Id, and how often it polls and how much it holds) for /stats and
    queued tasks' documents."""
    interval = validate.header_number(req, "x-worker-poll", 0.1, 3600, default_interval)
    held = int(validate.header_number(req, "x-worker-tasks", 0, 10_000, 0))
    await store.presence.seen(model, req.headers.get("x-worker-id"), interval, held)


@_route("watch", gated=True)
@endpoint(("GET",), auth.WORKER)
async def watch(req: func.HttpRequest, settings: Settings) -> func.HttpResponse:
    """Where an idle worker watches for work without holding a request open: a read URL for a blob whose
    etag changes whenever a task of the model is queued."""
    model = validate.model(req.params.get("model"), settings.models)
    store = get_store(settings)
    store.check_signing()
    await _seen(req, store, model, 60)
    url, expires = await store.watch(model)
    return json_response({"model": model, "signal_url": url, "expires_at": iso(expires),
                          "expires_in": round(expires - time.time())})


@_route("extendlease", gated=True)
@endpoint(("POST",), auth.WORKER)
async def extendlease(req: func.HttpRequest, settings: Settings) -> func.HttpResponse:
    """Heartbeat (seconds > 0) or give the task back to the queue (seconds = 0)."""
    task_id = validate.task_id(req)
    lease = validate.lease(req, task_id, settings.lease_secrets)
    seconds = validate.integer(req, "seconds", 0, 3600)
    renewal = await get_store(settings).extend(lease, seconds)
    body = {"lease": renewal.lease, "lease_expires_at": iso(renewal.expires)}
    if renewal.result_upload_url:
        body["result_upload_url"] = renewal.result_upload_url
    return json_response(body)


@_route("progress", gated=True)
@endpoint(("POST",), auth.WORKER)
async def progress(req: func.HttpRequest, settings: Settings) -> func.HttpResponse:
    """How far the worker holding a task is: {"progress": 0.0-1.0, "message": "..."}; ?seconds=S renews the
    lease too (a heartbeat), with its new token."""
    task_id = validate.task_id(req)
    lease = validate.lease(req, task_id, settings.lease_secrets)
    seconds = validate.integer(req, "seconds", 0, 3600, default=0)
    fraction, message = validate.progress(req.get_body())
    renewal = await get_store(settings).progress(lease, fraction, message, seconds)
    body = {"lease": renewal.lease, "lease_expires_at": iso(renewal.expires)}
    if renewal.result_upload_url:
        body["result_upload_url"] = renewal.result_upload_url
    return json_response(body)


@_route("puttaskresult", gated=True)
@endpoint(("POST",), auth.WORKER, body_limit=_result_limit)
async def puttaskresult(req: func.HttpRequest, settings: Settings) -> func.HttpResponse:
    """Commit a task's outcome: the result bytes, or (status=failed) an error, retryable or not."""
    task_id = validate.task_id(req)
    lease = validate.lease(req, task_id, settings.lease_secrets)
    outcome = req.params.get("status", "succeeded")
    body = req.get_body()
    store = get_store(settings)
    if outcome == "succeeded" and req.params.get("uploaded", "") in ("1", "true"):
        if body:
            raise Rejected(400, "an uploaded result's put has no body: the result is at the claim's result_upload_url")
        kind = validate.content_type(req.headers.get("content-type"))
        return json_response({"task_id": task_id, "status": await store.complete_uploaded(lease, kind)})
    if outcome == "succeeded":
        if len(body) > settings.max_payload_bytes:
            raise validate.too_large(settings.max_payload_bytes)
        kind = validate.content_type(req.headers.get("content-type"))
        return json_response({"task_id": task_id, "status": await store.complete(lease, body, kind)})
    if outcome != "failed":
        raise Rejected(400, "status must be succeeded or failed")
    report = validate.json_object(body, "failure report")
    error, retryable = report.get("error"), report.get("retryable", False)
    if not isinstance(error, str) or not error.strip():
        raise Rejected(400, "a failure report needs a non-empty \"error\" string")
    if not isinstance(retryable, bool):
        raise Rejected(400, "\"retryable\" must be true or false")
    return json_response({"task_id": task_id, "status": await store.fail(lease, error, retryable)})


@_route("health")
@endpoint(("GET",))
async def health(req: func.HttpRequest, settings: Settings) -> func.HttpResponse:
    await get_store(settings).health()
    return json_response({"status": "ok"})


@_route("stats", gated=True)
@endpoint(("GET",), auth.WORKER)
async def stats(req: func.HttpRequest, settings: Settings) -> func.HttpResponse:
    """Per model: tasks waiting, tasks held by workers, workers online, the oldest waiting task's age."""
    model = req.params.get("model")
    store = get_store(settings)
    depths, more = await store.stats(validate.model(model, settings.models) if model else None)
    lines = await asyncio.gather(*(store.presence.line(name) for name in depths))
    crews = await asyncio.gather(*(store.presence.workers(name) for name in depths))
    now = time.time()
    body: dict = {"models": {
        name: {"queued": max(0, depth - crew.running), "running": crew.running, "workers_online": crew.online,
               "oldest_queued_seconds": round(now - line.oldest, 1) if line.oldest is not None else None}
        for (name, depth), line, crew in zip(depths.items(), lines, crews)}}
    if more:
        body["truncated"] = True
    return json_response(body)


@_route("demo")
@endpoint(("GET",))
async def demo(req: func.HttpRequest, settings: Settings) -> func.HttpResponse:
    """The Ajax demo page. It embeds no key: the user types one, if the broker needs one."""
    try:
        page = DEMO_PAGE.read_bytes()
    except OSError:
        return error_response(404, "the demo page is not deployed with this app")
    storage = get_store(settings).storage.blob_origin  # large files go to and come from there directly
    return func.HttpResponse(page, status_code=200, mimetype="text/html", charset="utf-8",
                             headers={"Cache-Control": "no-cache",
                                      "Content-Security-Policy": f"default-src 'self'; connect-src 'self' {storage}; "
                                                                 "img-src 'self' data: blob:; "
                                                                 "style-src 'self' 'unsafe-inline'; "
                                                                 "script-src 'self' 'unsafe-inline'"})
