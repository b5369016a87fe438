"""The errors that cross from validation and the task store to the wire.

The store raises domain errors (a task not found, a lease lost, a task already finished...), each
one sentence, with the task (records.Task) when the answer carries its status document; the storage
adapter raises StorageUnavailable and RecordUnreadable; respond.py maps them all to status codes in
one table. Validation and key checks, which are about the request itself, raise `Rejected` with the
status they mean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .records import Task


class BrokerError(Exception):
    """A request the broker refuses; `message` is one sentence, `task` the task whose status document
    the answer carries (if any), `headers` any the answer needs (Retry-After, WWW-Authenticate)."""

    def __init__(self, message: str, task: Task | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.task = task
        self.headers = headers or {}


class TaskNotFound(BrokerError):
    def __init__(self) -> None:
        super().__init__("no task with that id exists (it may have expired)")


class LeaseLost(BrokerError):
    def __init__(self) -> None:
        super().__init__("the lease is lost: it ran out and the task was claimed again, it was given back, "
                         "or the task finished")


class TaskFinished(BrokerError):
    """The task already has an outcome, and not the one this request would give it."""


class TaskCancelled(BrokerError):
    pass


class TaskExpired(BrokerError):
    pass


class IdempotencyConflict(BrokerError):
    pass


class UploadPending(BrokerError):
    """An uploaded task not committed yet: it is no task for anyone but its commit."""

    def __init__(self) -> None:
        super().__init__("the task's upload is not committed yet: PUT its payload to the upload_url, "
                         "then POST /commit")


class NotUploaded(BrokerError):
    """A commit (of a payload, or of a worker's result) that finds nothing, or not what was declared,
    uploaded."""


class UploadTooLarge(BrokerError):
    pass


class UploadLapsed(BrokerError):
    def __init__(self) -> None:
        super().__init__("the upload's time ran out before its commit: start again (POST /upload)")


class NotAnUpload(BrokerError):
    def __init__(self) -> None:
        super().__init__("this task's payload was sent with the request, not uploaded: there is nothing to commit")


class RateLimited(BrokerError):
    """Over BROKER_RATE_LIMIT: the answer says when the window ends (Retry-After)."""

    def __init__(self, limit: int, period: int, retry_after: int) -> None:
        unit = {1: "second", 60: "minute", 3600: "hour"}.get(period, f"{period} s")
        super().__init__(f"over the rate limit of {limit} requests a {unit}; retry in {retry_after} s",
                         headers={"Retry-After": str(retry_after)})


class QuotaUsed(BrokerError):
    def __init__(self, max_tasks: int) -> None:
        super().__init__(f"this token's quota of {max_tasks} tasks is used up: ask for a new token")


class TokenRevoked(BrokerError):
    def __init__(self) -> None:
        super().__init__("the token was revoked", headers={"WWW-Authenticate": "Bearer"})


class ModelNotCovered(BrokerError):
    def __init__(self, model: str) -> None:
        super().__init__(f"this token does not cover model {model}")


class TaskChanging(BrokerError):
    """The task changed between two reads; the same request a moment later will do."""

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class StorageUnavailable(BrokerError):
    """Storage did not answer, or answered with a server error; asking again shortly may work."""

    def __init__(self) -> None:
        super().__init__("storage is unavailable right now; retry shortly", headers={"Retry-After": "2"})


class RecordUnreadable(BrokerError):
    """Storage answered with something the broker cannot read back (a header over 8 KiB)."""

    def __init__(self) -> None:
        super().__init__("the task's stored record cannot be read")


class Rejected(BrokerError):
    """A refusal about the request itself (its form, size or key), with the status it means."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message, None, headers)
        self.status = status
