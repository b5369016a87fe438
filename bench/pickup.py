"""Pickup latency: an idle worker long-polls; tasks are submitted 250 ms apart; how long from the
submit's answer to the claim's answer.

Two cases, measured in turns on one Azurite:
- same instance: submit and long-poll on one dev host (a submit wakes the waiting poll in process);
- other instance: submit to one dev host, long-poll another on the same storage, as Azure runs
  several instances of the app (the poll finds the task by polling storage with backoff).
The "worker" is a plain HTTP long-poll loop (getnexttask?wait=20), so nothing but the broker is
measured. Reference, same run: one bare queue receive on the same Azurite, through the SDK.
"""

from __future__ import annotations

import threading
import time

from azure.storage.queue import QueueClient

from . import common

GOAL_P50_MS, GOAL_P95_MS, STRETCH_SAME_P50_MS = 100, 300, 30
SPACING = 0.25


def poll_loop(url: str, model: str, claimed: dict, stop: threading.Event) -> None:
    session = common.worker_session()
    while not stop.is_set():
        response = session.get(f"{url}/getnexttask", params={"model": model, "wait": 2, "lease": 300})
        at = time.perf_counter()
        if response.status_code == 200:
            for task in response.json()["tasks"]:
                claimed[task["task_id"]] = at
        elif response.status_code != 204:
            raise RuntimeError(f"getnexttask answered {response.status_code}: {response.text[:200]}")


def run_case(submit_url: str, poll_url: str, count: int) -> list[float]:
    model = common.model_name("pickup")
    session = common.worker_session()
    session.post(f"{submit_url}/predict?model={model}", data=b"warm", headers={"Content-Type": "text/plain"})
    claimed: dict[str, float] = {}
    stop = threading.Event()
    poller = threading.Thread(target=poll_loop, args=(poll_url, model, claimed, stop), daemon=True)
    poller.start()
    common.wait_until(lambda: len(claimed) >= 1, 10)  # the warm-up task: the poll is now idle and waiting
    time.sleep(0.5)
    submitted: dict[str, float] = {}
    for _ in range(count):
        response = session.post(f"{submit_url}/predict?model={model}", data=b"x" * 1024,
                                headers={"Content-Type": "application/octet-stream"})
        submitted[response.json()["task_id"]] = time.perf_counter()
        time.sleep(SPACING)
    common.wait_until(lambda: all(t in claimed for t in submitted), 10)
    stop.set()
    poller.join(5)
    missing = [t for t in submitted if t not in claimed]
    if missing:
        raise RuntimeError(f"{len(missing)} of {count} tasks were never claimed")
    return [claimed[t] - submitted[t] for t in submitted]


def bare_receive(connection_string: str, count: int) -> list[float]:
    queue = QueueClient.from_connection_string(connection_string, "bench-pickup-ref")
    queue.create_queue()
    queue.send_message("x")
    times = []
    for _ in range(count):
        start = time.perf_counter()
        messages = list(queue.receive_messages(max_messages=1, visibility_timeout=1))
        times.append(time.perf_counter() - start)
        for message in messages:
            queue.update_message(message, visibility_timeout=0)
    queue.delete_queue()
    return times


def main(argv=None) -> dict:
    common.parse_args("pickup", argv)
    common.note_load("pickup")
    rounds, count = common.pick((1, 40), (3, 40))
    same, other, ref = [], [], []
    with common.Stack(hosts=2) as stack:
        a, b = stack.hosts[0].url, stack.hosts[1].url
        for r in range(rounds):
            ref += bare_receive(stack.connection_string, 20)
            same += run_case(a, a, count)
            other += run_case(a, b, count)
            print(f"  round {r + 1}/{rounds} done", flush=True)
    ref_ms = common.pct([t * 1000 for t in ref], 50)
    rows, results = [], {}
    for name, values, stretch in (("same instance", same, STRETCH_SAME_P50_MS), ("other instance", other, None)):
        s = common.summary_ms(values)
        passed = common.verdict(s["p50_ms"], GOAL_P50_MS) == "PASS" and common.verdict(s["p95_ms"], GOAL_P95_MS) == "PASS"
        results[name] = {**s, "p50_over_ref": common.ratio(s["p50_ms"], ref_ms), "goal": "PASS" if passed else "FAIL",
                         "stretch_p50_30ms": common.verdict(s["p50_ms"], stretch) if stretch else None}
        rows.append([name, s["n"], s["p50_ms"], s["p95_ms"], results[name]["p50_over_ref"],
                     results[name]["goal"], results[name]["stretch_p50_30ms"]])
    text = common.table(f"Pickup latency (submit answered -> claim answered), ms; reference: one bare queue receive "
                        f"p50 = {ref_ms:.2f} ms",
                        ["case", "n", "p50", "p95", "p50/ref", "goal p50<=100,p95<=300", "stretch p50<=30"], rows)
    data = {"reference_receive_p50_ms": round(ref_ms, 2), "cases": results, "table": text,
            "goals": {"p50_ms": GOAL_P50_MS, "p95_ms": GOAL_P95_MS, "stretch_same_instance_p50_ms": STRETCH_SAME_P50_MS}}
    common.save("pickup", data)
    return data


def summary(d: dict) -> list[list]:
    """This benchmark's rows of the summary table (bench.plot): [benchmark, figure, value, reference,
    ratio, goal, verdict]."""
    rows = []
    ref = d["reference_receive_p50_ms"]
    for case, r in d["cases"].items():
        rows.append(["1 pickup", f"{case}: p50 / p95 ms", f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f}",
                     f"bare receive {ref:.1f} ms", r["p50_over_ref"], "p50<=100, p95<=300", r["goal"]])
    same = d["cases"].get("same instance")
    if same:
        rows.append(["1 pickup", "same instance: p50 ms (stretch)", f"{same['p50_ms']:.1f}", "", "", "p50<=30",
                     same["stretch_p50_30ms"]])
    return rows


if __name__ == "__main__":
    main()
