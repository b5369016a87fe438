"""What an idle worker costs, and what it does to pickup: a real echo worker (`python -m mlserver`).

1. Execution time while idle: the dev host logs each invocation as the Functions host does
   (`Executed 'Functions.getnexttask' (…, Duration=…ms)`); their durations are summed over an idle
   window that starts right after the worker's last task, for the worker as it ships (it watches
   storage after --idle-after 30 s) and for one that always long-polls (--idle-after 0). An idle
   hour is projected from the window: the awake part once, the asleep part's rate for the rest.
   Goal: <= 60 s of execution per idle worker-hour (a long-polling worker: about 3,600).
2. Pickup after idleness: with the worker asleep, a task is submitted; pickup is the task's
   started_at - created_at (the broker's own timestamps). Goal: p50 <= 500 ms.
3. Pickup under a steady stream: a task every 250 ms to the same worker (awake). Goal: p50 <= 100 ms.
"""

from __future__ import annotations

import random
import re
import time
from datetime import datetime

from devstack.services import Worker

from . import common

GOAL_IDLE_S_PER_HOUR, GOAL_IDLE_PICKUP_MS, GOAL_STREAM_PICKUP_MS = 60, 500, 100
EXECUTED = re.compile(r"^(\S+ \S+) INFO Host\.Function: Executed 'Functions\.(getnexttask|watch)' \(\w+, Id=[0-9a-f-]+, "
                      r"Duration=(\d+)ms\)", re.M)
ASLEEP = "watching storage instead of long-polling"


def _stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def executions(log: str, since: float, until: float) -> list[tuple[float, float]]:
    """(when it ended, seconds it lasted) of the worker-route invocations logged in [since, until)."""
    found = [(_stamp(m.group(1)), int(m.group(3)) / 1000) for m in EXECUTED.finditer(log)]
    return [(at, lasted) for at, lasted in found if since <= at < until]


def start_worker(stack, model: str, *flags: str) -> Worker:
    return Worker(stack.url, common.WORKER_KEY, ["--model", model, "--handler", "echo", "--wait", "10", *flags],
                  log_dir=stack.work / f"worker-{model}").start()


def submit(session, url: str, model: str) -> str:
    response = session.post(f"{url}/predict?model={model}", data=b"x" * 1024, headers={"Content-Type": "text/plain"})
    return response.json()["task_id"]


def pickup_ms(session, url: str, task_id: str) -> float:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        doc = session.get(f"{url}/status", params={"task_id": task_id}).json()
        if doc.get("started_at") or doc["status"] == "succeeded":
            started = doc["started_at"]
            return (datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp()
                    - datetime.fromisoformat(doc["created_at"].replace("Z", "+00:00")).timestamp()) * 1000
        time.sleep(0.05)
    raise RuntimeError(f"task {task_id} was not started within 60 s")


def idle_window(stack, flags: tuple[str, ...], window: float) -> dict:
    """Execution seconds of one worker's claims over `window` idle seconds after a task."""
    model = common.model_name("idle")
    session = common.worker_session()
    worker = start_worker(stack, model, *flags)
    try:
        task_id = submit(session, stack.url, model)
        pickup_ms(session, stack.url, task_id)
        begin = time.time()
        time.sleep(window)
        end = time.time()
    finally:
        worker.stop(timeout=30)
    log = stack.hosts[0].log_text()
    ran = executions(log, begin, end)
    total = sum(lasted for _, lasted in ran)
    fell = [(_stamp(line[:23])) for line in worker.log_text().splitlines() if ASLEEP in line]
    asleep_at = next((at for at in fell if at >= begin), None)
    if asleep_at is None:  # never slept: the rate holds for the whole hour
        return {"window_s": window, "claims": len(ran), "execution_s": round(total, 2),
                "projected_s_per_hour": round(total * 3600 / window, 1), "fell_asleep_after_s": None}
    awake = sum(lasted for at, lasted in ran if at < asleep_at + 1)
    asleep = total - awake
    asleep_for = end - (asleep_at + 1)
    projected = awake + asleep * (3600 - (asleep_at + 1 - begin)) / max(asleep_for, 1)
    return {"window_s": window, "claims": len(ran), "execution_s": round(total, 2), "awake_execution_s": round(awake, 2),
            "asleep_execution_s": round(asleep, 2), "asleep_claims": sum(1 for at, _ in ran if at >= asleep_at + 1),
            "fell_asleep_after_s": round(asleep_at - begin, 1), "projected_s_per_hour": round(projected, 1)}


