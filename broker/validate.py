"""Parsing and checking what a request brings; every refusal is a 400 (or 413) with one sentence."""

from __future__ import annotations

import base64
import binascii
import json
import re

import azure.functions as func

from . import strictjson
from .errors import Rejected
from .lease import BadToken, Lease
from .settings import MAX_MODEL_CHARS, MODEL_NAME

TASK_ID = re.compile(r"[0-9a-f]{32}")
MAX_PARAMS_BYTES = 4096
MAX_PARAMS_TEXT = 4 * MAX_PARAMS_BYTES  # the text parsed at most: room for a client's indentation, not for abuse
MAX_CONTENT_TYPE_CHARS = 200
MAX_IDEMPOTENCY_KEY_CHARS = 200
DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_TOKEN_MODELS = 16
MAX_TOKEN_SECONDS = 86400
MAX_TOKEN_TASKS = 50_000  # a token's counter is an append blob (at most 50,000 blocks)


def task_id(req: func.HttpRequest) -> str:
    value = req.params.get("task_id", "")
    if not TASK_ID.fullmatch(value):
        raise Rejected(400, "task_id must be 32 lowercase hexadecimal characters")
    return value


def model(value: str | None, served: tuple[str, ...] = ()) -> str:
    """A model name; when BROKER_MODELS lists the served ones (`served`), one of those."""
    if not value:
        raise Rejected(400, "a model name is required (?model=NAME)")
    if len(value) > MAX_MODEL_CHARS or not MODEL_NAME.fullmatch(value):
        raise Rejected(400, "model must be lowercase letters and digits in groups joined by single hyphens, "
                            f"at most {MAX_MODEL_CHARS} characters")
    if served and value not in served:
        raise Rejected(400, f"model {value} is not served here (this broker serves {', '.join(served)})")
    return value


def integer(req: func.HttpRequest, name: str, low: int, high: int, default: int | None = None) -> int:
    raw = req.params.get(name)
    if raw is None or raw == "":
        if default is None:
            raise Rejected(400, f"{name} is required (an integer from {low} to {high})")
        return default
    if not re.fullmatch(r"[+-]?[0-9]{1,12}", raw) or not low <= int(raw) <= high:
        raise Rejected(400, f"{name} must be an integer from {low} to {high}")
    return int(raw)


def params(value) -> dict:
    """`params` given as a JSON text (query) or already parsed (JSON body)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        if len(value.encode()) > MAX_PARAMS_TEXT:
            raise Rejected(400, f"params must be at most {MAX_PARAMS_BYTES} bytes of JSON")
        try:
            value = strictjson.loads(value)
        except ValueError:
            raise Rejected(400, "params is not valid JSON") from None
    if not isinstance(value, dict):
        raise Rejected(400, "params must be a JSON object")
    if len(json.dumps(value, separators=(",", ":")).encode()) > MAX_PARAMS_BYTES:
        raise Rejected(400, f"params must be at most {MAX_PARAMS_BYTES} bytes of JSON")
    return value


_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
# One media type (RFC 9110): type/subtype and parameters whose values are tokens or plain quoted
# strings. A list ("text/plain, text/html") is refused: a browser would take its last type.
MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}=({_TOKEN}|\"[^\",\\]*\"))*")


def content_type(value: str | None) -> str:
    value = (value or "").strip()
    if not value:
        return DEFAULT_CONTENT_TYPE
    if len(value) > MAX_CONTENT_TYPE_CHARS or not MEDIA_TYPE.fullmatch(value):
        raise Rejected(400, "the content type is not a valid media type (one type/subtype, with parameters if any)")
    return value


MAX_PREFER_WAIT = 60
MAX_TTL = 365 * 86400


def deadline(req: func.HttpRequest) -> int | None:
    """A submit's `ttl=S` (query) or `Cancel-After: S` header: seconds until its deadline, or None."""
    raw = req.params.get("ttl") or req.headers.get("cancel-after")
    if raw is None or raw == "":
        return None
    if not re.fullmatch(r"[0-9]{1,9}", raw.strip()) or not 1 <= int(raw) <= MAX_TTL:
        raise Rejected(400, f"ttl (or Cancel-After) must be a whole number of seconds from 1 to {MAX_TTL}")
    return int(raw)


