"""Storage calls per task, per route, in the round-trip-bound run: 8 closed-loop clients (submit,
then `getresult?wait=`) and echo workers, against a dev host under bench.profilers.host_tracer,
which logs every storage request against the HTTP request that sent it.

What it reports, per completed task: HTTP requests and storage calls by route (predict, getresult,
getnexttask, puttaskresult, ...) and by kind of storage call (blob read, queue receive, ...), and
the dev host's CPU. `--compare-root DIR` runs the same against a dev host served from another
checkout, in turns, so a change's effect on the calls is read side by side. Calls are counted,
not timed: the counts hardly move from run to run, unlike timings on a shared machine.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

from . import common
from .overhead import ProfiledHost
from .throughput import Load, start_workers, stop_workers

WORKERS = 2


def run(stack: common.Stack, root: str | None, tag: str, tasks: int, workers: int = WORKERS) -> dict:
    out = stack.work / f"calls-{tag}.json"
    host = ProfiledHost(out, root, stack.connection_string, stack.settings, log_dir=stack.work / f"calls-{tag}",
                        extra_args=["--no-timers"]).start()
    model = common.model_name(f"calls-{tag}")
    running = start_workers(host.url, model, workers, stack.work)
    try:
        with Load(host.url, model, 0) as load:
            common.wait_until(lambda: len(load.done) >= 20, 60)  # warm-up
            began_at, began_cpu, began_count = time.perf_counter(), common.cpu_seconds(host.proc.pid), len(load.done)
            common.wait_until(lambda: len(load.done) >= began_count + tasks, 300, 0.02)
            ended_at = time.perf_counter()
            span = ended_at - began_at
            done = len(load.done) - began_count
            cpu = common.cpu_seconds(host.proc.pid) - began_cpu
    finally:
        stop_workers(running)
        host.stop(timeout=30, sig=signal.SIGTERM)
    trace = json.loads(out.read_text())
    # The window: requests that began in it (the host's perf_counter is CLOCK_MONOTONIC, as ours).
    window = [r for r in trace["requests"] if began_at <= r["start"] < ended_at]
    ids = {r["id"] for r in window}
    routes = {r["id"]: r["route"] for r in window}
    calls = [c for c in trace["storage"] if c["req"] in ids
             or (c["req"] is None and began_at <= c["start"] < ended_at)]  # background work (a trailing touch)
    by_route = Counter(routes.get(c["req"], "(no request)") for c in calls)
    asked = Counter(r["route"] for r in window)
    kinds = Counter(f"{routes.get(c['req'], '(no request)')}: {c['method']} {c['what']}" for c in calls)
    tasks_seen = max(asked.get("predict", 0), 1)
    per = {route: {"requests": round(asked[route] / tasks_seen, 2), "storage_calls": round(by_route[route] / tasks_seen, 2)}
           for route in sorted(set(asked) | set(by_route))}
    return {"tag": tag, "tasks": done, "tasks_per_s": round(done / span, 1),
            "host_cpu_ms_per_task": round(cpu / max(done, 1) * 1000, 1),  # under the tracer's sampling profiler
            "storage_calls_per_task": round(len(calls) / tasks_seen, 2), "per_route": per,
            "per_kind": {k: round(v / tasks_seen, 2) for k, v in kinds.most_common()}}


def main(argv=None) -> dict:
    args = common.compare_args("calls", argv, "count the calls of", lambda parser: parser.add_argument(
        "--workers", type=int, default=WORKERS, help=f"echo workers (default {WORKERS})"))
    tasks = common.pick(150, 600)
    results = []
    with common.Stack(hosts=0) as stack:
        variants = [("broker", None), *((("variant", args.compare_root),) if args.compare_root else ())]
        for turn in range(common.pick(1, 2)):
            for tag, root in (variants if turn % 2 == 0 else variants[::-1]):
                result = run(stack, root, f"{tag}-{turn}", tasks, args.workers)
                result["host"] = tag
                results.append(result)
                print(f"  {tag}: {result['storage_calls_per_task']} storage calls/task, "
                      f"{result['host_cpu_ms_per_task']} ms host CPU/task, {result['tasks_per_s']} tasks/s", flush=True)
    rows = []
    for result in results:
        for route, figures in result["per_route"].items():
            rows.append([result["host"], route, figures["requests"], figures["storage_calls"]])
        rows.append([result["host"], "all", "", result["storage_calls_per_task"]])
    text = common.table(f"Storage calls per task, {args.workers} echo workers, 8 closed-loop clients (submit, getresult?wait=)",
                        ["host", "route", "requests/task", "storage calls/task"], rows)
    kinds = common.table("Storage calls per task by kind", ["host", "call", "per task"],
                         [[r["host"], kind, n] for r in results for kind, n in r["per_kind"].items()])
    print(text)
    print(kinds)
    data = {"workers": args.workers, "results": results, "table": text + "\n" + kinds}
    common.save_compared("calls", data, args)
    return data


def summary(d: dict) -> list[list]:
    """This benchmark's row of the summary table (bench.plot)."""
    own = [r for r in d["results"] if r["host"] == "broker"]
    return [["8 calls", f"storage calls per task (round trip, {d['workers']} echo workers)", own[-1]["storage_calls_per_task"],
             "", "", "report", ""]] if own else []


def summary_compare(d: dict) -> list[list]:
    """One row for a compare run: this checkout's calls per task against the other's."""
    own = [r["storage_calls_per_task"] for r in d["results"] if r["host"] == "broker"]
    other = [r["storage_calls_per_task"] for r in d["results"] if r["host"] == "variant"]
    if not own or not other:
        return []
    label = d.get("variant_label", "scratch copy")
    mine, theirs = sorted(own)[len(own) // 2], sorted(other)[len(other) // 2]
    return [["8 calls", f"storage calls per task: broker / {label}", mine, f"{theirs} ({label})",
             common.ratio(mine, theirs), "report", ""]]


if __name__ == "__main__":
    main()
