"""Key checks: worker keys for worker routes, client keys (when configured) for client routes, where
a token minted from a client key (tokens.py) stands for that key.

The app checks keys itself, identically under the dev host, `func start` and Azure. Keys are
compared as SHA-256 digests with `hmac.compare_digest`, against every configured key, so the
time taken says nothing about how much of a key was right. A client request's `Caller` says whose
it is: the scope of its key (a digest, never the key), and the token it came with, if any.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

import azure.functions as func

from .errors import ModelNotCovered, Rejected
from .settings import Settings
from .tokens import BadToken, Token, looks_like_token

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


@dataclass(frozen=True)
class Caller:
    """Whose a client request is. `scope` names the client key (or the key a token was minted from)
    without holding it; "" on a broker without client keys, where tasks belong to nobody."""

    scope: str = ""
    token: Token | None = None

    @property
    def owner(self) -> str | None:
        """The owner a task must have for this caller to see it; None: any (no client keys)."""
        return self.scope or None

    def may_submit(self, model: str) -> None:
        if self.token is not None and not self.token.covers(model):
            raise ModelNotCovered(model)


def check(req: func.HttpRequest, settings: Settings, role: str | None) -> Caller:
    return check_headers(req.headers, settings, role)


def check_headers(headers, settings: Settings, role: str | None) -> Caller:
    """The key check on a request's headers (any mapping with case-insensitive `get`, or lowercase keys);
    for a client route, who is asking."""
    given = _bearer(headers.get("authorization", ""))
    if role == WORKER:
        if not settings.worker_keys:
            raise Rejected(503, "no worker key configured")
        if not matches(given, settings.worker_keys):
            raise Rejected(401, "a valid worker key is required (Authorization: Bearer <key>)",
                           headers={"WWW-Authenticate": "Bearer"})
    elif role == CLIENT and settings.client_keys:
        if matches(given, settings.client_keys):
            return Caller(scope_of(given))
        if looks_like_token(given):
            try:
                token = Token.decode(given, settings.lease_secrets, time.time())
            except BadToken as exc:
                raise Rejected(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
            return Caller(token.owner, token)
        raise Rejected(401, "a valid client key or token is required (Authorization: Bearer <key or token>)",
                       headers={"WWW-Authenticate": "Bearer"})
    return Caller()


def scope_of(key: str) -> str:
    """What names a client key where a task, an idempotency key or a token must say whose it is."""
    return _digest(key).hex()[:16]
