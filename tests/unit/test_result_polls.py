"""broker/result_polls.py: when a getresult wait looks for an outcome committed elsewhere."""

from __future__ import annotations

from broker.result_polls import AGE, MAX, MIN_SAMPLES, QUIET, SAMPLES, Durations, Schedule
from tests.support.clock import ManualClock

FIRST, CAP = 0.05, 0.5


def delays(schedule: Schedule, start: float, count: int) -> list[float]:
    """The delays of `count` looks in a row, the clock moving by each."""
    now, out = start, []
    for _ in range(count):
        out.append(round(schedule.next(now), 3))
        now += out[-1]
    return out


def test_without_a_window_the_looks_double_from_first_to_the_cap():
    assert delays(Schedule(100.0, None, FIRST, CAP), 100.0, 6) == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]


def test_with_a_window_there_is_no_look_before_it_opens_looks_a_step_apart_in_it_and_doubling_after():
    schedule = Schedule(64.0, (0.5, 1.0), FIRST, CAP)  # tasks lately took 0.5-1 s from submit
    assert delays(schedule, 64.125, 8) == [0.375, 0.125, 0.125, 0.125, 0.125, 0.05, 0.1, 0.2]
    # the first look when the window opens (64.5), then every (1.0 - 0.5) / 4 until it closes, then doubling


def test_until_a_far_window_opens_a_wait_still_looks_every_quiet_seconds():
    schedule = Schedule(64.0, (10.0, 20.0), FIRST, CAP)  # learned from a backlog, say, that has cleared since
    assert delays(schedule, 64.0, 3) == [QUIET] * 3


def test_a_wait_that_begins_late_looks_at_once_inside_the_window_and_at_first_past_it():
    assert delays(Schedule(100.0, (0.4, 0.8), FIRST, CAP), 100.6, 1) == [0.1]
    assert delays(Schedule(100.0, (0.4, 0.8), FIRST, CAP), 105.0, 3) == [0.05, 0.1, 0.2]
    narrow = Schedule(100.0, (0.4, 0.41), FIRST, CAP)  # the step is never under FIRST
    assert delays(narrow, 100.39, 2) == [0.05, 0.05]


def test_a_restart_after_a_full_read_doubles_from_first_again():
    schedule = Schedule(100.0, None, FIRST, CAP)
    delays(schedule, 100.0, 4)
    schedule.restart()
    assert delays(schedule, 101.0, 2) == [0.05, 0.1]


def test_the_window_is_the_10th_and_90th_percentile_of_the_recent_durations_once_enough_are_known():
    durations = Durations(ManualClock())
    for seconds in range(MIN_SAMPLES - 1):
        durations.note("m", "succeeded", seconds)
    assert durations.window("m") is None  # too few to go by
    durations.note("m", "succeeded", float("nan"))
    durations.note("m", "failed", -1.0)
    durations.note("m", "cancelled", 1.0)  # a client's time, not the model's
    durations.note("m", "expired", 1.0)
    assert durations.window("m") is None  # none of those counts
    for seconds in range(100):
        durations.note("m", "succeeded" if seconds % 2 else "failed", seconds / 10)
    assert durations.window("m") == (7.1, 9.6)  # of the last SAMPLES only (6.8 .. 9.9): the 4th and the 29th
    assert durations.window("other") is None


def test_durations_are_bounded():
    durations = Durations(ManualClock())
    for model in range(MAX + 5):
        for _ in range(SAMPLES + 3):
            durations.note(f"m{model}", "succeeded", 1.0)
    assert len(durations._models) <= MAX
    assert all(len(known) <= SAMPLES for known in durations._models.values())


def test_durations_older_than_age_no_longer_count():
    clock = ManualClock()
    durations = Durations(clock)
    for _ in range(MIN_SAMPLES):
        durations.note("m", "succeeded", 90.0)  # a backlog, ten minutes ago
    clock.advance(AGE - 1)
    assert durations.window("m") == (90.0, 90.0)
    clock.advance(2)
    assert durations.window("m") is None  # the plain schedule again
