"""`python -m bench.batching`: dynamic batching (`--max-batch-delay-ms`) under a trickling load.

A ResNet50 worker (random weights, `--batch 8`) serves JPEGs that arrive one at a time at random
(Poisson) intervals, at a fraction of what the bare model does at batch 8 on this machine (`--loads`).
One worker per delay (`--delays`; 0: no dynamic batching) serves, in turns, over `--rounds` rounds;
for each it reports (medians) the batches the model ran (the worker's
own Prometheus figures), each task's latency from the broker's timestamps (created_at to
finished_at, so the load generator's own timing does not enter), and the worker's CPU seconds per
image. Dynamic batching pays if it turns small batches into larger ones that cost the model less
per image; it costs up to the delay in latency.
"""

from __future__ import annotations

import os
import random
import re
import statistics
import sys
import time

import requests

from devstack.services import Worker

from . import common
from .common import (
    WORKER_KEY,
    Stack,
    cpu_seconds,
    free_port,
    model_name,
    note_load,
    parse_args,
    pct,
    pick,
    save,
    table,
    thread_cpu_seconds,
    wait_until,
)
from .worker import bare_rate, decode_all, parse_time, photos, worker_threads

NAME = "batching"
BATCH = 8


def scrape(port: int) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(mlserver_\S+) (\S+)$", text, re.M)}


def trickle(stack: Stack, worker: Worker, model: str, payloads: list[bytes], rate: float, port: int,
            seed: int) -> dict:
    """Submit `payloads` at Poisson arrivals of `rate` per second; wait until all are done."""
    session = requests.Session()
    rng = random.Random(seed)
    before = scrape(port)
    threads_before = thread_cpu_seconds(worker.proc.pid)
    cpu_before = cpu_seconds(worker.proc.pid)
    ids = []
    due = time.monotonic()
    for payload in payloads:
        due += rng.expovariate(rate)
        time.sleep(max(0.0, due - time.monotonic()))
        response = session.post(f"{stack.url}/predict?model={model}", data=payload,
                                headers={"Content-Type": "image/jpeg"})
        response.raise_for_status()
        ids.append(response.json()["task_id"])
    if not wait_until(lambda: scrape(port)['mlserver_tasks_total{outcome="done"}']
                      - before['mlserver_tasks_total{outcome="done"}'] >= len(ids), timeout=600, interval=0.5):
        raise SystemExit(f"the worker did not finish; its log: {worker.log_path}")
    after = scrape(port)
    threads = worker_threads(threads_before, thread_cpu_seconds(worker.proc.pid), len(ids))
    worker_cpu = (cpu_seconds(worker.proc.pid) - cpu_before) / len(ids)
    documents = [session.get(f"{stack.url}/status?task_id={task_id}").json() for task_id in ids]
    failed = [d for d in documents if d["status"] != "succeeded"]
    if failed:
        raise SystemExit(f"{len(failed)} tasks did not succeed, e.g. {failed[0]}; worker log: {worker.log_path}")
    latency = [parse_time(d["finished_at"]) - parse_time(d["created_at"]) for d in documents]
    batches = after["mlserver_batch_size_count"] - before["mlserver_batch_size_count"]
    return {"tasks": len(ids), "batches": int(batches),
            "mean_batch": round((after["mlserver_batch_size_sum"] - before["mlserver_batch_size_sum"]) / batches, 2),
            "latency_ms": {"p50": round(pct(latency, 50) * 1000), "p95": round(pct(latency, 95) * 1000)},
            "worker_cpu_ms_per_image": round(worker_cpu * 1000, 1),
            "model_cpu_ms_per_image": round(threads["model"] * 1000, 1)}


def median_row(rows: list[dict]) -> dict:
    """One (delay, load) cell: the median of each figure over the rounds."""
    first = rows[0]
    pick_ = lambda get: round(statistics.median(get(r) for r in rows), 2)  # noqa: E731
    return {"delay_ms": first["delay_ms"], "load": first["load"], "rate": first["rate"], "rounds": len(rows),
            "batches": pick_(lambda r: r["batches"]), "mean_batch": pick_(lambda r: r["mean_batch"]),
            "latency_ms": {"p50": pick_(lambda r: r["latency_ms"]["p50"]), "p95": pick_(lambda r: r["latency_ms"]["p95"])},
            "worker_cpu_ms_per_image": pick_(lambda r: r["worker_cpu_ms_per_image"]),
            "model_cpu_ms_per_image": pick_(lambda r: r["model_cpu_ms_per_image"])}


