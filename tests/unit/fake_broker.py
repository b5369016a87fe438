"""An in-process broker with the worker's client interface (claim, extend, put_result, put_failure),
for driving the real worker loop in burst mode (as rq's `--burst`): it serves what is queued, then the
test stops the worker. It keeps the broker's rules that the worker relies on: a token per lease,
renewed by a heartbeat; a give-back keeps the attempt number; a retryable failure queues the task
again while attempts remain; the first outcome wins; a cancelled task answers 410."""

from __future__ import annotations

import base64
import itertools
import threading
import time
from dataclasses import dataclass, field

from mlserver.broker_api import Cancelled, LeaseLost, Unavailable


@dataclass
class FakeTask:
    task_id: str
    payload: bytes
    params: dict = field(default_factory=dict)
    content_type: str = "application/octet-stream"
    attempt: int = 0
    token: str | None = None
    status: str = "queued"
    result: bytes | None = None
    error: str | None = None
    givebacks: int = 0
    progress: list = field(default_factory=list)  # (fraction, message) reports, in order


class FakeBroker:
    url = "fake://broker"

    def __init__(self, max_attempts: int = 3) -> None:
        self.max_attempts = max_attempts
        self.tasks: dict[str, FakeTask] = {}
        self.queue: list[str] = []
        self.claims: list[list[str]] = []  # the task ids of each non-empty claim, in order
        self.put_faults: list[Exception] = []  # raised by the next puts, one each
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()

    def submit(self, task_id: str, payload: bytes = b"x", params: dict | None = None, attempt: int = 0) -> None:
        with self._lock:
            self.tasks[task_id] = FakeTask(task_id, payload, params or {}, attempt=attempt)
            self.queue.append(task_id)

    def settled(self) -> bool:
        with self._lock:
            return all(task.status not in ("queued", "running") for task in self.tasks.values())

    # ---- the worker's client interface -------------------------------------------------------------

    def claim(self, model: str, max_tasks: int, wait: int, lease: int, held: int = 0,
              poll: float | None = None) -> tuple[list[dict], int]:
        with self._lock:
            taken, self.queue = self.queue[:max_tasks], self.queue[max_tasks:]
            claims = []
            for task_id in taken:
                task = self.tasks[task_id]
                task.status, task.token = "running", f"t{next(self._tokens)}"
                task.attempt += 1
                claims.append({"task_id": task_id, "lease": task.token, "payload": base64.b64encode(task.payload).decode(),
                               "content_type": task.content_type, "params": task.params, "attempt": task.attempt})
            if taken:
                self.claims.append(taken)
        if not claims:
            time.sleep(min(wait, 0.05))
        return claims, 1024 * 1024

    def extend(self, task_id: str, lease: str, seconds: int) -> dict:
        with self._lock:
            task = self._held(task_id, lease)
            if seconds == 0:
                task.status, task.token = "queued", None
                task.attempt -= 1  # a give-back keeps the attempt number
                task.givebacks += 1
                self.queue.append(task_id)
                return {"lease": lease}
            task.token = f"t{next(self._tokens)}"
            return {"lease": task.token}

    def progress(self, task_id: str, lease: str, fraction: float, message: str) -> dict:
        with self._lock:
            task = self._held(task_id, lease)
            task.progress.append((fraction, message))
            return {"lease": lease}

    def put_result(self, task_id: str, lease: str, body: bytes, content_type: str) -> dict:
        return self._put(task_id, lease, "succeeded", result=body)

    def put_failure(self, task_id: str, lease: str, error: str, retryable: bool) -> dict:
        with self._lock:
            task = self.tasks[task_id]
            if retryable and task.attempt < self.max_attempts and task.token == lease:
                task.status, task.token, task.error = "queued", None, error
                self.queue.append(task_id)
                return {"task_id": task_id, "status": "queued"}
        return self._put(task_id, lease, "failed", error=error)

    def cancel(self, task_id: str) -> None:
        with self._lock:
            self.tasks[task_id].status = "cancelled"

    def close(self) -> None:
        pass

    def _put(self, task_id: str, lease: str, status: str, **outcome) -> dict:
        with self._lock:
            if self.put_faults:
                raise self.put_faults.pop(0)
            task = self.tasks[task_id]
            if task.status == "cancelled":
                raise Cancelled("the task was cancelled", 410)
            if task.status != "running":
                raise LeaseLost("the task's outcome was already put", 409)
            task.status = status
            for name, value in outcome.items():
                setattr(task, name, value)
            return {"task_id": task_id, "status": status}

    def _held(self, task_id: str, lease: str) -> FakeTask:
        task = self.tasks[task_id]
        if task.status == "cancelled":
            raise Cancelled("the task was cancelled", 410)
        if task.token != lease:
            raise LeaseLost("the lease is lost", 409)
        return task


def unavailable(status: int = 500) -> Unavailable:
    return Unavailable(f"the broker answered {status}", status)
