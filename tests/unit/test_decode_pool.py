"""The fetch thread's decode pool (`--decode-threads`): tasks of a batch decoded at once, the batch
in the claim's order, a task that cannot be decoded set apart alone."""

from __future__ import annotations

import threading

import pytest

from mlserver.__main__ import default_decode_threads
from mlserver.fetcher import Claiming, Fetcher
from mlserver.handlers.echo import Echo
from mlserver.tasks import Ledger, Task

from .fake_broker import FakeBroker


class Gathering(Echo):
    """The first `together` decodes wait until all of them are in at once (a barrier: one thread alone
    would break it, after its timeout); payloads that say so are refused."""

    def __init__(self, together: int, timeout: float = 30) -> None:
        super().__init__(batch_size=8)
        self.barrier = threading.Barrier(together, timeout=timeout)
        self.threads: set[str] = set()
        self.calls, self.lock = 0, threading.Lock()

    def decode(self, payload: bytes, content_type: str, params: dict):
        with self.lock:
            self.threads.add(threading.current_thread().name)
            self.calls += 1
            gathers = self.calls <= self.barrier.parties
        if gathers:
            try:
                self.barrier.wait()
            except threading.BrokenBarrierError:
                pass
        if payload.startswith(b"bad"):
            raise ValueError("not an image")
        return super().decode(payload, content_type, params)


def tasks(payloads: list[bytes]) -> list[Task]:
    return [Task(f"t{i}", "lease", 30, payload, "application/octet-stream", {}, 1) for i, payload in enumerate(payloads)]


def fetcher(handler, threads: int) -> Fetcher:
    return Fetcher(FakeBroker(), handler, Claiming("echo", 8, 1, 30, decode_threads=threads), Ledger(),
                   threading.Event())


def test_a_batch_is_decoded_several_tasks_at_once_and_keeps_the_claim_s_order():
    handler = Gathering(together=3)
    fetch = fetcher(handler, threads=3)
    try:
        batch = fetch.decode(tasks([b"a", b"bad 1", b"c", b"d", b"bad 2", b"f"]))
    finally:
        fetch.close()
    assert not handler.barrier.broken  # three decodes were in at once
    assert handler.threads <= {f"decode_{i}" for i in range(3)}
    assert [task.task_id for task in batch.tasks] == ["t0", "t2", "t3", "t5"]
    assert [(task.task_id, str(error)) for task, error in batch.undecodable] == [("t1", "not an image"),
                                                                                ("t4", "not an image")]
    assert all(task.payload == b"" and task.decoded is not None for task in batch.tasks)


def test_one_decode_thread_decodes_in_the_fetch_thread_itself():
    handler = Gathering(together=2, timeout=0.01)  # nobody will join the first: it breaks, as it should
    fetch = fetcher(handler, threads=1)
    batch = fetch.decode(tasks([b"a", b"b"]))
    fetch.close()
    assert handler.barrier.broken
    assert handler.threads == {threading.current_thread().name}
    assert [task.task_id for task in batch.tasks] == ["t0", "t1"]


@pytest.mark.parametrize("device,cores,expected", [("CPU (TensorFlow sees no GPU)", 16, 1), ("GPU:0 Tesla T4", 2, 2),
                                                   ("GPU:0 A100", 64, 4), ("GPU:0 T4", 1, 1)])
def test_the_default_is_one_on_a_cpu_and_a_thread_per_core_up_to_four_on_a_gpu(monkeypatch, device, cores, expected):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert default_decode_threads(device) == expected
