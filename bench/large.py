"""Large payloads and results through storage: a 1 GiB payload uploaded by the client, run by the echo
worker (which downloads it and uploads the same bytes as its result), and downloaded by the client.

Through the broker the bytes cross four times (client up, worker down, worker up, client down) and
never touch the app. Reference, same run, same Azurite, interleaved: the same bytes uploaded and
downloaded twice with the Azure SDK (max_concurrency 4, as the client and worker use 4 threads), no
broker at all. The figure is the ratio of the two rates (goal >= 0.8), and the dev host's peak RSS
over the whole run (goal <= 150 MiB: the app holds no payload).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from clients import BrokerClient
from devstack.services import Worker

from . import common

GOAL_RATIO, GOAL_RSS_MIB = 0.8, 150
CHUNK = 64 * 1024 * 1024


def random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as file:
        for start in range(0, size, CHUNK):
            file.write(os.urandom(min(CHUNK, size - start)))
    return path


def bare(connection_string: str, source: Path, size: int) -> dict:
    """Upload then download the bytes twice with the SDK: the four crossings the broker's path makes."""
    service = BlobServiceClient.from_connection_string(connection_string)
    container = service.get_container_client("bench-large")
    if not container.exists():
        container.create_container()
    up = down = 0.0
    for turn in range(2):
        blob = container.get_blob_client(f"bare-{turn}")
        start = time.perf_counter()
        with open(source, "rb") as file:
            blob.upload_blob(file, length=size, overwrite=True, max_concurrency=4)
        middle = time.perf_counter()
        data = blob.download_blob(max_concurrency=4).readall()
        up, down = up + middle - start, down + time.perf_counter() - middle
        assert len(data) == size
        del data
        blob.delete_blob()
    service.close()
    return {"seconds": up + down, "upload_s": up, "download_s": down}


def through_broker(url: str, source: Path, size: int, model: str) -> dict:
    with BrokerClient(url, timeout=120) as client:
        start = time.perf_counter()
        task_id = client.submit(source, model, "application/octet-stream")
        submitted = time.perf_counter()
        result = client.wait(task_id, timeout=1800)
        done = time.perf_counter()
        status = client.status(task_id)
    if len(result.content) != size:
        raise RuntimeError(f"the result has {len(result.content)} bytes, not {size}")
    del result
    return {"seconds": done - start, "client_upload_s": submitted - start, "worker_and_download_s": done - submitted,
            "attempts": status["attempts"]}


def main(argv=None) -> dict:
    common.parse_args("large", argv)
    common.note_load("large")
    size = common.pick(256, 1024) * 1024 * 1024
    rounds = common.pick(1, 2)
    work = Path(os.environ.get("BENCH_TMP") or "/tmp") / f"bench-large-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    source = random_file(work / "payload.bin", size)
    model = common.model_name("large")
    refs, runs, rss = [], [], []
    try:
        with common.Stack() as stack:
            worker = Worker(stack.url, common.WORKER_KEY, ["--model", model, "--handler", "echo", "--batch", "1",
                                                            "--lease", "600"], log_dir=stack.work / "worker").start()
            try:
                for r in range(rounds):
                    refs.append(bare(stack.connection_string, source, size))
                    runs.append(through_broker(stack.url, source, size, model))
                    rss.append(common.rss_mib(stack.hosts[0].proc.pid, "VmHWM"))
                    print(f"  round {r + 1}/{rounds}: bare {refs[-1]['seconds']:.1f} s, "
                          f"broker {runs[-1]['seconds']:.1f} s", flush=True)
            finally:
                worker.stop(timeout=60)
    finally:
        source.unlink(missing_ok=True)
        work.rmdir()
    ref_s = common.pct([r["seconds"] for r in refs], 50)
    run_s = common.pct([r["seconds"] for r in runs], 50)
    crossed = 4 * size / 1e6
    ratio = common.ratio(ref_s, run_s)
    peak = max(v for v in rss if v is not None)
    rows = [["bare SDK, up + down twice", f"{ref_s:.1f}", f"{crossed / ref_s:.0f}", "", ""],
            ["through the broker", f"{run_s:.1f}", f"{crossed / run_s:.0f}", ratio,
             common.verdict(ratio, GOAL_RATIO, higher_is_better=True)],
            ["dev host peak RSS, MiB", f"{peak:.0f}", "", "", common.verdict(peak, GOAL_RSS_MIB)]]
    text = common.table(f"A {size // 2**20} MiB payload and result through the echo worker ({rounds} rounds, medians); "
                        "4 crossings of the bytes each way of measuring",
                        ["path", "seconds", "MB/s", "rate / bare", "goal"], rows)
    data = {"size_bytes": size, "rounds": rounds, "bare": refs, "broker": runs, "bare_seconds": round(ref_s, 2),
            "broker_seconds": round(run_s, 2), "rate_ratio": ratio, "host_peak_rss_mib": round(peak, 1),
            "goals": {"rate_ratio": GOAL_RATIO, "host_peak_rss_mib": GOAL_RSS_MIB}, "table": text}
    common.save("large", data)
    return data


def summary(d: dict) -> list[list]:
    mib = d["size_bytes"] // 2**20
    return [["9 large", f"{mib} MiB payload + result: seconds", f"{d['broker_seconds']:.1f}",
             f"bare SDK {d['bare_seconds']:.1f} s", d["rate_ratio"], "rate >= 0.8x bare",
             common.verdict(d["rate_ratio"], GOAL_RATIO, higher_is_better=True)],
            ["9 large", "dev host peak RSS MiB", f"{d['host_peak_rss_mib']:.0f}", "", "", "<= 150",
             common.verdict(d["host_peak_rss_mib"], GOAL_RSS_MIB)]]


if __name__ == "__main__":
    main()
