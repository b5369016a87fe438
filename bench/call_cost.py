"""`python -m bench.call_cost [--quick]`: what one storage call costs the caller's CPU, made through
the broker's adapter (broker/storage.py, which speaks REST for the calls on a task's path) and
through the bare async Azure SDK, for the six calls a task makes, against Azurite.

Both run in this process on one event loop, kind by kind and in turns (adapter, SDK, adapter, ...),
so the machine's drift falls on both alike; CPU is this process's (time.process_time) over N calls
in a row, wall time each call's. Azurite's own CPU is left out: it is the same requests either way.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid

from azure.core import MatchConditions
from azure.storage.blob.aio import BlobServiceClient
from azure.storage.queue.aio import QueueServiceClient

from broker.storage import Storage
from devstack.services import Azurite

from . import common

NAME = "call_cost"
KINDS = ["blob create", "blob metadata write", "blob read", "queue send", "queue receive", "queue delete"]
PAYLOAD = b"p" * 1024
METADATA = {"task": '{"model": "bench", "params": {}, "content_type": "application/octet-stream", "created": 1.0}'}


class Adapter:
    """The six calls through broker.storage."""

    def __init__(self, storage: Storage, model: str) -> None:
        self.s, self.model = storage, model

    async def run(self, kind: str, i: int, state: dict) -> None:
        name = f"a{i}"
        if kind == "blob create":
            state[name] = await self.s.inbox.create(name, PAYLOAD, METADATA, "application/octet-stream")
        elif kind == "blob metadata write":
            state[name] = await self.s.inbox.set_metadata(name, METADATA, state[name])
        elif kind == "blob read":
            await self.s.inbox.read(name)
        elif kind == "queue send":
            await self.s.queues.send(self.model, "m" * 300, 600)
        elif kind == "queue receive":
            state.setdefault("messages", []).extend(await self.s.queues.receive(self.model, 1, 600))
        else:
            message = state["messages"].pop()
            await self.s.queues.delete(self.model, message.id, message.receipt)


class Sdk:
    """The same six calls through the bare async SDK, configured as storage.py configures it."""

    def __init__(self, connection: str, model: str) -> None:
        options = dict(connection_timeout=3, read_timeout=10, use_env_settings=False)
        self.blobs = BlobServiceClient.from_connection_string(connection, **options)
        self.container = self.blobs.get_container_client("inbox")
        self.queues = QueueServiceClient.from_connection_string(connection, **options)
        self.queue = self.queues.get_queue_client("tasks-" + model)

    async def run(self, kind: str, i: int, state: dict) -> None:
        blob = self.container.get_blob_client(f"s{i}")
        if kind == "blob create":
            state[i] = (await blob.upload_blob(PAYLOAD, overwrite=False, metadata=METADATA))["etag"]
        elif kind == "blob metadata write":
            state[i] = (await blob.set_blob_metadata(METADATA, etag=state[i],
                                                     match_condition=MatchConditions.IfNotModified))["etag"]
        elif kind == "blob read":
            await (await blob.download_blob()).readall()
        elif kind == "queue send":
            await self.queue.send_message("m" * 300, time_to_live=600)
        elif kind == "queue receive":
            async for page in self.queue.receive_messages(max_messages=1, messages_per_page=1,
                                                          visibility_timeout=600).by_page():
                state.setdefault("messages", []).extend([m async for m in page])
                break
        else:
            message = state["messages"].pop()
            await self.queue.delete_message(message.id, message.pop_receipt)

    async def close(self) -> None:
        await self.queue.close()
        await self.queues.close()
        await self.container.close()
        await self.blobs.close()


async def measure(connection: str, n: int, rounds: int) -> dict:
    storage = Storage(connection, 10)
    await storage.ensure_containers()
    sides = {"adapter": Adapter(storage, "cost-" + uuid.uuid4().hex[:8]), "sdk": Sdk(connection, "cost-sdk")}
    await sides["sdk"].queue.create_queue()
    cpu = {side: {kind: [] for kind in KINDS} for side in sides}
    wall = {side: {kind: [] for kind in KINDS} for side in sides}
    try:
        for r in range(rounds + 1):  # round 0 warms both up and is not counted
            states = {side: {} for side in sides}
            for kind in KINDS:
                for side, caller in sides.items():
                    base = r * n
                    began = time.process_time()
                    for i in range(base, base + n):
                        t = time.perf_counter()
                        await caller.run(kind, i, states[side])
                        if r:
                            wall[side][kind].append(time.perf_counter() - t)
                    if r:
                        cpu[side][kind].append((time.process_time() - began) / n)
    finally:
        await sides["sdk"].close()
        await storage.close()
    kinds = {}
    for kind in KINDS:
        a, s = (statistics.median(cpu[side][kind]) * 1000 for side in ("adapter", "sdk"))
        kinds[kind] = {"adapter_cpu_ms": round(a, 3), "sdk_cpu_ms": round(s, 3), "cpu_ratio": common.ratio(a, s),
                       "adapter_wall_p50_ms": round(common.pct(wall["adapter"][kind], 50) * 1000, 2),
                       "sdk_wall_p50_ms": round(common.pct(wall["sdk"][kind], 50) * 1000, 2)}
    return kinds


def summary(d: dict) -> list[list]:
    kinds = d["kinds"]
    adapter = statistics.fmean(k["adapter_cpu_ms"] for k in kinds.values())
    sdk = statistics.fmean(k["sdk_cpu_ms"] for k in kinds.values())
    return [["13 call cost", "CPU per storage call, mean of the 6 on a task's path: adapter / bare SDK",
             f"{adapter:.2f} ms", f"{sdk:.2f} ms", common.ratio(adapter, sdk), "report", ""]]


def main(argv=None) -> None:
    common.parse_args(NAME, argv)
    common.note_load(NAME)
    n, rounds = common.pick((100, 2), (300, 5))
    with Azurite() as azurite:
        kinds = asyncio.run(measure(azurite.connection_string, n, rounds))
    common.table(f"CPU per call (ms, median of {rounds} rounds of {n} calls) and wall p50 (ms)",
                 ["call", "adapter CPU", "SDK CPU", "ratio", "adapter wall", "SDK wall"],
                 [[k, v["adapter_cpu_ms"], v["sdk_cpu_ms"], v["cpu_ratio"], v["adapter_wall_p50_ms"],
                   v["sdk_wall_p50_ms"]] for k, v in kinds.items()])
    data = {"calls_per_kind_per_round": n, "rounds": rounds, "kinds": kinds}
    print("\n".join(" | ".join(str(c) for c in row) for row in summary(data)))
    common.save(NAME, data)


if __name__ == "__main__":
    main()