def pickups_after_idleness(stack, samples: int) -> list[float]:
    model = common.model_name("wake")
    session = common.worker_session()
    worker = start_worker(stack, model, "--idle-after", "2")
    found = []
    try:
        for _ in range(samples):
            seen = worker.log_text().count(ASLEEP)
            common.wait_until(lambda seen=seen: worker.log_text().count(ASLEEP) > seen, 60)
            time.sleep(1.5 + random.random())  # past the claim that closes the gap; at a random phase of the polls
            found.append(pickup_ms(session, stack.url, submit(session, stack.url, model)))
    finally:
        worker.stop(timeout=30)
    return found


def pickups_in_a_stream(stack, count: int) -> list[float]:
    model = common.model_name("stream")
    session = common.worker_session()
    worker = start_worker(stack, model)
    try:
        pickup_ms(session, stack.url, submit(session, stack.url, model))  # awake
        ids = []
        for _ in range(count):
            ids.append(submit(session, stack.url, model))
            time.sleep(0.25)
        return [pickup_ms(session, stack.url, task_id) for task_id in ids]
    finally:
        worker.stop(timeout=30)


def main(argv=None) -> dict:
    common.parse_args("idle", argv)
    common.note_load("idle")
    window, samples, stream = common.pick((150, 10, 40), (600, 30, 120))
    with common.Stack() as stack:
        shipped = idle_window(stack, (), window)
        always = idle_window(stack, ("--idle-after", "0"), min(window, 120))
        woken = pickups_after_idleness(stack, samples)
        flowing = pickups_in_a_stream(stack, stream)
    wake, flow = common.summary_ms([v / 1000 for v in woken]), common.summary_ms([v / 1000 for v in flowing])
    rows = [["idle hour, as shipped (execution s)", shipped["projected_s_per_hour"],
             f"{shipped['claims']} claims in {window:.0f} s",
             common.verdict(shipped["projected_s_per_hour"], GOAL_IDLE_S_PER_HOUR)],
            ["idle hour, always long-polling (execution s)", always["projected_s_per_hour"],
             f"{always['claims']} claims in {always['window_s']:.0f} s", ""],
            ["pickup after idleness p50 / p95 ms", f"{wake['p50_ms']:.0f} / {wake['p95_ms']:.0f}", f"n={wake['n']}",
             common.verdict(wake["p50_ms"], GOAL_IDLE_PICKUP_MS)],
            ["pickup in a stream (4/s) p50 / p95 ms", f"{flow['p50_ms']:.0f} / {flow['p95_ms']:.0f}", f"n={flow['n']}",
             common.verdict(flow["p50_ms"], GOAL_STREAM_PICKUP_MS)]]
    text = common.table("An idle worker: Functions execution time (from the dev host's invocation log) and pickup",
                        ["figure", "value", "measured", "goal"], rows)
    data = {"shipped": shipped, "always_long_polling": always, "pickup_after_idleness": wake,
            "pickup_in_stream": flow, "table": text,
            "goals": {"idle_s_per_hour": GOAL_IDLE_S_PER_HOUR, "idle_pickup_p50_ms": GOAL_IDLE_PICKUP_MS,
                      "stream_pickup_p50_ms": GOAL_STREAM_PICKUP_MS}}
    common.save("idle", data)
    return data


def summary(d: dict) -> list[list]:
    shipped, always = d["shipped"]["projected_s_per_hour"], d["always_long_polling"]["projected_s_per_hour"]
    wake, flow = d["pickup_after_idleness"], d["pickup_in_stream"]
    return [["10 idle", "execution s per idle worker-hour", f"{shipped:.1f}", f"always long-polling {always:.0f} s",
             common.ratio(shipped, always), "<= 60 s", common.verdict(shipped, GOAL_IDLE_S_PER_HOUR)],
            ["10 idle", "pickup after idleness p50 / p95 ms", f"{wake['p50_ms']:.0f} / {wake['p95_ms']:.0f}", "", "",
             "p50 <= 500", common.verdict(wake["p50_ms"], GOAL_IDLE_PICKUP_MS)],
            ["10 idle", "pickup in a stream p50 / p95 ms", f"{flow['p50_ms']:.0f} / {flow['p95_ms']:.0f}", "", "",
             "p50 <= 100", common.verdict(flow["p50_ms"], GOAL_STREAM_PICKUP_MS)]]


if __name__ == "__main__":
    main()
