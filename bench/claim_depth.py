"""Claim cost against queue depth: getnexttask at depth 30 and 2,000 (and 10,000 in the full run).

Each depth has its own Azurite and dev host (all up at once: Azurite's receive filters and sorts
every message in the account, so depths sharing one emulator would slow each other down), with its
queue filled before timing. Claims go round-robin over the depths so drift hits them alike; after
each timed claim one task is added back (untimed), so the depth stays where it was. A bare SDK
receive on the same queue is timed too: the storage floor of a claim at that depth. (The design
this project replaced, listing an inbox container and leasing its first free blob, was measured
here until 2026-12-01: 40x slower at depth 2,000 than at 30; docs/performance.md keeps the figures.)
"""

from __future__ import annotations

import asyncio
import time

from azure.storage.queue import QueueClient

from . import common

GOAL_RATIO = 1.3
FILL_PARALLEL = 48


async def fill_queue(connection: str, model: str, depth: int) -> None:
    """Submit `depth` tasks through the broker's own task store (what predict writes), in parallel."""
    from broker.settings import Settings
    from broker.storage import Storage
    from broker.store import TaskStore

    settings = Settings(connection, (common.WORKER_KEY,), (), 5, 20 << 20, 86400, 1000, 20)
    storage = Storage(connection, 20)
    store = TaskStore(storage, settings)
    gate = asyncio.Semaphore(FILL_PARALLEL)

    async def one(i: int) -> None:
        async with gate:
            await store.submit(model, b"x" * 1024, "application/octet-stream", {})

    try:
        await asyncio.gather(*(one(i) for i in range(depth)))
    finally:
        await storage.close()


def bare_receive(queue) -> float:
    """The storage floor of a claim: one receive on the same queue, straight through the SDK; the
    message is made visible again afterwards (untimed)."""
    start = time.perf_counter()
    messages = list(queue.receive_messages(max_messages=1, visibility_timeout=600))
    seconds = time.perf_counter() - start
    for message in messages:
        queue.update_message(message, visibility_timeout=0)
    return seconds


def main(argv=None) -> dict:
    common.parse_args("claim_depth", argv)
    common.note_load("claim_depth")
    depths = common.pick([30, 2000], [30, 2000, 10000])
    claims = common.pick(30, 60)
    # One Azurite (and dev host) per depth, all up at once and used in turns: Azurite's receive
    # filters and sorts every message of the account, so depths sharing one emulator would slow
    # each other and the depth-30 reference would not be one.
    stacks = {}
    try:
        for d in depths:
            stacks[d] = common.Stack().__enter__()
        models = {d: common.model_name(f"depth{d}") for d in depths}
        start = time.perf_counter()
        for d in depths:
            asyncio.run(fill_queue(stacks[d].connection_string, models[d], d))
            print(f"  filled depth {d} ({time.perf_counter() - start:.0f} s)", flush=True)
        session = common.worker_session()
        queues = {d: QueueClient.from_connection_string(stacks[d].connection_string, f"tasks-{models[d]}")
                  for d in depths}
        ours, bare = ({d: [] for d in depths} for _ in range(2))

        def claim(d: int) -> float:
            url = stacks[d].url
            t0 = time.perf_counter()
            response = session.get(f"{url}/getnexttask", params={"model": models[d], "wait": 0, "lease": 600})
            seconds = time.perf_counter() - t0
            if response.status_code != 200:
                raise RuntimeError(f"claim at depth {d} answered {response.status_code}")
            session.post(f"{url}/predict?model={models[d]}", data=b"x" * 1024)  # keep the depth
            return seconds

        for d in depths:  # warm every path once
            claim(d)
            bare_receive(queues[d])
        for _ in range(claims):
            for d in depths:
                ours[d].append(claim(d))
                bare[d].append(bare_receive(queues[d]))
        for d in depths:
            queues[d].close()
    finally:
        for stack in stacks.values():
            stack.__exit__(None, None, None)
    base = {name: common.pct(values[depths[0]], 50) for name, values in (("ours", ours), ("bare", bare))}
    rows, results = [], {}
    for d in depths:
        o, b = common.summary_ms(ours[d]), common.summary_ms(bare[d])
        r_ours = common.ratio(common.pct(ours[d], 50), base["ours"])
        r_bare = common.ratio(common.pct(bare[d], 50), base["bare"])
        own = o["p50_ms"] - b["p50_ms"]  # what the broker adds to Azurite's receive at this depth
        own30 = common.pct(ours[depths[0]], 50) * 1000 - base["bare"] * 1000
        results[str(d)] = {"broker_own_p50_ms": round(own, 2), "broker_own_ratio_vs_30": common.ratio(own, own30),
                           "queue_claim": o, "bare_receive": b,
                           "queue_ratio_vs_30": r_ours, "bare_receive_ratio_vs_30": r_bare,
                           "goal": common.verdict(r_ours, GOAL_RATIO) if d != depths[0] else None}
        rows.append([d, o["p50_ms"], r_ours, b["p50_ms"], r_bare, round(own, 2), results[str(d)]["broker_own_ratio_vs_30"],
                     results[str(d)]["goal"]])
    text = common.table(f"Claim cost vs queue depth ({claims} claims per depth, round-robin, one Azurite per depth), "
                        f"p50 ms", ["depth", "getnexttask", "ratio vs 30", "bare receive", "ratio vs 30",
                                    "claim - receive", "ratio vs 30",
                                    f"goal <= {GOAL_RATIO}"], rows)
    data = {"depths": depths, "claims_per_depth": claims, "results": results, "table": text, "goal_ratio": GOAL_RATIO}
    common.save("claim_depth", data)
    return data


def summary(d: dict) -> list[list]:
    """This benchmark's rows of the summary table (bench.plot)."""
    rows = []
    base = d["results"][str(d["depths"][0])]
    for depth in d["depths"][1:]:
        r = d["results"][str(depth)]
        rows.append(["2 claim depth", f"queue claim p50, depth {depth} / depth {d['depths'][0]}",
                     f"{r['queue_claim']['p50_ms']:.1f} ms", f"{base['queue_claim']['p50_ms']:.1f} ms",
                     r["queue_ratio_vs_30"], "<=1.3", r["goal"]])
        if "bare_receive" in r:
            own, own30 = (x["queue_claim"]["p50_ms"] - x["bare_receive"]["p50_ms"] for x in (r, base))
            rows.append(["2 claim depth", f"broker's own part (getnexttask - bare receive), depth {depth} / "
                         f"{d['depths'][0]}", f"{own:.1f} ms", f"{own30:.1f} ms", common.ratio(own, own30),
                         "<=1.3", common.verdict(common.ratio(own, own30), 1.3)])
            rows.append(["2 claim depth", f"bare SDK receive p50 (Azurite floor), depth {depth} / {d['depths'][0]}",
                         f"{r['bare_receive']['p50_ms']:.1f} ms", f"{base['bare_receive']['p50_ms']:.1f} ms",
                         r["bare_receive_ratio_vs_30"], "", ""])
    return rows


if __name__ == "__main__":
    main()
