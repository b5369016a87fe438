"""The recent-task views a wait may start from (broker/recent.py) stay bounded in number and age."""

from __future__ import annotations

from broker import recent
from broker.records import Task


def test_views_are_bounded_in_number_and_age(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(recent.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(recent, "MAX", 3)
    tasks = recent.RecentTasks()
    for i in range(5):
        tasks.remember(Task(f"{i:032x}", "m", 1.0))
    assert len(tasks) == 3 and tasks.get(f"{0:032x}") is None and tasks.get(f"{4:032x}").model == "m"
    clock[0] += recent.SECONDS + 1
    assert tasks.get(f"{4:032x}") is None  # too old to trust
    tasks.remember(Task("f" * 32, "m", 2.0))
    assert len(tasks) == 1  # the old ones go as a new one comes
