"""A claimed task as the worker holds it, and the ledger of every task in hand.

The ledger is what the heartbeat keeps alive and what a shutdown gives back. Each task has a lock
so a heartbeat never swaps the lease token under a report that is using it.
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Task:
    task_id: str
    lease: str
    lease_seconds: int
    payload: bytes
    content_type: str
    params: dict
    attempt: int
    payload_url: str | None = None  # a large payload: downloaded by the fetch thread into `payload`
    size: int = 0
    result_upload_url: str | None = None  # where a large result goes (renewed by heartbeats)
    inline_bytes: int = 1024 * 1024  # results larger than this go through result_upload_url
    claimed_at: float = field(default_factory=time.monotonic)
    progress_sent_at: float = 0.0  # when its progress was last sent (reporter.Reporter.progress)
    renew_at: float = 0.0
    cancelled: bool = False  # the client cancelled it: do no more work, put nothing
    lease_lost: bool = False  # another claim may hold it: stop renewing, but still try to put
    decoded: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.schedule_renewal()

    @classmethod
    def from_claim(cls, claim: dict, lease_seconds: int, inline_bytes: int | None = None) -> Task:
        return cls(task_id=claim["task_id"], lease=claim["lease"], lease_seconds=lease_seconds,
                   payload=base64.b64decode(claim.get("payload") or ""),
                   content_type=claim.get("content_type") or "application/octet-stream",
                   params=claim.get("params") or {}, attempt=int(claim.get("attempt") or 1),
                   payload_url=claim.get("payload_url"), size=int(claim.get("size") or 0),
                   result_upload_url=claim.get("result_upload_url"),
                   inline_bytes=inline_bytes or cls.inline_bytes)

    @property
    def suspect(self) -> bool:
        """Back for another attempt: it may be what killed the last worker that held it, so it runs
        alone, with nothing else held meanwhile (worker.run_batch, Fetcher.take)."""
        return self.attempt > 1

    def schedule_renewal(self) -> None:
        # Renew at half the lease: one missed heartbeat (a slow or failed request) still leaves time.
        self.renew_at = time.monotonic() + self.lease_seconds / 2


class Ledger:
    """The tasks this worker holds a lease on, from claim until their outcome is put or given back."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._lock = threading.Lock()

    def add(self, tasks: list[Task]) -> None:
        with self._lock:
            self._tasks.update((task.task_id, task) for task in tasks)

    def remove(self, task: Task) -> None:
        with self._lock:
            self._tasks.pop(task.task_id, None)

    def held(self) -> list[Task]:
        with self._lock:
            return list(self._tasks.values())