def prefer_wait(req: func.HttpRequest) -> int:
    """Seconds a submit may wait for its result (RFC 7240 `Prefer: wait=N`, among other preferences;
    0 without one). Above MAX_PREFER_WAIT: 400."""
    header = req.headers.get("prefer", "")
    for preference in header.split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "wait":
            value = value.strip().strip('"')
            if not value.isdigit() or not 0 <= int(value) <= MAX_PREFER_WAIT:
                raise Rejected(400, f"Prefer: wait must be a whole number of seconds from 0 to {MAX_PREFER_WAIT}")
            return int(value)
    return 0


def header_number(req: func.HttpRequest, name: str, low: float, high: float, default: float) -> float:
    """A numeric header a worker sends about itself; anything unreadable counts as absent."""
    try:
        value = float(req.headers.get(name, ""))
    except ValueError:
        return default
    return min(high, max(low, value)) if value == value else default


def idempotency_key(req: func.HttpRequest) -> str | None:
    value = req.headers.get("idempotency-key")
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY_CHARS or not value.isprintable():
        raise Rejected(400, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters")
    return value


def lease(req: func.HttpRequest, task: str, secrets: tuple[bytes, ...]) -> Lease:
    token = req.params.get("lease", "")
    if not token:
        raise Rejected(400, "the lease token is required (?lease=TOKEN)")
    try:
        return Lease.decode(token, task, secrets)
    except BadToken as exc:
        raise Rejected(400, str(exc)) from None


def too_large(limit: int) -> Rejected:
    return Rejected(413, f"the payload is larger than the limit of {limit} bytes")


def progress(body: bytes) -> tuple[float, str]:
    """(fraction, message) of a progress report: `{"progress": 0.0-1.0, "message": "..."}`."""
    report = json_object(body, "progress report")
    fraction, message = report.get("progress"), report.get("message", "")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise Rejected(400, "\"progress\" must be a number from 0 to 1")
    if not isinstance(message, str):
        raise Rejected(400, "\"message\" must be a string")
    return float(fraction), message


def json_object(body: bytes, what: str) -> dict:
    try:
        value = strictjson.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Rejected(400, f"the {what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise Rejected(400, f"the {what} must be a JSON object")
    return value


def base64_payload(value, limit: int) -> bytes:
    if not isinstance(value, str) or not value:
        raise Rejected(400, "the JSON body needs a non-empty base64 string in \"payload\"")
    if len(value) // 4 * 3 > limit + 3:
        raise too_large(limit)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Rejected(400, "payload is not valid base64") from None


def _body_model(req: func.HttpRequest, wrapper: dict, served: tuple[str, ...]) -> str:
    """The model named in the query or in a JSON body (the same one, if both)."""
    query_model, body_model = req.params.get("model"), wrapper.get("model")
    if body_model is not None and not isinstance(body_model, str):
        raise Rejected(400, "model must be a string")
    if query_model and body_model and query_model != body_model:
        raise Rejected(400, "the model in the query and the model in the body differ")
    return model(query_model or body_model, served)


def upload(req: func.HttpRequest, max_bytes: int,
           served: tuple[str, ...] = ()) -> tuple[str, int, str, dict, tuple[str, tuple[str, ...]] | None]:
    """(model, size, content type, params, webhook) of an upload request: `{"size", "content_type", "params"}`
    (and "webhook", "webhook_events")."""
    wrapper = json_object(req.get_body(), "JSON body") if req.get_body() else {}
    name = _body_model(req, wrapper, served)
    size = wrapper.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise Rejected(400, "the JSON body needs \"size\": the payload's length in bytes, a positive integer")
    if size > max_bytes:
        raise Rejected(413, f"the payload is larger than the upload limit of {max_bytes} bytes")
    kind = wrapper.get("content_type")
    if kind is not None and not isinstance(kind, str):
        raise Rejected(400, "content_type must be a string")
    extra = params(wrapper["params"]) if wrapper.get("params") is not None else params(req.params.get("params"))
    return name, size, content_type(kind), extra, webhook(req, wrapper)


WEBHOOK_EVENTS = ("started", "progress", "completed")


def webhook(req: func.HttpRequest, wrapper: dict) -> tuple[str, tuple[str, ...]] | None:
    """(url, events) of a submit's webhook - `webhook` and `webhook_events` in the query or the JSON
    body - or None. The URL's form and destination are checked by destinations.py."""
    url = wrapper.get("webhook", req.params.get("webhook"))
    events = wrapper.get("webhook_events", req.params.get("webhook_events"))
    if url is None or url == "":
        if events not in (None, ""):
            raise Rejected(400, "webhook_events needs a webhook URL")
        return None
    if not isinstance(url, str):
        raise Rejected(400, "webhook must be a URL string")
    if events is None or events == "":
        return url, ("completed",)
    names = events.split(",") if isinstance(events, str) else events
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() in WEBHOOK_EVENTS
                                                            for n in names):
        raise Rejected(400, "webhook_events must list events among started, progress and completed "
                            "(comma-separated, or a JSON list)")
    return url, tuple(n for n in WEBHOOK_EVENTS if n in {n.strip() for n in names})


def token_request(req: func.HttpRequest, served: tuple[str, ...] = ()) -> tuple[tuple[str, ...], int, int]:
    """(models, expires_in, max_tasks) of a token request: `{"models": [...], "expires_in": 600, "max_tasks": 20}`."""
    wrapper = json_object(req.get_body(), "JSON body")
    names = wrapper.get("models")
    if not isinstance(names, list) or not names or len(names) > MAX_TOKEN_MODELS:
        raise Rejected(400, f"\"models\" must list the 1 to {MAX_TOKEN_MODELS} model names the token may submit to")
    if not all(isinstance(name, str) for name in names):
        raise Rejected(400, "\"models\" must be a list of model names")
    models = tuple(dict.fromkeys(model(name, served) for name in names))
    expires_in = _whole(wrapper, "expires_in", 1, MAX_TOKEN_SECONDS, 600)
    max_tasks = _whole(wrapper, "max_tasks", 1, MAX_TOKEN_TASKS, 100)
    return models, expires_in, max_tasks


def _whole(wrapper: dict, name: str, low: int, high: int, default: int) -> int:
    value = wrapper.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Rejected(400, f"\"{name}\" must be a whole number from {low} to {high}")
    return value


def submission(req: func.HttpRequest, max_bytes: int,
               served: tuple[str, ...] = ()) -> tuple[str, bytes, str, dict, tuple[str, tuple[str, ...]] | None]:
    """(model, payload, content type, params, webhook) of a predict request, in either body form."""
    header_type = req.headers.get("content-type", "")
    raw = req.params.get("raw", "") in ("1", "true")
    query_model = req.params.get("model")
    body = req.get_body()
    if header_type.split(";")[0].strip().lower() == "application/json" and not raw:
        wrapper = json_object(body, "JSON body")
        payload = base64_payload(wrapper.get("payload"), max_bytes)
        name = _body_model(req, wrapper, served)
        kind = wrapper.get("content_type")
        if kind is not None and not isinstance(kind, str):
            raise Rejected(400, "content_type must be a string")
        extra = params(wrapper["params"]) if wrapper.get("params") is not None else params(req.params.get("params"))
    else:
        wrapper = {}
        payload, name, kind = body, model(query_model, served), header_type
        extra = params(req.params.get("params"))
    if not payload:
        raise Rejected(400, "the payload is empty")
    if len(payload) > max_bytes:
        raise too_large(max_bytes)
    return name, payload, content_type(kind), extra, webhook(req, wrapper)
