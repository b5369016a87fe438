"""Where a queued task stands (broker/presence.py), over a storage fake that counts its calls: the
fast layer beside tests/mlserver/test_queue_view.py, which runs it on Azurite with real workers."""

from __future__ import annotations

import asyncio

from broker import presence as presence_module
from broker.presence import Presence
from broker.records import TaskMessage
from broker.storage import Message
from tests.support.clock import ManualClock as Clock
from tests.support.polling import run_async

A, B, C = "a" * 32, "b" * 32, "c" * 32


class Queue:
    def __init__(self) -> None:
        self.line: list[str] = []  # visible messages, in order
        self.held = 0  # messages workers hold (invisible: counted in the depth only)
        self.calls = 0

    async def peek(self, model: str, count: int) -> list[Message]:
        self.calls += 1
        return [Message(f"m{i}", "r", TaskMessage(task_id, 1, 1.0).dump()) for i, task_id in enumerate(self.line[:count])]

    async def depth(self, model: str) -> int:
        self.calls += 1
        return len(self.line) + self.held


class Signals:
    def __init__(self) -> None:
        self.calls = 0

    async def page(self, continuation, size, metadata=False, uncommitted=False, prefix=None):
        self.calls += 1
        await asyncio.sleep(0.01)
        return [], None


class GatedSignals(Signals):
    """A listing of the workers that takes until the test opens `gate`, once it is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Future | None = None

    async def page(self, continuation, size, metadata=False, uncommitted=False, prefix=None):
        self.calls += 1
        if self.gate is not None:
            await self.gate
        return [], None


class SlowQueue(Queue):
    """Peeks that take until the test lets them answer (`open`), or fail (`fail`)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Future | None = None

    async def peek(self, model: str, count: int) -> list[Message]:
        if self.gate is None:
            self.gate = asyncio.get_running_loop().create_future()
        await self.gate
        return await super().peek(model, count)

    def open(self, error: Exception | None = None) -> None:
        gate, self.gate = self.gate, None
        gate.set_exception(error) if error else gate.set_result(None)


class Storage:
    def __init__(self) -> None:
        self.queues, self.signals = Queue(), Signals()

    async def ensure_containers(self) -> None:
        pass


def test_tasks_this_instance_queued_since_its_view_are_placed_without_a_storage_call():
    storage = Storage()
    presence = Presence(storage)

    async def scenario():
        places = []
        for task_id in (A, B, C):
            storage.queues.line.append(task_id)  # what sending its message does
            presence.joined("m", task_id)
            places.append((await presence.describe(task_id, "m"))["queue_position"])
        return places

    assert run_async(scenario) == [0, 1, 2]
    assert storage.queues.calls == 2  # one view (a peek and a count), taken for the first


def test_a_task_another_instance_queued_since_the_view_has_the_line_looked_at_again():
    storage = Storage()
    presence = Presence(storage)

    async def scenario():
        storage.queues.line.append(A)
        presence.joined("m", A)
        first = (await presence.describe(A, "m"))["queue_position"]
        storage.queues.line.append(B)  # queued by another instance: not joined here
        return first, (await presence.describe(B, "m"))["queue_position"]

    assert run_async(scenario) == (0, 1)
    assert storage.queues.calls == 4  # the first view, and a fresh one for the stranger


def test_a_task_queued_here_and_taken_before_the_view_was_taken_needs_no_second_look():
    """With workers waiting, a task can be claimed before its submit's answer takes a view of the
    line: it is missing from that view, yet it was queued here, so the line is not looked at again."""
    storage = Storage()
    presence = Presence(storage)

    async def scenario():
        places = []
        for task_id in (A, B):
            presence.joined("m", task_id)  # queued here, and taken by a worker at once
            presence._lines.clear()  # the view has run out by the time its answer is written
            places.append((await presence.describe(task_id, "m"))["queue_position"])
        return places

    assert run_async(scenario) == [0, 0]
    assert storage.queues.calls == 4  # one view (a peek and a count) for each, none again


def test_the_tasks_queued_here_that_are_remembered_are_bounded(monkeypatch):
    from broker import presence as module
    monkeypatch.setattr(module, "MAX_JOINED", 3)
    storage = Storage()
    presence = Presence(storage)

    async def scenario():
        for i in range(10):
            presence.joined(f"m{i % 2}", f"{i:032x}")
            if i % 3 == 0:
                await presence.line(f"m{i % 2}", fresh=True)
            held = sum(map(len, presence._joined.values())) + sum(map(len, presence._before.values()))
            assert held == presence._joined_count <= 3

    run_async(scenario)


def test_tasks_workers_hold_do_not_push_a_new_task_back_in_a_short_line():
    """Held messages count in the queue's depth, not in the line: a task queued behind an empty
    visible line is first, whatever the workers hold (and however stale their count is)."""
    storage = Storage()
    storage.queues.held = 8
    presence = Presence(storage)

    async def scenario():
        await presence.describe(A, "m")  # some earlier look: the line is empty, 8 held
        storage.queues.line.append(B)
        presence.joined("m", B)
        return (await presence.describe(B, "m"))["queue_position"]

    assert run_async(scenario) == 0


