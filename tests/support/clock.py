"""A clock a test sets by hand, for code that takes its clock as an argument (time.time or
time.monotonic in production)."""

from __future__ import annotations


class ManualClock:
    def __init__(self, at: float = 1000.0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += seconds
