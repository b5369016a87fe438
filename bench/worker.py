"""`python -m bench.worker`: ResNet50 images/s through the broker versus the bare model, same images, same run.

For each batch size it submits the same JPEGs to a fresh queue, starts a real worker (random
weights) on it and takes the broker's own timestamps: from the first claim to the last result.
The bare figure is the same handler's predict (preprocessing + model) on the same decoded images,
in this process, with nothing else running, measured just before and just after each broker run.
Azurite, the dev host and the worker share this machine's cores, as they would on a single small
box. The worker's peak memory is its VmHWM.

`--pin` runs the model (the worker, and the bare reference in this process) on CPU 0 and Azurite and
the dev host on CPU 1, as in a deployment where storage and the app run elsewhere: the img/s ratio
is then the worker's own efficiency on its core (results in worker-pinned.json).

The machine may be shared, so it also reports CPU seconds per image: the bare model's against the
worker's + the dev host's + Azurite's during the broker run. Their ratio is what the wall-clock
ratio would be on an otherwise idle machine where the model saturates the CPU.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from devstack.services import Worker

from .common import (
    WORKER_KEY,
    Stack,
    cpu_seconds,
    model_name,
    note_load,
    parse_args,
    pick,
    pin,
    ratio,
    rss_mib,
    save,
    table,
    thread_cpu_seconds,
    verdict,
    wait_until,
)
from .profilers import azurite as azurite_profile
from .profilers import host_sampler as host_profile

NAME = "worker"


def photos(count: int, size: tuple[int, int], seed: int = 7) -> list[bytes]:
    """Distinct JPEGs with smooth shapes and noise, so decoding costs what a real photo's would."""
    rng = np.random.default_rng(seed)
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for _ in range(count):
        fx, fy, phase = rng.uniform(0.005, 0.05, 2).tolist() + [rng.uniform(0, 6.3)]
        base = (np.sin(xs * fx + phase) + np.cos(ys * fy - phase)) * 60 + 128
        rgb = np.stack([base, base[::-1], base[:, ::-1]], axis=-1) + rng.normal(0, 12, (height, width, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def decode_all(handler, payloads: list[bytes]) -> tuple[list, float, float]:
    """The decoded inputs, and the (wall, CPU) seconds per image of the handler's decode (JPEG to
    pixels), which the worker does on its fetch thread and the bare figure leaves out."""
    start, cpu = time.perf_counter(), time.process_time()
    inputs = [handler.decode(payload, "image/jpeg", {}) for payload in payloads]
    return inputs, (time.perf_counter() - start) / len(payloads), (time.process_time() - cpu) / len(payloads)


def worker_threads(before: dict[str, float], after: dict[str, float], images: int) -> dict[str, float]:
    """The worker's CPU seconds per image by thread: the model (the main thread and TensorFlow's), the
    fetch thread (claims, base64, decoding), the report threads (encoding, puts: "uploads") and the rest."""
    groups: dict[str, float] = {"model": 0.0, "fetch": 0.0, "uploads": 0.0, "other": 0.0}
    for name, seconds in after.items():
        group = ("fetch" if name == "mls:fetch" or name.startswith("mls:decode") else "uploads" if name.startswith("mls:report")
                 else "other" if name.startswith("mls:") else "model")
        groups[group] += seconds - before.get(name, 0.0)
    return {group: round(seconds / images, 4) for group, seconds in groups.items()}


def bare_rate(handler, inputs: list, batch: int) -> tuple[float, float]:
    """(images/s, CPU seconds per image) of the handler's predict alone, in batches of `batch`."""
    handler.predict(inputs[:batch])
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(inputs), batch):
        handler.predict(inputs[i:i + batch])
    return len(inputs) / (time.perf_counter() - start), (time.process_time() - cpu) / len(inputs)


def parse_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def broker_rate(stack: Stack, payloads: list[bytes], batch: int, host_samples: Path | None = None,
                model_cpus: set[int] | None = None, label: str = "") -> dict:
    """Queue every payload, start a worker, and time it from its first claim to its last result.

    Also the CPU seconds per image that the worker, the dev host and Azurite spent meanwhile: on a
    busy machine wall-clock rates drift with other people's load, CPU per image much less.
    """
    url = stack.url
    session = requests.Session()
    model = model_name()
    ids = []
    for payload in payloads:
        response = session.post(f"{url}/predict?model={model}", data=payload, headers={"Content-Type": "image/jpeg"})
        response.raise_for_status()
        ids.append(response.json()["task_id"])
    worker = Worker(url, WORKER_KEY, ["--model", model, "--handler", "resnet50", "--weights", "none",
                                      "--batch", str(batch), "--lease", "300", "--wait", "5",
                                      "--status-interval", "1"], log_dir=stack.work / f"worker-{batch}{label}")
    services = [stack.hosts[0].proc.pid, stack.azurite.proc.pid]
    before = [cpu_seconds(pid) for pid in services]
    worker.start(timeout=600)
    if model_cpus:
        pin(worker.proc.pid, model_cpus)
    # Model loading (the main and TensorFlow's threads) is not the serving cost: start from what they
    # have spent by now. The worker's own threads (mls:*) count from zero: the fetch thread may have
    # claimed and decoded the first batch before the ready line was read.
    threads_before = {name: seconds for name, seconds in thread_cpu_seconds(worker.proc.pid).items()
                      if not name.startswith("mls:")}
    window_start = time.monotonic()
    sampler = host_profile.start(stack.hosts[0].proc.pid, host_samples) if host_samples else None
    try:
        # Done when the worker's status line says so: polling the broker would load the machine.
        finished = re.compile(r"status: done (\d+), failed (\d+)")
        if not wait_until(lambda: any(int(d) + int(f) >= len(ids) for d, f in finished.findall(worker.log_text())),
                          timeout=3600, interval=0.5):
            raise SystemExit(f"the worker did not finish; its log: {worker.log_path}")
        window = (window_start, time.monotonic())
        rss = rss_mib(worker.proc.pid, "VmHWM")
        threads = worker_threads(threads_before, thread_cpu_seconds(worker.proc.pid), len(ids))
        spent = [sum(threads.values()) * len(ids)]
        spent += [cpu_seconds(pid) - was for pid, was in zip(services, before)]
    finally:
        host_profile.stop(sampler)
        worker.stop(timeout=60)
    documents = [session.get(f"{url}/status?task_id={task_id}").json() for task_id in ids]
    failed = [d for d in documents if d["status"] != "succeeded"]
    if failed:
        raise SystemExit(f"{len(failed)} tasks did not succeed, e.g. {failed[0]}; worker log: {worker.log_path}")
    start = min(parse_time(d["started_at"]) for d in documents)
    end = max(parse_time(d["finished_at"]) for d in documents)
    # Steady state: the worker claims batch k+1 as the model takes batch k, so from the second claim
    # on the claims keep the model's pace: the batches between the second and the last claim over
    # that time leave out filling the pipeline (the first claim and decode) and draining it (the
    # last batch and its puts). Every batch is full here (the queue holds them all from the start).
    claimed = sorted(parse_time(d["started_at"]) for d in documents)
    full = len(claimed) % batch == 0 and len(claimed) >= 4 * batch
    steady = (len(claimed) - 2 * batch) / (claimed[-batch] - claimed[batch]) if full else None
    device = re.search(r"device: (.*)", worker.log_text())
    return {"rate": len(ids) / (end - start), "steady_rate": steady, "seconds": end - start, "peak_rss_mib": rss,
            "cpu": sum(spent) / len(ids),
            "cpu_split": dict(zip(("worker", "devhost", "azurite"), (round(s / len(ids), 4) for s in spent))),
            "worker_threads": threads, "window": window,
            "device": device.group(1) if device else "unknown"}


def cpu_shares(bare_cpu: float, split: dict) -> dict:
    """The CPU ratio with the emulator's share left out, and with the worker alone (the broker and
    its storage elsewhere, as in a deployment): every CPU second here is taken from the model."""
    return {"cpu_ratio_without_azurite": ratio(bare_cpu, split["worker"] + split["devhost"]),
            "cpu_ratio_worker_alone": ratio(bare_cpu, split["worker"])}


def one_round(stack: Stack, handler, inputs: list, payloads: list[bytes], batch: int, decode_wall: float,
              decode_cpu: float, round_: int, host_samples: Path | None, model_cpus: set[int] | None) -> dict:
    """One bare / broker / bare sequence: the bare model just before and just after the broker run,
    so load from elsewhere on the machine weighs on both figures alike."""
    before = bare_rate(handler, inputs, batch)
    through = broker_rate(stack, payloads, batch, host_samples, model_cpus, label=f"-{round_}")
    after = bare_rate(handler, inputs, batch)
    bare, bare_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    return {"batch": batch, "bare_images_per_s": round(bare, 2),
            "broker_images_per_s": round(through["rate"], 2),
            "ratio": ratio(through["rate"], bare),
            "steady_images_per_s": through["steady_rate"] and round(through["steady_rate"], 2),
            "steady_ratio": through["steady_rate"] and ratio(through["steady_rate"], bare),
            "bare_cpu_s_per_image": round(bare_cpu, 4),
            "broker_cpu_s_per_image": round(through["cpu"], 4),
            "cpu_ratio": ratio(bare_cpu, through["cpu"]),
            "cpu_s_per_image_by_process": through["cpu_split"],
            "worker_cpu_s_per_image_by_thread": through["worker_threads"],
            # The bare reference with the handler's JPEG decoding added: what the
            # model costs on these bytes when it is called without the broker.
            "ratio_with_decode": ratio(through["rate"], 1 / (1 / bare + decode_wall)),
            "cpu_ratio_with_decode": ratio(bare_cpu + decode_cpu, through["cpu"]),
            **cpu_shares(bare_cpu, through["cpu_split"]),
            "worker_peak_rss_mib": through["peak_rss_mib"] and round(through["peak_rss_mib"]),
            "device": through["device"], "window": through["window"]}


def median_round(measured: list[dict]) -> dict:
    """The round of median img/s ratio (the lower middle of an even count), whole, so its figures
    belong together, with every round's ratio beside it: single runs scatter by +-0.1 here."""
    chosen = sorted(measured, key=lambda row: row["ratio"])[(len(measured) - 1) // 2]
    return {**chosen, "rounds": len(measured), "round_ratios": [row["ratio"] for row in measured]}


def main(argv: list[str] | None = None) -> int:
    def options(parser) -> None:
        parser.add_argument("--images", type=int, help="images per batch size (default 160; 32 with --quick)")
        parser.add_argument("--batches", default="1,8,16", help="batch sizes, comma-separated (default 1,8,16)")
        parser.add_argument("--size", default="640x480", help="image width x height (default 640x480)")
        parser.add_argument("--profile-azurite", action="store_true",
                            help="also profile Azurite (node --cpu-prof) while the workers run")
        parser.add_argument("--pin", action="store_true",
                            help="the model on CPU 0, Azurite and the dev host on CPU 1 (results in worker-pinned.json)")
        parser.add_argument("--rounds", type=int, default=1, metavar="N",
                            help="bare / broker / bare sequences per batch size; the table holds the median round's "
                                 "figures (default 1)")
        parser.add_argument("--profile-host", action="store_true",
                            help="also sample the dev host with py-spy (--gil) while the workers run")

    args = parse_args(NAME, argv, options)
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    batches = [int(b) for b in args.batches.split(",")]
    size = tuple(int(v) for v in args.size.lower().split("x"))
    note_load(NAME)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from mlserver.handlers.resnet50 import ResNet50

    payloads = photos(args.images or pick(32, 160), size)
    handler = ResNet50(weights="none", batch_size=max(batches))
    handler.load()
    inputs, decode_wall, decode_cpu = decode_all(handler, payloads)
    print(f"{len(payloads)} JPEGs of {size[0]}x{size[1]}, ResNet50 with random weights, device {handler.device()}",
          flush=True)

    rows, windows = [], []
    profile_dir = Path(tempfile.mkdtemp(prefix="azurite-profile-")) if args.profile_azurite else None
    model_cpus = {0} if args.pin else None
    with Stack(azurite_node_args=["--cpu-prof", "--cpu-prof-dir", str(profile_dir)] if profile_dir else None) as stack:
        if args.pin:
            for pid in (stack.azurite.proc.pid, stack.hosts[0].proc.pid):
                pin(pid, {1})
            pin(os.getpid(), model_cpus)  # the bare reference runs here
        for batch in batches:
            measured = []
            for round_ in range(args.rounds):
                measured.append(one_round(stack, handler, inputs, payloads, batch, decode_wall, decode_cpu, round_,
                                          stack.work / f"host-samples-{batch}-{round_}.txt" if args.profile_host else None,
                                          model_cpus))
                windows.append(measured[-1].pop("window"))
                print(f"  batch {batch:>2}, round {round_ + 1} of {args.rounds}: ratio {measured[-1]['ratio']}", flush=True)
            rows.append(median_round(measured))

    goal = "on its own core, ratio >= 0.95" if args.pin else "ratio >= 0.85 on CPU, 0.95 on a GPU"
    table(f"ResNet50 through the broker vs the bare model, the median of {args.rounds} round(s) (goal: {goal})",
          ["batch", "bare img/s", "broker img/s", "ratio", "every round", "steady ratio", "bare CPU s/img",
           "all CPU s/img", "CPU ratio", "without Azurite", "worker alone", "worker peak MiB"],
          [[r["batch"], r["bare_images_per_s"], r["broker_images_per_s"], r["ratio"],
            " ".join(f"{x:.3f}" for x in r["round_ratios"]), r["steady_ratio"], r["bare_cpu_s_per_image"],
            r["broker_cpu_s_per_image"], r["cpu_ratio"], r["cpu_ratio_without_azurite"], r["cpu_ratio_worker_alone"],
            r["worker_peak_rss_mib"]] for r in rows])
    ms = lambda seconds: round(seconds * 1000, 1)  # noqa: E731
    table("CPU milliseconds per image: the bare model, and each process (and worker thread) through the broker",
          ["batch", "bare model", "decode", "worker: model", "fetch", "uploads", "other", "dev host", "Azurite"],
          [[r["batch"], ms(r["bare_cpu_s_per_image"]), ms(decode_cpu),
            *(ms(r["worker_cpu_s_per_image_by_thread"][g]) for g in ("model", "fetch", "uploads", "other")),
            ms(r["cpu_s_per_image_by_process"]["devhost"]), ms(r["cpu_s_per_image_by_process"]["azurite"])]
           for r in rows])
    result = {"images": len(payloads), "size": list(size), "device": handler.device(),
              "decode_s_per_image": {"wall": round(decode_wall, 4), "cpu": round(decode_cpu, 4)}, "rows": rows}
    if args.profile_host:
        result["host_profile"] = host_profile.summary(sorted(stack.work.glob("host-samples-*.txt")))
        if not result["host_profile"]:
            print("no dev host samples: py-spy needs leave to attach (root, or kernel.yama.ptrace_scope=0)", flush=True)
        table("The dev host's CPU while the workers ran, by area (py-spy samples of the GIL holder)",
              ["share", "area"], [[f"{row['share'] * 100:.1f} %", row["area"]] for row in result["host_profile"]])
    if profile_dir:
        found = azurite_profile.newest(profile_dir)
        result["azurite_profile"] = azurite_profile.summary(found, windows=windows) if found else None
        if not found:
            print(f"no Azurite profile in {profile_dir}: node writes it only when Azurite exits cleanly", flush=True)
        else:
            table("Azurite's CPU while the workers ran, by where its own code spends it (node --cpu-prof)",
                  ["share", "seconds", "area"],
                  [[f"{row['share'] * 100:.1f} %", row["seconds"], row["area"]] for row in result["azurite_profile"]])
    result["pinned"] = bool(args.pin)
    save(NAME + ("-pinned" if args.pin else ""), result)
    return 0


def summary(d: dict) -> list[list]:
    """This benchmark's rows of the summary table (bench.plot)."""
    rows = []
    for r in d.get("rows", []):
        rows.append(["5 worker", f"ResNet50 batch {r['batch']} through the broker / bare{_rounds(r)}",
                     f"{r['broker_images_per_s']} img/s", f"{r['bare_images_per_s']} img/s", r["ratio"], ">=0.85",
                     verdict(r["ratio"], 0.85, higher_is_better=True)])
    for r in d.get("rows", []):
        if r.get("steady_ratio"):
            rows.append(["5 worker", f"batch {r['batch']}, steady state (pipeline fill and drain left out)",
                         f"{r['steady_images_per_s']} img/s", f"{r['bare_images_per_s']} img/s", r["steady_ratio"],
                         "report", ""])
    for r in d.get("rows", []):
        if "cpu_s_per_image_by_process" in r:
            shares = cpu_shares(r["bare_cpu_s_per_image"], r["cpu_s_per_image_by_process"])
            rows.append(["5 worker", f"batch {r['batch']}, CPU per image: bare / (worker + dev host), "
                         "Azurite's share left out",
                         f"{sum(r['cpu_s_per_image_by_process'][p] for p in ('worker', 'devhost')) * 1000:.1f} ms",
                         f"bare {r['bare_cpu_s_per_image'] * 1000:.1f} ms",
                         shares["cpu_ratio_without_azurite"], ">=0.85",
                         verdict(shares["cpu_ratio_without_azurite"], 0.85, higher_is_better=True)])
    return rows


def _rounds(row: dict) -> str:
    return f", median of {row['rounds']} rounds" if row.get("rounds", 1) > 1 else ""


def summary_pinned(d: dict) -> list[list]:
    """The rows of `--pin` runs: the worker's efficiency on its own core (issue 18's target 5)."""
    rows = []
    for r in d.get("rows", []):
        rows.append(["5 worker", f"ResNet50 batch {r['batch']} on its own core (Azurite, dev host on the other) / bare"
                     f"{_rounds(r)}", f"{r['broker_images_per_s']} img/s", f"{r['bare_images_per_s']} img/s",
                     r["ratio"], ">=0.95", verdict(r["ratio"], 0.95, higher_is_better=True)])
    return rows


if __name__ == "__main__":
    sys.exit(main())