def test_requests_that_come_while_a_view_is_taken_share_it():
    storage = Storage()
    storage.queues = SlowQueue()
    presence = Presence(storage)

    async def scenario():
        storage.queues.line.append(A)
        first = asyncio.ensure_future(presence.describe(A, "m"))
        await asyncio.sleep(0.01)
        others = [asyncio.ensure_future(presence.describe(A, "m")) for _ in range(4)]
        await asyncio.sleep(0.01)
        first.cancel()  # the one whose request began the view goes away: the others still get it
        storage.queues.open()
        places = [doc["queue_position"] for doc in await asyncio.wait_for(asyncio.gather(*others), 5)]
        return first.cancelled(), places

    assert run_async(scenario) == (True, [0, 0, 0, 0])
    assert storage.queues.calls == 2  # one view: a peek and a count
    assert storage.signals.calls == 1  # and one listing of the workers


def test_a_view_that_fails_fails_each_request_sharing_it_and_the_next_takes_a_new_one():
    storage = Storage()
    storage.queues = SlowQueue()
    presence = Presence(storage)

    async def scenario():
        waiting = [asyncio.ensure_future(presence.line("m")) for _ in range(3)]
        await asyncio.sleep(0.01)
        storage.queues.open(ConnectionError("storage went away"))
        failed = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
        again = asyncio.ensure_future(presence.line("m"))
        await asyncio.sleep(0.01)
        storage.queues.open()
        return failed, await asyncio.wait_for(again, 5)

    failed, line = run_async(scenario)
    assert [type(e) for e in failed] == [ConnectionError] * 3 and line.depth == 0
    assert not presence._taking  # nothing left in flight


def test_a_view_begun_while_a_request_held_an_older_one_is_the_one_its_place_is_read_against():
    """A request holds the cached view while the workers' listing runs; meanwhile the view runs out and
    another request begins a new one, which takes in the tasks queued here since the old one. The
    first request must not read them against the old view (that placed the 5th task 1st, behind the
    one other task)."""
    storage = Storage()
    storage.signals = GatedSignals()
    presence = Presence(storage)
    mine = [f"{i:032x}" for i in range(5)]

    async def scenario():
        storage.queues.line.append(A)  # queued by another instance
        await presence.describe(A, "m")  # a view: [A]; the workers listed
        for task_id in mine:  # then five queued here
            storage.queues.line.append(task_id)
            presence.joined("m", task_id)
        at, workers = presence._workers["m"]
        presence._workers["m"] = (at - 5, workers)  # the listing has run out, the view not yet
        storage.signals.gate = asyncio.get_running_loop().create_future()
        held = asyncio.ensure_future(presence.describe(mine[4], "m"))
        await asyncio.sleep(0.01)  # it holds the view [A], and waits for the listing
        at, line = presence._lines["m"]
        presence._lines["m"] = (at - 5, line)  # now the view runs out too
        other = asyncio.ensure_future(presence.describe(A, "m"))  # and another request takes a new one
        await asyncio.sleep(0.01)
        storage.signals.gate.set_result(None)
        return (await held)["queue_position"], (await other)["queue_position"]

    assert run_async(scenario) == (5, 0)


class WorkerBlobs:
    """The signals container as presence writes it: every put, in order."""

    def __init__(self) -> None:
        self.puts: list[tuple[str, dict]] = []

    async def put(self, name, body, metadata, content_type):
        self.puts.append((name, metadata))


def flapping_presence(monkeypatch):
    monkeypatch.setattr(presence_module, "WRITE_GAP", 0.05)
    storage, clock = Storage(), Clock()
    storage.signals = WorkerBlobs()
    return Presence(storage, monotonic=clock), storage.signals.puts, clock


def test_a_worker_that_turns_busy_and_idle_at_every_claim_costs_a_write_per_gap_and_its_last_figures_are_written(
        monkeypatch):
    async def scenario():
        presence, puts, _ = flapping_presence(monkeypatch)
        for claim in range(40):
            await presence.seen("m", "w1", 5, claim % 2)  # idle, busy, idle, ... ending busy
        assert puts == [("workers/m/w1", {"interval": "5", "held": "0"})]  # the first at once
        await asyncio.sleep(0.3)
        assert puts[1:] == [("workers/m/w1", {"interval": "5", "held": "1"})]  # one at the gap's end: the last

    run_async(scenario)


def test_figures_that_change_back_within_the_gap_are_not_written_again(monkeypatch):
    async def scenario():
        presence, puts, _ = flapping_presence(monkeypatch)
        for held in (2, 0, 2):
            await presence.seen("m", "w1", 5, held)
        await asyncio.sleep(0.3)
        assert [metadata["held"] for _, metadata in puts] == ["2"]

    run_async(scenario)


def test_a_worker_polling_with_the_same_figures_is_written_again_every_seen_every_seconds(monkeypatch):
    async def scenario():
        presence, puts, clock = flapping_presence(monkeypatch)
        await presence.seen("m", "w1", 5, 1)
        clock.at += presence_module.SEEN_EVERY - 0.1
        await presence.seen("m", "w1", 5, 2)  # the same level: not yet
        assert len(puts) == 1
        clock.at += 0.2
        await presence.seen("m", "w1", 5, 3)
        assert [metadata["held"] for _, metadata in puts] == ["1", "3"]
        await presence.seen("m", "w2", 5, 3)  # another worker: its own blob, at once
        assert puts[-1][0] == "workers/m/w2"

    run_async(scenario)
