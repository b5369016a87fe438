"""In-process wake-ups (broker/wakeups.py): a queued task wakes one waiting long-poll, not all of
them; a committed result wakes every wait on its task; nothing is kept for keys nobody watches."""

from __future__ import annotations

import asyncio

from broker.wakeups import Wakeups
from tests.support.polling import run_async


async def waiting(wakeups: Wakeups, key: str, count: int, timeout: float = 5, last_timeout: float | None = None):
    """`count` watchers of `key`, each in Wakeups.wait (the last for `last_timeout`, given one); their
    results, once they come."""
    entered = []

    async def one(i):
        with wakeups.watch(key) as ticket:
            entered.append(i)
            waits = last_timeout if last_timeout is not None and i == count - 1 else timeout
            return i, await wakeups.wait(ticket, waits), ticket.value

    tasks = [asyncio.ensure_future(one(i)) for i in range(count)]
    while len(entered) < count:
        await asyncio.sleep(0)
    await asyncio.sleep(0)  # each is in its wait now
    return tasks


def test_notify_one_wakes_the_watcher_waiting_longest_and_no_other():
    async def scenario():
        wakeups = Wakeups()
        tasks = await waiting(wakeups, "model:m", 3, last_timeout=0.3)
        wakeups.notify_one("model:m")
        first = await tasks[0]
        wakeups.notify_one("model:m")
        second = await tasks[1]
        third = await tasks[2]  # nobody woke it: its time ran out
        return first, second, third, len(wakeups)

    first, second, third, left = run_async(scenario)
    assert (first[:2], second[:2], third[:2], left) == ((0, True), (1, True), (2, False), 0)


def test_notify_one_with_nobody_waiting_wakes_every_watcher_to_look_again():
    async def scenario():
        wakeups = Wakeups()
        with wakeups.watch("model:m") as a, wakeups.watch("model:m") as b:  # both busy looking at storage
            wakeups.notify_one("model:m")
            return await wakeups.wait(a, 0.01), await wakeups.wait(b, 0.01)

    assert run_async(scenario) == (True, True)


def test_notify_wakes_every_wait_on_a_task_with_what_it_carries():
    async def scenario():
        wakeups = Wakeups()
        tasks = await waiting(wakeups, "task:t", 3)
        wakeups.notify("task:t", "the outcome")
        return [await task for task in tasks], len(wakeups)

    results, left = run_async(scenario)
    assert results == [(0, True, "the outcome"), (1, True, "the outcome"), (2, True, "the outcome")] and left == 0
