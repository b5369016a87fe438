"""What the broker keeps about a task, and how it is written into blob metadata.

A task lives in two blobs named by its id:
- the inbox blob holds the payload; its metadata holds the submission (`task`) and, once the task
  has been claimed, the lease state (`state`);
- the outbox blob, written once when the task ends, holds the result (or the error as JSON);
  its metadata holds the outcome (`outcome`). Its existence is the one "finished" marker.

Metadata values must be ASCII header values, so each record is compact JSON with non-ASCII
escaped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

TERMINAL = ("succeeded", "failed", "cancelled")
MAX_ERROR_CHARS = 1000


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now() -> float:
    return time.time()


def clip_error(message: str) -> str:
    message = " ".join(str(message).split()) or "no reason given"
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 1] + "…"


def _dump(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True)
class Submission:
    """What a submit recorded; never changes."""

    task_id: str
    model: str
    content_type: str
    params: dict
    created: float
    digest: str | None = None  # payload hash, kept only for idempotent submits

    def metadata(self) -> dict:
        return {"task": _dump({"model": self.model, "ct": self.content_type, "params": self.params,
                               "created": self.created, "digest": self.digest})}

    @classmethod
    def from_metadata(cls, task_id: str, metadata: dict) -> "Submission":
        raw = json.loads(metadata["task"])
        return cls(task_id, raw["model"], raw["ct"], raw["params"], raw["created"], raw.get("digest"))


@dataclass
class LeaseState:
    """Who holds the task now (queue message id) and until when; kept beside the submission."""

    msg: str
    until: float | None  # None: given back or failed retryably, waiting in the queue again
    started: float
    attempt: int
    givebacks: int = 0  # claims handed back with seconds=0: they do not count as attempts
    error: str | None = None  # why the last attempt ended, for the "gave up" message

    def holds(self, at: float) -> bool:
        return self.until is not None and self.until > at

    def dump(self) -> str:
        return _dump(asdict(self))

    @classmethod
    def from_metadata(cls, metadata: dict) -> "LeaseState | None":
        raw = metadata.get("state")
        return cls(**json.loads(raw)) if raw else None


@dataclass(frozen=True)
class Outcome:
    """How a task ended; written once, with the outbox blob."""

    status: str
    model: str
    created: float
    finished: float
    started: float | None = None
    attempts: int = 0
    error: str | None = None
    digest: str | None = None
    committed_by: str | None = None  # hash of the lease token that committed it

    def metadata(self) -> dict:
        return {"outcome": _dump(asdict(self))}

    @classmethod
    def from_metadata(cls, metadata: dict) -> "Outcome":
        return cls(**json.loads(metadata["outcome"]))


@dataclass(frozen=True)
class Task:
    """A task as read back from storage: its submission, lease state and outcome (if any)."""

    task_id: str
    model: str
    created: float
    digest: str | None = None
    state: LeaseState | None = None
    outcome: Outcome | None = None
    result_content_type: str | None = None

    def status(self, at: float) -> str:
        if self.outcome:
            return self.outcome.status
        return "running" if self.state and self.state.holds(at) else "queued"

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def document(self, at: float | None = None) -> dict:
        at = now() if at is None else at
        out, state = self.outcome, self.state
        if out:
            started, attempts, finished, error = out.started, out.attempts, out.finished, out.error
        else:
            started = state.started if state and state.holds(at) else None
            attempts = state.attempt if state else 0
            finished, error = None, None
        return {
            "task_id": self.task_id,
            "model": self.model,
            "status": self.status(at),
            "created_at": iso(self.created),
            "started_at": iso(started),
            "finished_at": iso(finished),
            "attempts": attempts,
            "error": error,
            "result_content_type": self.result_content_type if out and out.status == "succeeded" else None,
        }
