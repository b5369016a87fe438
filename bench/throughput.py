"""Throughput: tasks/s with 1, 2 and 4 `echo` workers (sleep_ms 0 and 50 per batch, batch 8) and
8 concurrent clients, each submitting and then waiting for its result (getresult?wait=), in a
closed loop for a fixed window.

Reference, same run: 1 worker at the same sleep_ms (scaling = tasks/s over that). Every
measurement has a fresh Azurite (and dev host): Azurite's cost per call grows with what it holds,
so a shared one made the later configurations pay for the earlier ones' results. Where it
saturates is read from the CPU each process used in the window (from /proc): the dev host and
Azurite are single-threaded, so either near 100 % of a core is the limit; all of them together
near 100 % x CPUs means the machine is.

`--rounds N` repeats every configuration N times (forwards, then backwards, ...) and reports the
median; scaling is then the median over rounds of each window over its own round's 1-worker window,
which leaves out most of the drift of a shared machine. `--workers 1,4 --sleep 0` picks configurations.
"""

from __future__ import annotations

import json
import os
import threading
import time

import requests

from devstack.services import Worker

from . import common

CLIENTS = 8
BATCH = 8
PAYLOAD = b"x" * 1024


def client_loop(url: str, model: str, params: str, stop: threading.Event, done: list, errors: list) -> None:
    """Submit, wait for the result, repeat. A 503 (storage away) is counted and retried after its Retry-After."""
    session = requests.Session()

    def refused(r: requests.Response) -> bool:
        if r.status_code != 503:
            return False
        errors.append(503)
        stop.wait(float(r.headers.get("Retry-After", "1")))
        return True

    while not stop.is_set():
        try:
            r = session.post(f"{url}/predict", params={"model": model, "params": params}, data=PAYLOAD,
                             headers={"Content-Type": "application/octet-stream"})
            if refused(r):
                continue
            if r.status_code != 202:
                errors.append(r.status_code)
                continue
            task_id = r.json()["task_id"]
            while not stop.is_set():
                r = session.get(f"{url}/getresult", params={"task_id": task_id, "wait": 20})
                if r.status_code != 202 and not refused(r):
                    break
            if r.status_code == 200:
                done.append(time.perf_counter())
            elif not stop.is_set():
                errors.append(r.status_code)
        except requests.RequestException as exc:
            errors.append(type(exc).__name__)


def start_workers(url: str, model: str, count: int, work, batch: int = BATCH) -> list[Worker]:
    workers = []
    try:
        for i in range(count):
            workers.append(Worker(url, common.WORKER_KEY,
                                  ["--model", model, "--handler", "echo", "--batch", str(batch), "--wait", "2",
                                   "--lease", "60", "--status-interval", "600"],
                                  log_dir=work / f"worker-{model}-{i}").start(timeout=60))
    except BaseException:
        stop_workers(workers)
        raise
    return workers


def stop_workers(workers: list[Worker]) -> None:
    for worker in workers:
        worker.stop(timeout=20)


