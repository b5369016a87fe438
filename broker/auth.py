"""Key checks: worker keys for worker routes, client keys (when configured) for client routes.

The app checks keys itself, identically under the dev host, `func start` and Azure. Keys are
compared as SHA-256 digests with `hmac.compare_digest`, against every configured key, so the
time taken says nothing about how much of a key was right.
"""

from __future__ import annotations

import hashlib
import hmac

import azure.functions as func

from .errors import Rejected
from .settings import Settings

WORKER = "worker"
CLIENT = "client"


def bearer(req: func.HttpRequest) -> str:
    return _bearer(req.headers.get("authorization", ""))


def _bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def matches(given: str, keys: tuple[str, ...]) -> bool:
    given_digest = _digest(given)
    found = False
    for key in keys:
        found |= hmac.compare_digest(given_digest, _digest(key))
    return found and bool(given)


def check(req: func.HttpRequest, settings: Settings, role: str | None) -> None:
    check_headers(req.headers, settings, role)


def check_headers(headers, settings: Settings, role: str | None) -> None:
    """The key check on a request's headers (any mapping with case-insensitive `get`, or lowercase keys)."""
    given = _bearer(headers.get("authorization", ""))
    if role == WORKER:
        if not settings.worker_keys:
            raise Rejected(503, "no worker key configured")
        if not matches(given, settings.worker_keys):
            raise Rejected(401, "a valid worker key is required (Authorization: Bearer <key>)",
                           headers={"WWW-Authenticate": "Bearer"})
    elif role == CLIENT and settings.client_keys:
        if not matches(given, settings.client_keys):
            raise Rejected(401, "a valid client key is required (Authorization: Bearer <key>)",
                           headers={"WWW-Authenticate": "Bearer"})


def client_scope(req: func.HttpRequest, settings: Settings) -> str:
    """Idempotency keys are per client key (when client keys are in use), never shared across them."""
    return _digest(bearer(req)).hex()[:16] if settings.client_keys else ""
