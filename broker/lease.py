"""Lease tokens: the opaque, URL-safe handle a worker holds on a claimed task.

A token carries what the broker needs to act on the claim without another read: the queue
message (id and pop receipt) to update or delete, and the facts about the task that go into its
outcome. It is signed (HMAC-SHA256 with a secret derived from the storage connection string, which
every instance of the app shares), so a worker cannot forge a claim or the facts it carries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
from dataclasses import dataclass, replace

from . import strictjson

MAC_BYTES = 16


class BadToken(ValueError):
    """The token is not one this broker issued for that task."""


def secret_for(connection_string: str) -> bytes:
    return hashlib.sha256(b"broker lease token\0" + connection_string.encode()).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _timestamp(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 < value < 1e11


@dataclass(frozen=True)
class Lease:
    task_id: str
    model: str
    msg: str
    receipt: str
    attempt: int
    created: float
    started: float
    digest: str | None = None

    def encode(self, secret: bytes) -> str:
        body = json.dumps([self.task_id, self.model, self.msg, self.receipt, self.attempt,
                           self.created, self.started, self.digest], separators=(",", ":")).encode()
        return f"{_b64(body)}.{_b64(hmac.new(secret, body, hashlib.sha256).digest()[:MAC_BYTES])}"

    def renewed(self, receipt: str) -> "Lease":
        return replace(self, receipt=receipt)

    def fingerprint(self) -> str:
        """Identifies this claim's commit, so a repeated put with the same token is recognised."""
        return hashlib.sha256(f"{self.msg}:{self.receipt}".encode()).hexdigest()[:24]

    @classmethod
    def decode(cls, token: str, task_id: str, secret: bytes) -> "Lease":
        try:
            body_text, _, mac_text = token.partition(".")
            body, mac = _unb64(body_text), _unb64(mac_text)
            signed = hmac.compare_digest(mac, hmac.new(secret, body, hashlib.sha256).digest()[:MAC_BYTES])
            lease = cls(*strictjson.loads(body)) if signed else None
        except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
            lease = None
        if lease is None or not lease._well_formed():
            raise BadToken("the lease token is malformed")
        if lease.task_id != task_id:
            raise BadToken("the lease token belongs to another task")
        return lease

    def _well_formed(self) -> bool:
        return (all(isinstance(v, str) for v in (self.task_id, self.model, self.msg, self.receipt))
                and isinstance(self.attempt, int) and not isinstance(self.attempt, bool)
                and _timestamp(self.created) and _timestamp(self.started)
                and (self.digest is None or isinstance(self.digest, str)))
