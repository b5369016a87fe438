"""What an instance remembers of its looks at a queue (broker/looks.py): a queue found short is
trusted only until something is queued here, and only for the time asked; a task queued here is
covered by a look that began after it; bounded in models."""

from __future__ import annotations

from broker import looks


def test_a_short_look_makes_the_queue_quiet_until_a_task_is_queued_here(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(looks.time, "monotonic", lambda: clock[0])
    seen = looks.Looks()
    assert not seen.quiet("m", 0.1) and not seen.within("m", 0.1)  # never looked
    look = seen.began("m")
    seen.ended("m", look, short=True)
    assert seen.quiet("m", 0.1) and seen.within("m", 0.1)
    clock[0] += 0.2
    assert not seen.quiet("m", 0.1) and not seen.within("m", 0.1)  # too long ago
    seen.ended("m", seen.began("m"), short=True)
    seen.announced("m")
    assert not seen.quiet("m", 0.1)  # something was queued here since
    seen.ended("m", seen.began("m"), short=True)
    assert seen.quiet("m", 0.1)
    seen.ended("m", seen.began("m"), short=False)
    assert not seen.quiet("m", 0.1)  # a full look since says there may be more


def test_a_look_during_which_a_task_was_queued_here_proves_nothing(monkeypatch):
    seen = looks.Looks()
    look = seen.began("m")
    seen.announced("m")  # queued while the receive was in flight: the receive may not have seen it
    seen.ended("m", look, short=True)
    assert not seen.quiet("m", 10)


def test_only_a_look_that_began_after_the_last_task_queued_here_covers_it(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(looks.time, "monotonic", lambda: clock[0])
    seen = looks.Looks()
    assert not seen.covered("m")  # never looked
    look = seen.began("m")
    clock[0] += 0.01
    seen.announced("m")  # queued while that look was in flight: it may have missed the task
    assert not seen.covered("m")
    clock[0] += 0.01
    seen.ended("m", look, short=True)
    assert not seen.covered("m")  # ending is not beginning
    seen.began("m")
    assert seen.covered("m")
    clock[0] += 0.01
    seen.announced("m")  # another one: the look before it does not cover it
    assert not seen.covered("m")


def test_models_remembered_are_bounded(monkeypatch):
    monkeypatch.setattr(looks, "MAX", 3)
    seen = looks.Looks()
    for i in range(10):
        seen.ended(f"m{i}", seen.began(f"m{i}"), short=True)
    assert len(seen._models) <= 3 and seen.quiet("m9", 10) and not seen.quiet("m0", 10)
