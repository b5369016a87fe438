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


class Lines:
    """One line per change of state: what a log file or a CI job wants."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.states: dict[str, str] = {}
        self.lock = threading.Lock()
        self.upload_began: dict[str, float] = {}
        self.upload_steps: dict[str, int] = {}

    def update(self, name: str, state: str, task_id: str = "") -> None:
        with self.lock:
            if self.states.get(name) != state:
                self.states[name] = state
                self._say(f"{name}: {state}" + (f" (task {task_id})" if task_id else ""))

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

    def update(self, name: str, state: str, task_id: str = "") -> None:
        with self.lock:
            self.states[name] = state
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
                          f"  {counts['running']} running  {counts['queued']} queued  {counts['failed']} failed")
        self.stream.flush()

    def close(self) -> None:
        with self.lock:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()


def display(total: int, stream: TextIO = sys.stderr) -> Lines:
    return Bar(total, stream) if stream.isatty() else Lines(total, stream)