class Load:
    """8 closed-loop clients against one model; counts completions and CPU per process in a window."""

    def __init__(self, url: str, model: str, sleep_ms: int) -> None:
        self.stop = threading.Event()
        self.done: list[float] = []
        self.errors: list = []
        params = json.dumps({"sleep_ms": sleep_ms})
        self.threads = [threading.Thread(target=client_loop, args=(url, model, params, self.stop, self.done, self.errors),
                                         daemon=True) for _ in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def measure(stack: common.Stack, workers: int, sleep_ms: int, window: float, host=None) -> dict:
    host = host or stack.hosts[0]
    model = common.model_name(f"tp{workers}w{sleep_ms}")
    running = start_workers(host.url, model, workers, stack.work)
    try:
        pids = {"dev host": host.proc.pid, "azurite": stack.azurite.proc.pid}
        with Load(host.url, model, sleep_ms) as load:
            time.sleep(min(2.0, window / 3))  # warm-up
            before = {k: common.cpu_seconds(p) for k, p in pids.items()}
            before_workers = sum(common.cpu_seconds(w.proc.pid) for w in running)
            before_self, t0 = time.process_time(), time.perf_counter()
            count0 = len(load.done)
            time.sleep(window)
            count1, t1 = len(load.done), time.perf_counter()
            span = t1 - t0
            cpu = {k: (common.cpu_seconds(p) - before[k]) / span * 100 for k, p in pids.items()}
            cpu["workers"] = (sum(common.cpu_seconds(w.proc.pid) for w in running) - before_workers) / span * 100
            cpu["clients"] = (time.process_time() - before_self) / span * 100
            errors = list(load.errors)
            load_avg = os.getloadavg()[0]
        host_peak = common.rss_mib(pids["dev host"], "VmHWM")
    finally:
        stop_workers(running)
    per_task = {k: round(v / 100 * span / max(count1 - count0, 1) * 1000, 1) for k, v in cpu.items()}
    return {"workers": workers, "sleep_ms": sleep_ms, "tasks_per_s": round((count1 - count0) / span, 1),
            "cpu_ms_per_task": per_task,
            "completed": count1 - count0, "seconds": round(span, 2), "errors": errors[:5],
            "cpu_percent_of_one_core": {k: round(v) for k, v in cpu.items()}, "host_peak_rss_mib": host_peak,
            "load_avg_1min": round(load_avg, 2)}


def bottleneck(cpu: dict, cpus: int, load_avg: float, sleep_ms: int) -> str:
    total = sum(cpu.values())
    if total >= 85 * cpus:
        return f"machine CPU ({total:.0f}% of {cpus * 100}%)"
    if load_avg >= cpus:  # runnable processes outnumber the CPUs: ours wait for cores (others' too)
        return f"shared machine CPU (load {load_avg:.1f} on {cpus})"
    single = {k: v for k, v in cpu.items() if k in ("dev host", "azurite")}
    name, value = max(single.items(), key=lambda kv: kv[1])
    if value >= 85:
        return f"{name} (one core)"
    if cpu.get("workers", 0) >= 50:
        return f"mixed ({total:.0f}% CPU)"
    # Nothing saturated: the closed-loop clients wait on the workers' sleep or on the round trips.
    return "workers' compute (sleep)" if sleep_ms else "round-trip latency (no process saturated)"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def _extra(parser) -> None:
    parser.add_argument("--workers", type=_ints, default=(1, 2, 4), help="worker counts (default 1,2,4; 1 is the reference)")
    parser.add_argument("--sleep", type=_ints, default=(0, 50), help="sleep_ms per batch (default 0,50)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every configuration this many times, in alternating order; each figure is the "
                             "median, and scaling the median of each round's ratio to its own 1-worker window")


def windows(args, window: float) -> list[dict]:
    """Every measurement, round by round: even rounds go through the configurations forwards, odd ones
    backwards, and the two hosts of a compare run take turns going first."""
    configs = [(s, n) for s in args.sleep for n in args.workers]
    results = []
    for rnd in range(args.rounds):
        for turn, (sleep_ms, n) in enumerate(configs if rnd % 2 == 0 else configs[::-1]):
            labels = ["broker", *(["variant"] if args.compare_root else [])]
            for label in (labels if (turn + rnd) % 2 == 0 else labels[::-1]):  # neither host always goes first
                # Each measurement has an Azurite of its own: Azurite slows as it holds more (every task
                # leaves its result for the result TTL), so on a shared one the later configurations paid
                # for the earlier ones' data and the pairs drifted by up to 30 %.
                with common.Stack(hosts=0 if label == "variant" else 1) as stack:
                    host = None
                    if label == "variant":
                        from .overhead import RootHost

                        host = RootHost(args.compare_root, stack.connection_string, stack.settings,
                                        log_dir=stack.work / "variant", extra_args=["--no-timers"]).start()
                    try:
                        result = measure(stack, n, sleep_ms, window, host)
                    finally:
                        if host is not None:
                            host.stop()
                result["host"], result["round"] = label, rnd
                results.append(result)
                print(f"  round {rnd + 1}/{args.rounds}, {label}: {n} worker(s), sleep_ms {sleep_ms}: "
                      f"{result['tasks_per_s']} tasks/s", flush=True)
    return results


def medians(measured: list[dict]) -> list[dict]:
    """One result per (host, workers, sleep_ms): the window of median tasks/s (the lower middle of an
    even count), with every window's tasks/s beside it, and scaling as the median over rounds of
    tasks/s over the same round's 1-worker window of the broker."""
    results = []
    for key in dict.fromkeys((r["host"], r["workers"], r["sleep_ms"]) for r in measured):
        runs = sorted((r for r in measured if (r["host"], r["workers"], r["sleep_ms"]) == key),
                      key=lambda r: r["tasks_per_s"])
        result = dict(runs[(len(runs) - 1) // 2], tasks_per_s_runs=[r["tasks_per_s"] for r in runs])
        ratios = sorted(common.ratio(r["tasks_per_s"], base["tasks_per_s"]) for r in runs for base in measured
                        if (base["host"], base["workers"], base["sleep_ms"], base["round"]) ==
                        ("broker", 1, r["sleep_ms"], r["round"]))
        result["scaling_vs_1_worker"] = ratios[(len(ratios) - 1) // 2] if ratios else None
        result["scaling_runs"] = ratios
        results.append(result)
    return results


def main(argv=None) -> dict:
    args = common.compare_args("throughput", argv, "measure", _extra)
    window = common.pick(4.0, 15.0)
    measured = windows(args, window)
    results = medians(measured)
    rows = []
    cpus = os.cpu_count()
    for result in results:
        result["saturates"] = bottleneck(result["cpu_percent_of_one_core"], cpus, result["load_avg_1min"],
                                         result["sleep_ms"])
        c = result["cpu_percent_of_one_core"]
        rows.append([result["host"], result["workers"], result["sleep_ms"], result["tasks_per_s"], result["scaling_vs_1_worker"],
                     c["dev host"], c["azurite"], c["workers"], c["clients"], result["cpu_ms_per_task"]["dev host"],
                     result["load_avg_1min"], result["saturates"]])
    text = common.table(f"Throughput, {CLIENTS} closed-loop clients, echo workers with batch {BATCH}, {window:.0f} s "
                        f"windows; CPU in % of one core ({cpus} CPUs)",
                        ["host", "workers", "sleep_ms", "tasks/s", "x 1 worker", "host %", "azurite %", "workers %",
                         "clients %", "host CPU ms/task", "load", "saturates"], rows)
    if args.rounds > 1:
        print("\n".join(f"  {r['host']}, {r['workers']} worker(s), sleep_ms {r['sleep_ms']}: tasks/s "
                         f"{r['tasks_per_s_runs']}, x 1 worker per round {r['scaling_runs']}" for r in results))
    data = {"clients": CLIENTS, "batch": BATCH, "window_s": window, "rounds": args.rounds, "results": results,
            "windows": measured, "table": text}
    common.save_compared("throughput", data, args)
    return data


def own_results(d: dict) -> list[dict]:
    """The results of this checkout's broker (a compare run holds the other host's too)."""
    return [r for r in d["results"] if r.get("host", "broker") == "broker"]


def summary(d: dict) -> list[list]:
    """This benchmark's rows of the summary table (bench.plot)."""
    return [["4 throughput", f"{r['workers']} worker(s), sleep_ms {r['sleep_ms']}", f"{r['tasks_per_s']} tasks/s",
             "1 worker", r["scaling_vs_1_worker"], "report", r["saturates"]] for r in own_results(d)]


def summary_compare(d: dict) -> list[list]:
    """One row for a compare run: the median gain over the variant across the configurations."""
    pairs: dict = {}
    for r in d["results"]:
        pairs.setdefault((r["workers"], r["sleep_ms"]), {})[r["host"]] = r
    gains = sorted(p["broker"]["tasks_per_s"] / p["variant"]["tasks_per_s"] for p in pairs.values()
                   if "variant" in p and "broker" in p and p["variant"]["tasks_per_s"])
    cpu = sorted(p["broker"]["cpu_ms_per_task"]["dev host"] / p["variant"]["cpu_ms_per_task"]["dev host"]
                 for p in pairs.values() if "variant" in p and "broker" in p)
    if not gains:
        return []
    label = d.get("variant_label", "scratch copy")
    return [["4 throughput", f"broker / {label}, tasks/s (median of {len(gains)} configs)", f"{len(gains)} pairs",
             f"{label}, same run", round(gains[len(gains) // 2], 3), "report", f"host CPU/task x{cpu[len(cpu) // 2]:.2f}"]]


if __name__ == "__main__":
    main()
