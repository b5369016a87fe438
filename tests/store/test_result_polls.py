"""A getresult wait looks for an outcome committed on another instance when the model's tasks found
that way lately say it may be there (broker/result_polls.py), on Azurite."""

from __future__ import annotations

import asyncio

from broker.result_polls import MIN_SAMPLES, QUIET
from broker.storage import Storage
from broker.store import RESULT_POLL_CAP, RESULT_POLL_FIRST, TaskStore

from .conftest import token


async def commit(store, model, body=b"done"):
    [claim] = await store.claim(model, 1, 0, 30)
    await store.complete(token(store, claim), body, "text/plain")


def learned_seconds(store, model) -> list[float]:
    return [seconds for _, seconds in store.durations._models.get(model, ())]


def recorded_waits(store) -> list[float]:
    """The timeout of each of the store's waits for a wake-up (a wait looks when one runs out)."""
    timeouts, real = [], store.wakeups.wait

    async def wait(ticket, timeout):
        timeouts.append(timeout)
        return await real(ticket, timeout)

    store.wakeups.wait = wait
    return timeouts


def test_an_outcome_a_wait_finds_committed_elsewhere_teaches_its_models_duration_one_handed_over_does_not(
        run_store, azurite, model):
    async def scenario(store):
        other = TaskStore(Storage(azurite.connection_string, 2), store.settings, clock=store.now)
        try:
            task, _ = await other.submit(model, b"p", "text/plain", {})
            waits = recorded_waits(store)
            waiting = asyncio.ensure_future(store.result(task.task_id, 20))
            while not waits:  # the wait has read the task, not ended yet: it will find the outcome by looking
                await asyncio.sleep(0.01)
            store.now.advance(3)  # the task takes 3 s from its submit, on the clock both instances share
            await commit(other, model)
            ended, body = await waiting
            learned = learned_seconds(store, model)
            here, _ = await store.submit(model, b"p", "text/plain", {})
            waiting = asyncio.ensure_future(store.result(here.task_id, 20))
            await asyncio.sleep(0)
            await commit(store, model)  # handed to the wait here: no look, nothing learned
            await waiting
        finally:
            await other.storage.close()
        return ended.status(store.now()), body, learned, learned_seconds(store, model)

    assert run_store(scenario) == ("succeeded", b"done", [3.0], [3.0])


def test_a_wait_does_not_look_before_its_models_tasks_usually_end(run_store, azurite, model):
    async def scenario(store):
        other = TaskStore(Storage(azurite.connection_string, 2), store.settings, clock=store.now)
        try:
            for _ in range(MIN_SAMPLES):
                store.durations.note(model, "succeeded", 10.0)  # found done elsewhere lately, 10 s after their submit
            task, _ = await other.submit(model, b"p", "text/plain", {})
            timeouts = recorded_waits(store)
            await store.result(task.task_id, 2.5)  # the clock stands still: the window never opens
            plain = TaskStore(Storage(azurite.connection_string, 2), store.settings, clock=store.now)
            try:
                plain_timeouts = recorded_waits(plain)
                await plain.result(task.task_id, 2)
            finally:
                await plain.storage.close()
        finally:
            await other.storage.close()
        return timeouts, plain_timeouts

    timeouts, plain = run_store(scenario)
    assert timeouts[0] == QUIET > RESULT_POLL_CAP  # not at 50 ms: one look a QUIET until the window opens
    assert max(timeouts) <= QUIET
    assert plain[:2] == [RESULT_POLL_FIRST, 2 * RESULT_POLL_FIRST]  # a store that learned nothing looks from 50 ms


def test_a_window_learned_from_a_backlog_gives_way_to_the_outcomes_waits_find_since(run_store, azurite, model):
    async def scenario(store):
        other = TaskStore(Storage(azurite.connection_string, 2), store.settings, clock=store.now)
        try:
            for _ in range(MIN_SAMPLES):
                store.durations.note(model, "succeeded", 90.0)  # a backlog, cleared since
            done, _ = await other.submit(model, b"p", "text/plain", {})
            await commit(other, model)
            for _ in range(3):
                await store.result(done.task_id, 5)  # read when it had ended already, three times over
            after_reads = store.durations.window(model)
            for _ in range(4):  # tasks that now take no time, committed elsewhere while a wait here waits
                task, _ = await other.submit(model, b"p", "text/plain", {})
                waits = recorded_waits(store)
                waiting = asyncio.ensure_future(store.result(task.task_id, 5))
                while not waits:
                    await asyncio.sleep(0.01)
                await commit(other, model)
                await waiting  # found by a look within QUIET, not at the window's 90 s
        finally:
            await other.storage.close()
        return after_reads, store.durations.window(model)

    after_reads, after_waits = run_store(scenario)
    assert after_reads == (90.0, 90.0)  # a result read after it ended teaches nothing
    assert after_waits == (0.0, 90.0)  # the waits look for the next ones from their submit on
