"""`python -m bench.result_latency`: how long a result takes to reach a client waiting on another
instance than the one that committed it, and what that wait costs in storage calls.

Two dev hosts on one Azurite, as two instances of the app. Clients submit to instance A, where an
echo worker claims and commits (a put on A hands the outcome to waits on A at once); each client
then waits with `getresult?wait=20` on instance B, which can only find the outcome by polling the
outbox (store.result, on the schedule of broker/result_polls.py). Reference, same run:
the same clients waiting on A, answered by the hand-over.

Latency is from the outcome's `finished_at` (the commit's clock) to the answer reaching the client
(the same machine's clock); task time (`sleep_ms` per batch in the echo worker) decides where in the
poll schedule the outcome lands. B runs under bench.profilers.host_tracer, which counts its storage
calls per `getresult`. This is the measurement a change to the poll schedule has to be judged by:
fewer polls per wait on one side, later answers across instances on the other.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from datetime import datetime

import requests

from . import common
from .overhead import ProfiledHost
from .throughput import PAYLOAD, start_workers, stop_workers

NAME = "result_latency"
CLIENTS = 4
SLEEPS = (0, 100, 400)


def _finished(document: dict) -> float:
    return datetime.fromisoformat(document["finished_at"].replace("Z", "+00:00")).timestamp()


def clients(submit_url: str, wait_url: str, model: str, sleep_ms: int, tasks: int) -> tuple[list[float], list]:
    """CLIENTS closed-loop clients until `tasks` results came back: each result's latency in seconds
    (answer received - finished_at), and the errors seen."""
    latencies, errors, lock = [], [], threading.Lock()
    params = json.dumps({"sleep_ms": sleep_ms})

    def loop() -> None:
        session = requests.Session()
        while True:
            with lock:
                if len(latencies) + len(errors) >= tasks:
                    return
            try:
                r = session.post(f"{submit_url}/predict", params={"model": model, "params": params}, data=PAYLOAD,
                                 headers={"Content-Type": "application/octet-stream"})
                r.raise_for_status()
                task_id = r.json()["task_id"]
                r = session.get(f"{wait_url}/getresult", params={"task_id": task_id, "wait": 20})
                answered = time.time()
                if r.status_code != 200:
                    raise RuntimeError(f"getresult answered {r.status_code}")
                document = session.get(f"{wait_url}/status", params={"task_id": task_id}).json()
                with lock:
                    latencies.append(answered - _finished(document))
            except (requests.RequestException, RuntimeError, KeyError) as exc:
                with lock:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    return latencies, errors


def outbox_calls(trace: dict, began: float, ended: float) -> tuple[int, Counter]:
    """B's getresult requests that began in the window, and their storage calls by kind."""
    window = {r["id"] for r in trace["requests"] if r["route"] == "getresult" and began <= r["start"] < ended}
    kinds = Counter(f"{c['method']} {c['what']}" for c in trace["storage"] if c["req"] in window)
    return len(window), kinds


def main(argv: list[str] | None = None) -> int:
    common.parse_args(NAME, argv)
    common.note_load(NAME)
    tasks = common.pick(40, 150)
    rows, results = [], []
    with common.Stack(hosts=1) as stack:
        a = stack.hosts[0]
        trace_path = stack.work / "b-trace.json"
        b = ProfiledHost(trace_path, None, stack.connection_string, stack.settings, log_dir=stack.work / "b",
                         extra_args=["--no-timers"]).start()
        windows = {}
        try:
            for sleep_ms in SLEEPS:
                model = common.model_name(f"rl{sleep_ms}")
                running = start_workers(a.url, model, 1, stack.work)
                try:
                    clients(a.url, a.url, model, sleep_ms, 8)  # warm-up, and the worker past its first claim
                    same, same_errors = clients(a.url, a.url, model, sleep_ms, tasks)
                    began = time.perf_counter()
                    other, other_errors = clients(a.url, b.url, model, sleep_ms, tasks)
                    windows[sleep_ms] = (began, time.perf_counter())
                finally:
                    stop_workers(running)
                results.append({"sleep_ms": sleep_ms, "same_instance": common.summary_ms(same),
                                "other_instance": common.summary_ms(other), "errors": (same_errors + other_errors)[:5]})
                print(f"  sleep_ms {sleep_ms}: other instance p50 {results[-1]['other_instance']['p50_ms']} ms, "
                      f"same instance p50 {results[-1]['same_instance']['p50_ms']} ms", flush=True)
        finally:
            b.stop(timeout=30, sig=signal.SIGTERM)
    trace = json.loads(trace_path.read_text())
    for result in results:
        waits, kinds = outbox_calls(trace, *windows[result["sleep_ms"]])
        result["waits"] = waits
        result["storage_calls_per_wait"] = {kind: round(n / max(waits, 1), 2) for kind, n in kinds.most_common()}
        result["outbox_polls_per_wait"] = round(sum(n for kind, n in kinds.items() if "blob:outbox" in kind)
                                                / max(waits, 1), 2)
        other, same = result["other_instance"], result["same_instance"]
        rows.append([result["sleep_ms"], other["n"], other["p50_ms"], other["p95_ms"], same["p50_ms"], same["p95_ms"],
                     result["outbox_polls_per_wait"], sum(result["storage_calls_per_wait"].values())])
    text = common.table(f"A result reaching a client that waits on another instance ({CLIENTS} closed-loop clients, "
                        "one echo worker on the committing instance)",
                        ["sleep_ms", "tasks", "other: p50 ms", "p95 ms", "same instance: p50 ms", "p95 ms",
                         "outbox polls per wait", "storage calls per wait"], rows)
    common.save(NAME, {"clients": CLIENTS, "results": results, "table": text})
    return 0


def summary(d: dict) -> list[list]:
    """This benchmark's rows of the summary table (bench.plot)."""
    return [["14 result latency", f"other instance, sleep_ms {r['sleep_ms']}: p50 / p95 ms; outbox polls per wait "
             f"{r['outbox_polls_per_wait']}", f"{r['other_instance']['p50_ms']} / {r['other_instance']['p95_ms']}",
             f"same instance {r['same_instance']['p50_ms']} ms", "", "report", ""] for r in d.get("results", [])]


if __name__ == "__main__":
    raise SystemExit(main())
