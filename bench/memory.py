"""Memory: the dev host's RSS under the throughput load (4 echo workers, 8 closed-loop clients)
sampled over a soak (10 minutes in the full run, 30 s in --quick), and a ResNet50 worker's peak
RSS at batch 16 on CPU, against the bare handler (same model, same batch) in its own process.

Reference, same run: the dev host's RSS when idle, just started; growth is judged on the second
half of the soak (after warm-up), as MiB per minute by least squares and as end / middle.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import requests

from devstack.services import Worker

from . import common
from .throughput import Load, start_workers, stop_workers

HOST_GOAL_MIB, WORKER_GOAL_MIB = 200, 1536
FLAT_MIB_PER_MIN = 1.0

BARE_SCRIPT = """
import os, re, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from bench.worker import photos
from mlserver.handlers.resnet50 import ResNet50
handler = ResNet50(weights="none", batch_size=16)
handler.load()
inputs = [handler.decode(p, "image/jpeg", {}) for p in photos(32, (640, 480))]
for i in range(0, len(inputs), 16):
    handler.predict(inputs[i:i + 16])
print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
"""


def slope_per_min(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 3:
        return float("nan")
    ts, ys = [t for t, _ in samples], [y for _, y in samples]
    mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
    den = sum((t - mt) ** 2 for t in ts)
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / den * 60 if den else float("nan")


def host_soak(seconds: float, interval: float) -> dict:
    with common.Stack() as stack:
        pid = stack.hosts[0].proc.pid
        requests.get(f"{stack.url}/health")
        idle = common.rss_mib(pid)
        model = common.model_name("mem")
        workers = start_workers(stack.url, model, 4, stack.work)
        samples, azurite = [], []
        try:
            with Load(stack.url, model, 0) as load:
                t0 = time.monotonic()
                while (elapsed := time.monotonic() - t0) < seconds:
                    samples.append((elapsed, common.rss_mib(pid)))
                    azurite.append(common.rss_mib(stack.azurite.proc.pid))
                    time.sleep(interval)
                samples.append((time.monotonic() - t0, common.rss_mib(pid)))
                done, errors = len(load.done), list(load.errors)
            peak = common.rss_mib(pid, "VmHWM")
        finally:
            stop_workers(workers)
    half = [s for s in samples if s[0] >= seconds / 2]
    middle, end = half[0][1], samples[-1][1]
    return {"idle_rss_mib": round(idle, 1), "peak_rss_mib": round(peak, 1), "end_rss_mib": round(end, 1),
            "peak_over_idle": common.ratio(peak, idle), "end_over_middle": common.ratio(end, middle),
            "slope_mib_per_min_second_half": round(slope_per_min(half), 3), "soak_s": round(seconds),
            "tasks_done": done, "client_errors": {str(e): errors.count(e) for e in set(errors)},
            "azurite_rss_mib_end": round(azurite[-1], 1) if azurite else None,
            "samples": [(round(t, 1), round(v, 1)) for t, v in samples]}


def resnet_worker(images: int) -> dict:
    from .worker import photos

    payloads = photos(images, (640, 480))
    with common.Stack() as stack:
        model = common.model_name("memresnet")
        session = requests.Session()
        ids = [session.post(f"{stack.url}/predict?model={model}", data=p, headers={"Content-Type": "image/jpeg"})
               .json()["task_id"] for p in payloads]
        worker = Worker(stack.url, common.WORKER_KEY, ["--model", model, "--handler", "resnet50", "--weights", "none",
                                                       "--batch", "16", "--lease", "300", "--wait", "2",
                                                       "--status-interval", "600"],
                        log_dir=stack.work / "resnet", env={"TF_CPP_MIN_LOG_LEVEL": "2"}).start(timeout=600)
        try:
            for task_id in ids:
                while session.get(f"{stack.url}/getresult", params={"task_id": task_id, "wait": 60}).status_code == 202:
                    pass
            peak = common.rss_mib(worker.proc.pid, "VmHWM")
        finally:
            worker.stop(timeout=60)
    bare = subprocess.run([sys.executable, "-c", BARE_SCRIPT], capture_output=True, text=True, timeout=900,
                          cwd=common.ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    bare_peak = int(bare.stdout.strip().splitlines()[-1]) / 1024 if bare.returncode == 0 else None
    return {"images": images, "batch": 16, "peak_rss_mib": round(peak, 1),
            "bare_handler_peak_rss_mib": bare_peak and round(bare_peak, 1),
            "worker_over_bare": common.ratio(peak, bare_peak) if bare_peak else None}


def main(argv=None) -> dict:
    def extra(parser):
        parser.add_argument("--soak", type=float, help="soak seconds (default 30 quick, 600 full)")
        parser.add_argument("--no-resnet", action="store_true", help="skip the ResNet50 worker")

    args = common.parse_args("memory", argv, extra)
    common.note_load("memory")
    soak = args.soak or common.pick(30, 600)
    host = host_soak(soak, common.pick(3, 10))
    resnet = None if args.no_resnet else resnet_worker(common.pick(32, 64))
    flat = host["slope_mib_per_min_second_half"] <= FLAT_MIB_PER_MIN
    rows = [["dev host, idle (reference)", host["idle_rss_mib"], 1.0, "", ""],
            ["dev host, peak under load", host["peak_rss_mib"], host["peak_over_idle"], f"<= {HOST_GOAL_MIB} MiB",
             common.verdict(host["peak_rss_mib"], HOST_GOAL_MIB)],
            [f"dev host growth, 2nd half of {host['soak_s']} s soak", f"{host['slope_mib_per_min_second_half']} MiB/min",
             host["end_over_middle"], f"<= {FLAT_MIB_PER_MIN} MiB/min", "PASS" if flat else "FAIL"]]
    if resnet:
        rows += [["ResNet50 bare handler, batch 16 (reference)", resnet["bare_handler_peak_rss_mib"], 1.0, "", ""],
                 ["ResNet50 worker, batch 16, peak", resnet["peak_rss_mib"], resnet["worker_over_bare"],
                  f"<= {WORKER_GOAL_MIB} MiB", common.verdict(resnet["peak_rss_mib"], WORKER_GOAL_MIB)]]
    text = common.table("Memory (RSS, MiB)", ["what", "MiB", "ratio", "goal", "pass"], rows)
    data = {"host": host, "resnet50_worker": resnet, "table": text,
            "goals": {"host_peak_mib": HOST_GOAL_MIB, "worker_peak_mib": WORKER_GOAL_MIB, "flat_mib_per_min": FLAT_MIB_PER_MIN}}
    common.save("memory", data)
    return data


def summary(d: dict) -> list[list]:
    """This benchmark's rows of the summary table (bench.plot)."""
    h = d["host"]
    rows = [["7 memory", "dev host peak RSS under load", f"{h['peak_rss_mib']:.0f} MiB", f"idle {h['idle_rss_mib']:.0f} MiB",
             h["peak_over_idle"], "<=200 MiB", common.verdict(h["peak_rss_mib"], 200)],
            ["7 memory", f"dev host growth, 2nd half of {h['soak_s']} s soak", f"{h['slope_mib_per_min_second_half']} MiB/min",
             "middle of soak", h["end_over_middle"], "flat (<=1 MiB/min)",
             common.verdict(h["slope_mib_per_min_second_half"], 1.0)]]
    if (w := d.get("resnet50_worker")):
        rows.append(["7 memory", "ResNet50 worker peak RSS, batch 16", f"{w['peak_rss_mib']:.0f} MiB",
                     f"bare handler {w['bare_handler_peak_rss_mib']} MiB", w["worker_over_bare"], "<=1536 MiB",
                     common.verdict(w["peak_rss_mib"], 1536)])
    return rows


if __name__ == "__main__":
    main()
