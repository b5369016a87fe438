"""How `predict` reports its tasks on stderr: a redrawn bar on a terminal, plain lines elsewhere.

stdout stays free for results, so `python -m clients predict ... > out.json` works with either.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

DONE = ("succeeded", "failed", "cancelled", "expired", "timed out", "error")
BAR_WIDTH = 24
NONE_ONLINE = "waiting for a worker (none online)"


def describe(document: dict) -> str:
    """A task's state as a person wants it: who it waits for, how far it is."""
    status = str(document.get("status", ""))
    if status == "queued":
        if (document.get("workers") or {}).get("online") == 0:
            return NONE_ONLINE
        ahead = document.get("queue_position")
        return f"queued, {ahead} ahead" if isinstance(ahead, int) and ahead > 0 else "queued"
    fraction = document.get("progress")
    if status == "running" and isinstance(fraction, (int, float)):
        message = document.get("progress_message")
        return f"running {int(100 * fraction)}%" + (f" ({message})" if message else "")
    return status


def _step(document: dict) -> tuple:
    """What must change for a log to get a new line: the state, a tenth of progress, the message."""
    fraction = document.get("progress")
    tenth = int(10 * fraction) if isinstance(fraction, (int, float)) else None
    text = describe(document)
    return (document.get("status"), tenth, document.get("progress_message")) if tenth is not None else (text,)


class Lines:
    """One line per change of state: what a log file or a CI job wants."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.states: dict[str, str] = {}
        self.details: dict[str, str] = {}  # name -> describe() of its last status document
        self.said: dict[str, tuple] = {}
        self.lock = threading.Lock()
        self.upload_began: dict[str, float] = {}
        self.upload_steps: dict[str, int] = {}

    def update(self, name: str, document: dict) -> None:
        """A task's status document: a line when its state (or its progress, by tenths) changed."""
        with self.lock:
            self.states[name] = str(document.get("status", ""))
            self.details[name] = describe(document)
            step = _step(document)
            if self.said.get(name) != step:
                self.said[name] = step
                task_id = document.get("task_id")
                self._say(f"{name}: {self.details[name]}" + (f" (task {task_id})" if task_id else ""))

    def uploading(self, name: str, done: int, total: int) -> None:
        """Progress of a payload going straight to storage: a line at each tenth (and the rate)."""
        with self.lock:
            began = self.upload_began.setdefault(name, time.monotonic())
            step = 10 * done // max(total, 1)
            if self.upload_steps.get(name) == step:
                return
            self.upload_steps[name] = step
            self._upload_line(name, done, total, began)

    def _upload_line(self, name: str, done: int, total: int, began: float) -> None:
        rate = done / max(time.monotonic() - began, 1e-6) / 1e6
        self._say(f"{name}: uploading {100 * done // max(total, 1)}% ({done / 1e6:.1f} of {total / 1e6:.1f} MB, "
                  f"{rate:.1f} MB/s)")

    def finished(self, name: str, state: str, message: str) -> None:
        """A task's end; a failure's message is the one error line for that input."""
        with self.lock:
            self.states[name] = state
            self._say(f"{name}: {message}" if state == "succeeded" else f"error: {name}: {message}")

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def counts(self) -> dict[str, int]:
        states = list(self.states.values())
        done = sum(state in DONE for state in states)
        return {"done": done, "running": states.count("running"), "queued": states.count("queued"),
                "failed": done - states.count("succeeded")}

    def close(self) -> None:
        pass


class Bar(Lines):
    """A single status line redrawn in place; finished tasks scroll above it."""

    def _say(self, line: str) -> None:
        self.stream.write(f"\r\x1b[K{line}\n")
        self._draw()

    def update(self, name: str, document: dict) -> None:
        with self.lock:
            self.states[name] = str(document.get("status", ""))
            self.details[name] = describe(document)
            self._draw()

    def _upload_line(self, name: str, done: int, total: int, began: float) -> None:
        rate = done / max(time.monotonic() - began, 1e-6) / 1e6
        self.stream.write(f"\r\x1b[K{name}: uploading {100 * done // max(total, 1)}% "
                          f"({done / 1e6:.1f} of {total / 1e6:.1f} MB, {rate:.1f} MB/s)")
        self.stream.flush()

    def _draw(self) -> None:
        counts = self.counts()
        filled = BAR_WIDTH * counts["done"] // max(self.total, 1)
        self.stream.write(f"\r\x1b[K[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {counts['done']}/{self.total} done"
                          f"  {counts['running']} running  {counts['queued']} queued  {counts['failed']} failed"
                          f"{self._detail()}")
        self.stream.flush()

    def _detail(self) -> str:
        """One task's own state (a single input's progress), or that nobody serves the model."""
        waiting = [name for name, state in self.states.items() if state not in DONE]
        if self.total == 1 and waiting and self.details.get(waiting[0]) != self.states[waiting[0]]:
            return f"  {self.details[waiting[0]]}"
        if any(self.details.get(name) == NONE_ONLINE for name in waiting):
            return f"  {NONE_ONLINE}"
        return ""

    def close(self) -> None:
        with self.lock:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()


def display(total: int, stream: TextIO = sys.stderr) -> Lines:
    return Bar(total, stream) if stream.isatty() else Lines(total, stream)
