"""Waiting for things in tests: a condition, or a task's final answer."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import requests


def wait_for(condition, timeout: float = 60, interval: float = 0.2, what: str = "condition"):
    """The first truthy value of `condition()`, polled every `interval` s; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def final_result(url: str, task_id: str, timeout: float = 120, session: requests.Session | None = None,
                 deadline: float | None = None) -> requests.Response:
    """The task's final getresult answer (not 202, not a passing 503), long-polling; fails after `timeout`."""
    session = session or requests.Session()
    deadline = deadline or time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = session.get(f"{url}/getresult?task_id={task_id}&wait=10", timeout=60)
        if response.status_code not in (202, 503):
            return response
        time.sleep(0.2 if response.status_code == 503 else 0)
    raise AssertionError(f"task {task_id} did not finish within {timeout} s: "
                         f"{session.get(f'{url}/status?task_id={task_id}', timeout=60).text}")


def final_results(url: str, ids: list[str], timeout: float, threads: int = 8) -> dict[str, requests.Response]:
    """Each task's final answer, `threads` at a time, all within one `timeout`."""
    deadline = time.monotonic() + timeout
    session = requests.Session()
    with ThreadPoolExecutor(threads) as pool:
        return dict(zip(ids, pool.map(lambda t: final_result(url, t, timeout, session, deadline), ids)))


def run_async(make_coroutine):
    """`asyncio.run(make_coroutine())` on a thread of its own: works whatever event loop the test
    process's main thread may be running (Playwright's sync API leaves one there)."""
    import asyncio
    import threading

    outcome: dict = {}

    def target():
        try:
            outcome["value"] = asyncio.run(make_coroutine())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="run_async")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
