"""`python -m bench.decode`: how many images a second the worker's fetch side can ready for the
model, with 1, 2 and 4 decode threads (`--decode-threads`).

A GPU runs ResNet50 faster than one thread decodes JPEGs, so there the fetch side, not the model,
sets the pace. This measures that side alone, as the worker runs it: `Fetcher.decode` over batches
of 32 ResNet50 tasks (640x480 JPEGs of bench.worker, inline in their claims), through the ResNet50
handler's own decode (EXIF, RGB, resize to 224), with no model and no broker. Rounds alternate the
thread counts; the table holds each count's median round. Wall-clock img/s is the figure to set
against an accelerator's; CPU per image shows what the threads cost.
"""

from __future__ import annotations

import statistics
import threading
import time

from . import common
from .worker import photos

NAME = "decode"
BATCH = 32
THREADS = (1, 2, 4)


def ready_rate(fetcher, payloads: list[bytes]) -> tuple[float, float]:
    """(images/s, CPU seconds per image) of the fetcher readying `payloads` in batches of BATCH."""
    from mlserver.tasks import Task

    start, cpu = time.perf_counter(), time.process_time()
    for first in range(0, len(payloads), BATCH):
        tasks = [Task(f"t{i}", "lease", 300, payload, "image/jpeg", {}, 1)
                 for i, payload in enumerate(payloads[first:first + BATCH], first)]
        batch = fetcher.decode(tasks)
        assert len(batch.tasks) == len(tasks), batch.undecodable[:1]
    return len(payloads) / (time.perf_counter() - start), (time.process_time() - cpu) / len(payloads)


def main(argv: list[str] | None = None) -> int:
    args = common.parse_args(NAME, argv, lambda p: p.add_argument("--rounds", type=int, default=0, metavar="N",
                                                                 help="rounds of 1/2/4 threads (default 3; 2 quick)"))
    common.note_load(NAME)
    from mlserver.__main__ import usable_cores
    from mlserver.fetcher import Claiming, Fetcher
    from mlserver.handlers.resnet50 import ResNet50
    from mlserver.tasks import Ledger

    payloads = photos(common.pick(64, 160), (640, 480))
    rounds = args.rounds or common.pick(2, 3)
    handler = ResNet50(weights="none", batch_size=BATCH)  # its decode needs no model
    fetchers = {n: Fetcher(None, handler, Claiming("bench", BATCH, 0, 300, decode_threads=n), Ledger(),
                           threading.Event()) for n in THREADS}
    measured: dict[int, list[tuple[float, float]]] = {n: [] for n in THREADS}
    try:
        ready_rate(fetchers[1], payloads[:BATCH])  # warm-up: Pillow's first decode
        for _ in range(rounds):
            for n in THREADS:
                measured[n].append(ready_rate(fetchers[n], payloads))
    finally:
        for fetcher in fetchers.values():
            fetcher.close()
    cores = usable_cores()
    results = []
    for n in THREADS:
        rate = statistics.median(r for r, _ in measured[n])
        cpu_ms = statistics.median(c for _, c in measured[n]) * 1000
        results.append({"decode_threads": n, "img_per_s": round(rate, 1), "cpu_ms_per_img": round(cpu_ms, 2),
                        "rounds_img_per_s": [round(r, 1) for r, _ in measured[n]]})
    base = results[0]["img_per_s"]
    for row in results:
        row["x_one_thread"] = common.ratio(row["img_per_s"], base)
    common.table(f"Fetch side: ResNet50 decode of 640x480 JPEGs, batches of {BATCH}, {cores} cores, "
                 f"median of {rounds} rounds",
                 ["decode threads", "img/s", "x 1 thread", "CPU ms/img", "rounds img/s"],
                 [[r["decode_threads"], r["img_per_s"], r["x_one_thread"], r["cpu_ms_per_img"],
                   " ".join(str(v) for v in r["rounds_img_per_s"])] for r in results])
    common.save(NAME, {"images": len(payloads), "batch": BATCH, "rounds": rounds, "cores": cores,
                       "results": results})
    return 0


def summary(d: dict) -> list[list]:
    """This benchmark's rows of the summary table (bench.plot)."""
    results = {r["decode_threads"]: r for r in d.get("results", [])}
    one = results.get(1)
    return [["15 decode", f"fetch side, {n} decode threads: img/s (ResNet50 decode, 640x480 JPEG, "
             f"{d.get('cores')} cores)", r["img_per_s"], f"1 thread {one['img_per_s']} img/s" if one else "",
             r["x_one_thread"], "report", ""] for n, r in sorted(results.items()) if n > 1]


if __name__ == "__main__":
    raise SystemExit(main())
