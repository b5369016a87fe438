"""What the client raises. Every message is one sentence a person can act on."""

from __future__ import annotations


class BrokerError(Exception):
    """The base of every error this library raises on purpose."""


class BrokerUnavailable(BrokerError):
    """The broker could not be reached (or did not answer) even after retrying."""


class BrokerHTTPError(BrokerError):
    """The broker refused a request; `message` is its own one-sentence reason."""

    def __init__(self, status: int, message: str, document: dict | None = None) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.message = message
        self.document = document


class TaskFailed(BrokerError):
    """The task ended `failed`; `error` is the reason the worker or the broker gave."""

    def __init__(self, task_id: str, error: str, document: dict | None = None) -> None:
        super().__init__(f"task {task_id} failed: {error}")
        self.task_id = task_id
        self.error = error
        self.document = document


class TaskCancelled(BrokerError):
    def __init__(self, task_id: str, document: dict | None = None) -> None:
        super().__init__(f"task {task_id} was cancelled")
        self.task_id = task_id
        self.document = document


class TaskExpired(BrokerError):
    """The task ended `expired`: nobody started it within the broker's queued time-to-live."""

    def __init__(self, task_id: str, document: dict | None = None) -> None:
        reason = (document or {}).get("error") or "it was not started in time"
        super().__init__(f"task {task_id} expired: {reason}")
        self.task_id = task_id
        self.document = document


class TaskTimeout(BrokerError, TimeoutError):
    """Waiting ran out; the task itself may still finish later (it is not cancelled)."""

    def __init__(self, task_id: str, seconds: float) -> None:
        super().__init__(f"task {task_id} did not finish within {seconds:g} s (it may still finish; "
                         f"ask for its result later)")
        self.task_id = task_id
        self.seconds = seconds
