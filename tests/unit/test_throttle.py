"""broker/throttle.py: one run per interval per key, the last call of a burst not lost, and runs for
one key in the order they were asked for."""

from __future__ import annotations

import asyncio

from broker.throttle import Throttle
from tests.support.clock import ManualClock as Clock
from tests.support.polling import run_async


def test_a_burst_runs_once_at_once_and_once_at_the_end_of_the_interval_with_the_last_value():
    async def scenario():
        runs, clock = [], Clock()

        async def action(key, value):
            runs.append(value)

        throttle = Throttle(0.05, action, 10, clock)
        await throttle("k", 1)
        assert runs == [1]  # at once, awaited by the caller
        for value in (2, 3, 4):
            await throttle("k", value)
        assert runs == [1] and throttle.due("k")  # within the interval: nothing yet
        await asyncio.sleep(0.3)
        assert runs == [1, 4] and not throttle.due("k")  # one run at the interval's end, with the last value
        clock.at += 1
        await throttle("k", 5)
        assert runs == [1, 4, 5]  # an interval later: at once again

    run_async(scenario)


def test_a_run_that_is_due_waits_for_the_one_in_flight_so_the_last_value_lands_last():
    async def scenario():
        landed, clock = [], Clock()
        slow = asyncio.Event()

        async def action(key, value):
            if value == "busy":
                await slow.wait()  # a write that takes longer than the interval
            landed.append(value)

        throttle = Throttle(0.01, action, 10, clock)
        first = asyncio.create_task(throttle("w", "busy"))
        await asyncio.sleep(0)
        clock.at += 1  # the interval has passed, but the first run is still in flight
        await throttle("w", "idle")
        await asyncio.sleep(0.1)
        assert landed == []  # not run beside the first
        slow.set()
        await first
        await asyncio.sleep(0.1)
        assert landed == ["busy", "idle"]

    run_async(scenario)


def test_keys_are_throttled_apart_and_remembered_within_a_bound():
    async def scenario():
        runs = []

        async def action(key, value):
            runs.append(key)

        throttle = Throttle(10, action, 3, Clock())
        for key in ("a", "b", "a", "c", "b"):
            await throttle(key)
        assert runs == ["a", "b", "c"]
        await throttle("d")  # a fourth key: the others are forgotten, which only allows an extra run
        assert runs == ["a", "b", "c", "d"] and len(throttle._ran) <= 3
        for due in list(throttle._due.values()):
            due.task.cancel()

    run_async(scenario)