def main(argv: list[str] | None = None) -> int:
    def options(parser) -> None:
        parser.add_argument("--delays", default="0,100,300", help="--max-batch-delay-ms values (default 0,100,300)")
        parser.add_argument("--loads", default="0.25,0.5",
                            help="arrival rates as fractions of the bare model's img/s at batch 8 (default 0.25,0.5)")
        parser.add_argument("--images", type=int, help="images per window (default 60; 24 with --quick)")
        parser.add_argument("--rounds", type=int, help="rounds of every (load, delay) window, in turns (default 3; "
                                                      "1 with --quick); the tables give medians")
        parser.add_argument("--size", default="640x480", help="image width x height (default 640x480)")

    args = parse_args(NAME, argv, options)
    delays = [int(d) for d in args.delays.split(",")]
    loads = [float(f) for f in args.loads.split(",")]
    rounds = args.rounds or pick(1, 3)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    note_load(NAME)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from mlserver.handlers.resnet50 import ResNet50

    payloads = photos(args.images or pick(24, 60), size)
    handler = ResNet50(weights="none", batch_size=BATCH)
    handler.load()
    inputs, _, _ = decode_all(handler, payloads)
    bare = {batch: bare_rate(handler, inputs, batch) for batch in (1, BATCH)}
    del handler, inputs
    rate8 = bare[BATCH][0]
    print(f"{len(payloads)} JPEGs of {size[0]}x{size[1]} per window; the bare model: "
          + ", ".join(f"batch {b}: {r:.1f} img/s, {c * 1000:.0f} CPU ms/img" for b, (r, c) in bare.items()), flush=True)

    windows = []
    with Stack() as stack:
        # One worker per delay, each on its own model, all started first: the load goes to one at a
        # time, in turns, so drift on the machine weighs on every delay alike (the others idle in a
        # long-poll meanwhile).
        workers = {}
        try:
            for delay in delays:
                model, port = model_name(), free_port()
                workers[delay] = (Worker(stack.url, WORKER_KEY, [
                    "--model", model, "--handler", "resnet50", "--weights", "none", "--batch", str(BATCH),
                    "--max-batch-delay-ms", str(delay), "--lease", "300", "--wait", "5", "--idle-after", "0",
                    "--metrics-port", str(port)], log_dir=stack.work / f"worker-{delay}").start(timeout=600),
                    model, port)
            for round_ in range(rounds):
                for i, load in enumerate(loads):
                    for delay, (worker, model, port) in workers.items():
                        figures = trickle(stack, worker, model, payloads, load * rate8, port, seed=round_ * 100 + i)
                        windows.append({"delay_ms": delay, "load": load, "rate": round(load * rate8, 2), **figures})
                print(f"  round {round_ + 1} of {rounds}: done", flush=True)
        finally:
            for worker, _, _ in workers.values():
                worker.stop(timeout=60)

    rows = [median_row([w for w in windows if (w["delay_ms"], w["load"]) == (delay, load)])
            for load in loads for delay in delays]
    table(f"Dynamic batching under Poisson arrivals: ResNet50, --batch {BATCH}, bare model {rate8:.1f} img/s at batch "
          f"{BATCH} ({bare[1][0]:.1f} at 1); medians of {rounds} rounds",
          ["delay ms", "load", "tasks/s", "batches", "mean batch", "p50 ms", "p95 ms", "worker CPU ms/img",
           "model CPU ms/img"],
          [[r["delay_ms"], r["load"], r["rate"], r["batches"], r["mean_batch"], r["latency_ms"]["p50"],
            r["latency_ms"]["p95"], r["worker_cpu_ms_per_image"], r["model_cpu_ms_per_image"]] for r in rows])
    save(NAME, {"batch": BATCH, "images": len(payloads), "size": list(size), "rounds": rounds,
                "bare": {str(b): {"images_per_s": round(r, 2), "cpu_ms_per_image": round(c * 1000, 1)}
                         for b, (r, c) in bare.items()},
                "rows": rows, "windows": windows})
    return 0


def summary(d: dict) -> list[list]:
    """For the summary table: each delay against none, at the lightest load measured."""
    load = min(r["load"] for r in d["rows"])
    base = next(r for r in d["rows"] if r["load"] == load and r["delay_ms"] == 0)
    return [["12 batching", f"{r['delay_ms']} ms delay, load {load}: mean batch, p50 ms, worker CPU ms/img",
             f"{r['mean_batch']}, {r['latency_ms']['p50']:.0f}, {r['worker_cpu_ms_per_image']}",
             f"no delay: {base['mean_batch']}, {base['latency_ms']['p50']:.0f}, {base['worker_cpu_ms_per_image']}",
             common.ratio(base["worker_cpu_ms_per_image"], r["worker_cpu_ms_per_image"]), "measure it", ""]
            for r in d["rows"] if r["load"] == load and r["delay_ms"] != 0]


if __name__ == "__main__":
    sys.exit(main())
