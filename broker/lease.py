"""Lease tokens: the opaque, URL-safe handle a worker holds on a claimed task.

A token carries what the broker needs to act on the claim without another read: the queue
message (id and pop receipt) to update or delete, and the facts about the task that go into its
outcome. It is not a secret beyond the worker key: the pop receipt alone is what proves the claim.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, replace


class BadToken(ValueError):
    """The token is not one this broker issued for that task."""


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

    def encode(self) -> str:
        raw = json.dumps([self.task_id, self.model, self.msg, self.receipt, self.attempt,
                          self.created, self.started, self.digest], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    def renewed(self, receipt: str) -> "Lease":
        return replace(self, receipt=receipt)

    def fingerprint(self) -> str:
        """Identifies this claim's commit, so a repeated put with the same token is recognised."""
        return hashlib.sha256(f"{self.msg}:{self.receipt}".encode()).hexdigest()[:24]

    @classmethod
    def decode(cls, token: str, task_id: str) -> "Lease":
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            fields = json.loads(raw)
            lease = cls(*fields)
            valid = (isinstance(lease.msg, str) and isinstance(lease.receipt, str)
                     and isinstance(lease.attempt, int) and isinstance(lease.model, str))
        except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
            valid = False
        if not valid:
            raise BadToken("the lease token is malformed")
        if lease.task_id != task_id:
            raise BadToken("the lease token belongs to another task")
        return lease
