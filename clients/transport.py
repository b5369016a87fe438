"""One HTTP session to the broker: retries with backoff, and the broker's errors as exceptions.

Connection errors, read errors, 429 and 503 are retried for every method, POST included (after
the broker's Retry-After): a submit carries an Idempotency-Key and a cancel repeats harmlessly, so a
retry never does a thing twice.
"""

from __future__ import annotations

import re

import requests
from urllib3.util.retry import Retry

from . import blobs
from .errors import BrokerHTTPError, BrokerUnavailable

POOL_SIZE = 16  # the CLI waits on several tasks at once, one long-poll each


def session(base_url: str, retries: int, backoff: float) -> requests.Session:
    # 429 (over the broker's rate limit) and 503 wait as long as the broker's Retry-After says.
    retry = Retry(total=retries, connect=retries, read=retries, status=retries, other=0,
                  status_forcelist=(429, 503), allowed_methods=None, backoff_factor=backoff, backoff_max=10,
                  respect_retry_after_header=True, raise_on_status=False)
    return blobs.pinned_session(base_url, POOL_SIZE, retry)


def reason(exc: Exception) -> str:
    """The useful end of requests' long connection messages ("Connection refused", "timed out")."""
    text = str(exc)
    found = re.findall(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found[-1].strip().lower()
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    return type(exc).__name__


def send(http: requests.Session, method: str, base_url: str, route: str, **kwargs) -> requests.Response:
    try:
        return http.request(method, f"{base_url}/{route}", **kwargs)
    except requests.RequestException as exc:
        raise BrokerUnavailable(f"cannot reach the broker at {base_url} ({reason(exc)})") from None


def error_message(response: requests.Response) -> tuple[str, dict | None]:
    """The broker's one sentence and its JSON body; a sentence of our own for a body that is not JSON."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]:
        return body["error"], body
    return f"the broker answered HTTP {response.status_code} {response.reason or ''}".strip(), \
        body if isinstance(body, dict) else None


def raise_for(response: requests.Response) -> None:
    message, body = error_message(response)
    raise BrokerHTTPError(response.status_code, message, body)


def retry_after(response: requests.Response, default: float = 1.0) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", default)))
    except ValueError:  # the HTTP-date form; the broker sends seconds
        return default
