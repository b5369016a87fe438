"""The one error type that crosses from validation and the task store to the wire."""

from __future__ import annotations


class Rejected(Exception):
    """A request the broker answers with an error status and one clear sentence.

    `document` is the task's status document when the answer carries it (409, 410, 422).
    """

    def __init__(self, status: int, message: str, document: dict | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.document = document
        self.headers = headers or {}


def not_found() -> Rejected:
    return Rejected(404, "no task with that id exists (it may have expired)")
