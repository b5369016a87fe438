"""The recent-task views a wait may start from (broker/recent.py) stay bounded in number, age and bytes."""

from __future__ import annotations

from broker import recent
from broker.records import Outcome, Task


def test_views_are_bounded_in_number_and_age(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(recent.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(recent, "MAX", 3)
    tasks = recent.RecentTasks()
    for i in range(5):
        tasks.remember(Task(f"{i:032x}", "m", 1.0))
    assert len(tasks) == 3 and tasks.get(f"{0:032x}") is None and tasks.get(f"{4:032x}").task.model == "m"
    clock[0] += recent.SECONDS + 1
    assert tasks.get(f"{4:032x}") is None  # too old to trust
    tasks.remember(Task("f" * 32, "m", 2.0))
    assert len(tasks) == 1  # the old ones go as a new one comes


def test_result_bodies_are_bounded_each_and_in_all(monkeypatch):
    monkeypatch.setattr(recent, "MAX_BYTES", 3 * recent.MAX_BODY)
    tasks = recent.RecentTasks()
    ids = [f"{i:032x}" for i in range(5)]
    for task_id in ids:
        tasks.remember(Task(task_id, "m", 1.0), b"r" * recent.MAX_BODY)
    assert [task_id for task_id in ids if tasks.get(task_id)] == ids[2:]  # the oldest went to stay within bytes
    tasks.remember(Task("e" * 32, "m", 1.0), b"r" * (recent.MAX_BODY + 1))
    seen = tasks.get("e" * 32)
    assert seen.body is None and seen.task.task_id == "e" * 32  # too large to keep: a wait reads it from storage
    tasks.remember(Task(ids[4], "m", 1.0), b"small")  # the same task again replaces its entry and its bytes
    assert tasks.get(ids[4]).body == b"small" and tasks._bytes == 2 * recent.MAX_BODY + 5


def test_a_task_ended_here_is_not_replaced_by_its_queued_view():
    """A fast worker on this instance may put before its submit got to remember the queued view."""
    tasks = recent.RecentTasks()
    ended = Task("a" * 32, "m", 1.0, outcome=Outcome("succeeded", "m", 1.0, 2.0, 1.5, 1))
    tasks.remember(ended, b"result")
    tasks.remember(Task("a" * 32, "m", 1.0))
    assert tasks.get("a" * 32).task is ended and tasks.get("a" * 32).body == b"result"
