"""Lease tokens: the opaque, URL-safe handle a worker holds on a claimed task.

A token carries what the broker needs to act on the claim without another read: the queue
message (id and pop receipt) to update or delete, which claim of the task it is (`claim`, counted
per task), and the facts about the task that go into its outcome. It is signed with HMAC-SHA256
under the app setting BROKER_LEASE_SECRET, which every instance of the app shares; several
comma-separated values may be set while rotating it (the first signs, every one verifies), so a
worker can neither forge a claim nor alter the facts it carries.

A signed token is not yet a live one: the task's lease state (records.LeaseState) says which
claim and which pop receipt are current, and the store refuses every other token before it
writes anything.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import math
from dataclasses import dataclass, replace

from . import strictjson
from .signing import seal, unseal

PURPOSE = b"lease"


class BadToken(ValueError):
    """The token is not one this broker issued for that task."""


def _timestamp(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 < value < 1e11


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1_000_000


def receipt_hash(receipt: str) -> str:
    """What the lease state keeps of a pop receipt: enough to tell the current token from older ones."""
    return hashlib.sha256(receipt.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Lease:
    task_id: str
    model: str
    msg: str
    receipt: str
    claim: int  # the task's claim this lease belongs to: 1 for its first delivery, then 2, 3, ...
    attempt: int
    created: float
    started: float
    digest: str | None = None
    upload: bool = False  # the payload lives in `uploads` (records.payload_blob): the task's end deletes it there
    owner: str | None = None  # whose task it is, for its outcome (records.Submission.owner)
    deadline: float | None = None  # the task's ttl deadline (records.Submission.deadline)
    hooked: bool = False  # the task has a webhook: its end reads the submission for it

    def encode(self, secrets: tuple[bytes, ...]) -> str:
        body = json.dumps([self.task_id, self.model, self.msg, self.receipt, self.claim, self.attempt,
                           self.created, self.started, self.digest, self.upload, self.owner, self.deadline,
                           self.hooked],
                          separators=(",", ":")).encode()
        return seal(PURPOSE, secrets[0], body)

    def renewed(self, receipt: str) -> Lease:
        return replace(self, receipt=receipt)

    def commit_id(self, status: str, content_type: str, body: bytes) -> str:
        """Identifies one put of this claim: a repeated put (the same outcome, type and bytes) matches
        the commit it repeats; any other put does not."""
        digest = hashlib.sha256(body).hexdigest()
        return hashlib.sha256(f"{self.task_id}:{self.claim}:{status}:{content_type}:{digest}".encode()).hexdigest()[:24]

    @classmethod
    def decode(cls, token: str, task_id: str, secrets: tuple[bytes, ...]) -> Lease:
        try:
            body = unseal(PURPOSE, secrets, token)
            lease = cls(*strictjson.loads(body)) if body is not None else None
        except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
            lease = None
        if lease is None or not lease._well_formed():
            raise BadToken("the lease token is malformed")
        if lease.task_id != task_id:
            raise BadToken("the lease token belongs to another task")
        return lease

    def _well_formed(self) -> bool:
        return (all(isinstance(v, str) for v in (self.task_id, self.model, self.msg, self.receipt))
                and _count(self.claim) and _count(self.attempt)
                and _timestamp(self.created) and _timestamp(self.started)
                and (self.digest is None or isinstance(self.digest, str)) and isinstance(self.upload, bool)
                and (self.owner is None or isinstance(self.owner, str))
                and (self.deadline is None or _timestamp(self.deadline)) and isinstance(self.hooked, bool))
