"""Broker overhead: one full task cycle over HTTP (predict -> getnexttask -> puttaskresult ->
getresult) against the eight bare storage operations any such cycle needs, done directly with
the same async SDK the broker uses, without aiohttp's trust_env (upload payload, enqueue, receive, download payload, upload
result, delete message, delete payload, download result), interleaved, same Azurite, same run; and
against the calls the broker's cycle itself makes since 2026-12-06, bare (`Same`: six, the payload's
delete batched and the result answered by the instance that committed it), which is what the
goal "the cycle costs at most 1.2x the storage calls it makes" compares with.

Also measured in turns: one bare HTTP hop to the dev host (a path with no function: uvicorn,
Starlette and requests, no storage), to split the rest into "four HTTP hops" and "the broker".

`--profile` (on by default) then serves the same cycle from an instrumented dev host
(bench/profilers/host_tracer.py): every storage request is logged against the route that sent it, and
pyinstrument samples the process. The report gives, per route: storage calls, serial storage
stages, time on storage vs time in Python. `--compare-root DIR` also times a dev host served
from DIR (a scratch copy of the repo with a change being tried), in the same interleaved loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

import requests
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob.aio import BlobServiceClient
from azure.storage.queue.aio import QueueClient

from devstack.services import DevHost

from . import common

GOAL, STRETCH = 1.5, 1.2
ROUTES = ("predict", "getnexttask", "puttaskresult", "getresult")
PAYLOAD = os.urandom(1024)


class RootHost(DevHost):
    """The dev host served from another checkout (a scratch copy with a change being tried)."""

    def __init__(self, root: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.root = str(Path(root).resolve())

    def command(self) -> list[str]:
        code = (f"import os, sys; os.chdir({self.root!r}); sys.path.insert(0, {self.root!r}); "
                "from devstack.devhost import main; sys.exit(main())")
        return [sys.executable, "-c", code, *super().command()[3:]]


class ProfiledHost(DevHost):
    """The dev host under bench.profilers.host_tracer, writing its trace and profile to `out` on SIGTERM."""

    def __init__(self, out: Path, root: str | None, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.out, self.root = out, root

    def environment(self) -> dict:
        env = super().environment()
        if self.root:
            env["BENCH_HOST_ROOT"] = str(Path(self.root).resolve())
        return env

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.profilers.host_tracer", str(self.out), *super().command()[3:]]


def http_cycle(url: str, client: requests.Session, worker: requests.Session, model: str) -> tuple[float, dict]:
    """One task through the broker; returns (total seconds, seconds per route)."""
    times = {}
    t0 = time.perf_counter()
    r = client.post(f"{url}/predict?model={model}", data=PAYLOAD, headers={"Content-Type": "application/octet-stream"})
    t1 = time.perf_counter()
    task_id = r.json()["task_id"]
    r = worker.get(f"{url}/getnexttask", params={"model": model, "wait": 5, "lease": 60})
    t2 = time.perf_counter()
    task = r.json()["tasks"][0]
    assert task["task_id"] == task_id, "claimed another task than the one submitted"
    r = worker.post(f"{url}/puttaskresult", params={"task_id": task_id, "lease": task["lease"]}, data=PAYLOAD,
                    headers={"Content-Type": "application/octet-stream"})
    t3 = time.perf_counter()
    assert r.status_code == 200, r.text
    r = client.get(f"{url}/getresult", params={"task_id": task_id})
    t4 = time.perf_counter()
    assert r.status_code == 200 and r.content == PAYLOAD, (r.status_code, r.text[:200])
    times.update(predict=t1 - t0, getnexttask=t2 - t1, puttaskresult=t3 - t2, getresult=t4 - t3)
    return t4 - t0, times


class Bare:
    """The eight storage operations of one cycle, straight through the async SDK, one after another."""

    def __init__(self, connection: str, use_env_settings: bool = False) -> None:
        # use_env_settings=False: aiohttp without trust_env, which otherwise looks up ~/.netrc and
        # the proxy variables in a thread on every request. The strict reference is the tuned SDK.
        self.loop = asyncio.new_event_loop()
        self.service = BlobServiceClient.from_connection_string(connection, use_env_settings=use_env_settings)
        self.inbox = self.service.get_container_client("bare-inbox")
        self.outbox = self.service.get_container_client("bare-outbox")
        self.queue = QueueClient.from_connection_string(connection, "bare-tasks", use_env_settings=use_env_settings)
        self.loop.run_until_complete(self._setup())

    async def _setup(self) -> None:
        for create in (self.inbox.create_container, self.outbox.create_container, self.queue.create_queue):
            try:
                await create()
            except ResourceExistsError:
                pass

    async def _receive(self):
        """One message, received with a 60 s visibility timeout (the lease)."""
        async for page in self.queue.receive_messages(max_messages=1, messages_per_page=1,
                                                      visibility_timeout=60).by_page():
            return [m async for m in page][0]
        raise AssertionError("the queue is empty")

    async def _cycle(self) -> tuple[float, list[float]]:
        name = uuid.uuid4().hex
        marks = [time.perf_counter()]
        await self.inbox.upload_blob(name, PAYLOAD, overwrite=True)
        marks.append(time.perf_counter())
        await self.queue.send_message(name)
        marks.append(time.perf_counter())
        message = await self._receive()
        marks.append(time.perf_counter())
        payload = await (await self.inbox.download_blob(message.content)).readall()
        marks.append(time.perf_counter())
        await self.outbox.upload_blob(name, payload, overwrite=True)
        marks.append(time.perf_counter())
        await self.queue.delete_message(message.id, message.pop_receipt)
        marks.append(time.perf_counter())
        await self.inbox.delete_blob(name)
        marks.append(time.perf_counter())
        result = await (await self.outbox.download_blob(name)).readall()
        marks.append(time.perf_counter())
        assert result == PAYLOAD
        return marks[-1] - marks[0], [b - a for a, b in zip(marks, marks[1:])]

    def cycle(self) -> tuple[float, list[float]]:
        return self.loop.run_until_complete(self._cycle())

    def close(self) -> None:
        async def close() -> None:
            await asyncio.gather(self.service.close(), self.queue.close())

        self.loop.run_until_complete(close())
        self.loop.close()


class Same(Bare):
    """The storage calls the broker's own cycle makes (since 2026-12-06), bare and one after another:
    the payload blob with its record, the message carrying a copy of it (the payload in base64), the
    receive, the lease state written with If-Match on the blob's etag, the result blob, the message's
    delete. (The payload's delete goes in a batch with others, a fraction of a call per task; the
    getresult on the instance that committed the result makes none.)"""

    async def _cycle(self) -> tuple[float, list[float]]:
        name = uuid.uuid4().hex
        record = {"task": json.dumps({"model": "m", "ct": "application/octet-stream", "params": {},
                                      "created": time.time(), "digest": None, "size": len(PAYLOAD)})}
        marks = [time.perf_counter()]
        written = await self.inbox.get_blob_client(name).upload_blob(PAYLOAD, overwrite=True, metadata=record)
        marks.append(time.perf_counter())
        await self.queue.send_message(json.dumps({"id": name, "etag": written["etag"], "meta": record,
                                                  "body": base64.b64encode(PAYLOAD).decode()}))
        marks.append(time.perf_counter())
        message = await self._receive()
        marks.append(time.perf_counter())
        sent = json.loads(message.content)
        await self.inbox.get_blob_client(name).set_blob_metadata({**sent["meta"], "state": "{}"}, etag=sent["etag"],
                                                                 match_condition=MatchConditions.IfNotModified)
        marks.append(time.perf_counter())
        await self.outbox.upload_blob(name, base64.b64decode(sent["body"]), overwrite=True)
        marks.append(time.perf_counter())
        await self.queue.delete_message(message.id, message.pop_receipt)
        marks.append(time.perf_counter())
        return marks[-1] - marks[0], [b - a for a, b in zip(marks, marks[1:])]


def hop(url: str, session: requests.Session) -> float:
    t0 = time.perf_counter()
    session.get(f"{url}/bench-no-such-function")
    return time.perf_counter() - t0


# ---- the profile ------------------------------------------------------------------------------

def merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping intervals merged: each result is one serial 'stage' of storage work."""
    out: list[list[float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [tuple(i) for i in out]


def analyze(trace: dict) -> dict:
    by_request: dict[int, list[dict]] = {}
    for call in trace["storage"]:
        by_request.setdefault(call["req"], []).append(call)
    per_route: dict[str, dict[str, list]] = {}
    patterns: dict[str, dict[str, int]] = {}
    for req in trace["requests"]:
        if req["route"] not in ROUTES or not req["status"] or req["status"] >= 300:
            continue
        calls = sorted(by_request.get(req["id"], []), key=lambda c: c["start"])
        stages = merge([(c["start"], c["end"]) for c in calls])
        on_storage = sum(e - s for s, e in stages)
        server = req["end"] - req["start"]
        bucket = per_route.setdefault(req["route"], {"server": [], "storage": [], "calls": [], "stages": []})
        bucket["server"].append(server)
        bucket["storage"].append(on_storage)
        bucket["calls"].append(len(calls))
        bucket["stages"].append(len(stages))
        # the call sequence, stage by stage: "a + b" run together, " -> " one after the other
        text, last_end = [], None
        for c in calls:
            label = f"{c['method']} {c['what']}"
            if last_end is not None and c["start"] < last_end:
                text[-1] += f" + {label}"
            else:
                text.append(label)
            last_end = max(last_end or 0, c["end"])
        pattern = " -> ".join(text)
        patterns.setdefault(req["route"], {})
        patterns[req["route"]][pattern] = patterns[req["route"]].get(pattern, 0) + 1
    routes = {}
    for route in ROUTES:
        b = per_route.get(route)
        if not b:
            continue
        server, storage = statistics.median(b["server"]), statistics.median(b["storage"])
        routes[route] = {"n": len(b["server"]), "server_p50_ms": round(server * 1000, 2),
                         "on_storage_p50_ms": round(storage * 1000, 2),
                         "not_storage_p50_ms": round(statistics.median(
                             [s - t for s, t in zip(b["server"], b["storage"])]) * 1000, 2),
                         "storage_calls": statistics.median(b["calls"]), "serial_stages": statistics.median(b["stages"]),
                         "sequence": max(patterns[route].items(), key=lambda kv: kv[1])[0]}
    calls = [c["end"] - c["start"] for c in trace["storage"] if c["req"] is not None]
    return {"routes": routes, "storage_call_p50_ms": round(statistics.median(calls) * 1000, 2) if calls else None,
            "profile": trace["profile"]}


def profile(stack: common.Stack, cycles: int, root: str | None, tag: str) -> dict:
    out = stack.work / f"profile-{tag}.json"
    host = ProfiledHost(out, root, stack.connection_string, stack.settings, log_dir=stack.work / f"profiled-{tag}",
                        extra_args=["--no-timers"]).start()
    try:
        client, worker = requests.Session(), common.worker_session()
        model = common.model_name("prof")
        for _ in range(3):
            http_cycle(host.url, client, worker, model)
        for _ in range(cycles):
            http_cycle(host.url, client, worker, model)
    finally:
        host.stop(timeout=30, sig=signal.SIGTERM)
    trace = json.loads(out.read_text())
    result = analyze(trace)
    common.RESULTS.mkdir(exist_ok=True)
    text_profile = common.RESULTS / f"overhead-profile-{tag}.txt"
    text_profile.write_text(out.with_suffix(".txt").read_text())
    inside = text_profile.is_relative_to(common.ROOT)
    result["text_profile"] = str(text_profile.relative_to(common.ROOT) if inside else text_profile)
    return result


def print_profile(result: dict, tag: str) -> str:
    rows = [[route, r["server_p50_ms"], r["on_storage_p50_ms"], r["not_storage_p50_ms"], r["storage_calls"],
             r["serial_stages"]] for route, r in result["routes"].items()]
    text = common.table(f"Where a cycle goes inside the dev host ({tag}); median per route, ms "
                        f"(one storage call p50 = {result['storage_call_p50_ms']} ms; instrumented, so slower)",
                        ["route", "in host", "on storage", "not storage", "storage calls", "serial stages"], rows)
    print("\nstorage calls per route (' + ' = concurrent, ' -> ' = one after another):")
    for route, r in result["routes"].items():
        print(f"  {route:>13}: {r['sequence']}")
    prof = result["profile"]
    busy = sum(v for k, v in prof["by_library"].items() if not k.startswith("idle")) or 1
    print(f"\nsampled dev host time by library ({prof['duration']:.1f} s wall, share of the busy part):")
    for name, seconds in list(prof["by_library"].items())[:14]:
        share = "" if name.startswith("idle") else f"{seconds / busy:6.1%}"
        print(f"  {name:>34}: {seconds:7.2f} s  {share}")
    print("top functions by own time:")
    for name, seconds in prof["top_self"][:12]:
        print(f"  {seconds:6.2f} s  {name}")
    print(f"full profile: {result['text_profile']}")
    return text


def main(argv=None) -> dict:
    def extra(parser):
        parser.add_argument("--cycles", type=int, help="timed cycles (default 40 quick, 150 full)")
        parser.add_argument("--no-profile", action="store_true", help="skip the instrumented run")

    args = common.compare_args("overhead", argv, "time", extra)
    cycles = args.cycles or common.pick(40, 150)
    with common.Stack() as stack:
        url = stack.url
        hosts = {"broker": url}
        variant = None
        if args.compare_root:
            variant = RootHost(args.compare_root, stack.connection_string, stack.settings,
                               log_dir=stack.work / "variant", extra_args=["--no-timers"]).start()
            hosts["variant"] = variant.url
        try:
            bare = Bare(stack.connection_string)
            bare_default = Bare(stack.connection_string, use_env_settings=True)
            same = Same(stack.connection_string)
            client, worker, hop_session = requests.Session(), common.worker_session(), requests.Session()
            model = common.model_name("overhead")
            for _ in range(5):  # warm-up: connections, containers, queue
                for u in hosts.values():
                    http_cycle(u, client, worker, model)
                bare.cycle()
                bare_default.cycle()
                same.cycle()
                hop(url, hop_session)
            full = {name: [] for name in hosts}
            route_times = {name: {r: [] for r in ROUTES} for name in hosts}
            bare_total, bare_ops, hops, default_total, same_total = [], [], [], [], []
            pids = {"broker": stack.hosts[0].proc.pid, **({"variant": variant.proc.pid} if variant else {})}
            azurite = stack.azurite.proc.pid
            cpu = {f"{n} host per cycle": 0.0 for n in hosts} | {f"azurite per {n} cycle": 0.0 for n in hosts}
            cpu["azurite per bare cycle"] = cpu["bare SDK client per cycle"] = 0.0
            for _ in range(cycles):
                for name, u in hosts.items():
                    c0, a0 = common.cpu_seconds(pids[name]), common.cpu_seconds(azurite)
                    total, per_route = http_cycle(u, client, worker, model)
                    cpu[f"{name} host per cycle"] += common.cpu_seconds(pids[name]) - c0
                    cpu[f"azurite per {name} cycle"] += common.cpu_seconds(azurite) - a0
                    full[name].append(total)
                    for r, s in per_route.items():
                        route_times[name][r].append(s)
                a0, p0 = common.cpu_seconds(azurite), time.process_time()
                total, ops = bare.cycle()
                cpu["azurite per bare cycle"] += common.cpu_seconds(azurite) - a0
                cpu["bare SDK client per cycle"] += time.process_time() - p0
                bare_total.append(total)
                bare_ops.append(ops)
                default_total.append(bare_default.cycle()[0])
                same_total.append(same.cycle()[0])
                hops.append(hop(url, hop_session))
            bare.close()
            bare_default.close()
            same.close()
        finally:
            if variant:
                variant.stop()
        ref = common.pct(bare_total, 50) * 1000
        hop_ms = common.pct(hops, 50) * 1000
        cpu_ms = {k: round(v / cycles * 1000, 2) for k, v in cpu.items()}
        rows, data = [], {"cycles": cycles, "cpu_ms": cpu_ms, "bare_p50_ms": round(ref, 2), "hop_p50_ms": round(hop_ms, 2),
                          "bare_ops_p50_ms": [round(common.pct([o[i] for o in bare_ops], 50) * 1000, 2) for i in range(8)]}
        default_ms = common.pct(default_total, 50) * 1000
        data["bare_default_sdk_p50_ms"] = round(default_ms, 2)
        same_ms = common.pct(same_total, 50) * 1000
        data["same_calls_p50_ms"] = round(same_ms, 2)
        rows.append(["8 bare SDK ops (reference)", round(ref, 2), round(common.pct(bare_total, 95) * 1000, 2), 1.0, "", ""])
        rows.append(["8 bare ops, SDK defaults", round(default_ms, 2), round(common.pct(default_total, 95) * 1000, 2),
                     common.ratio(default_ms, ref), "", ""])
        rows.append(["the cycle's own 6 calls, bare", round(same_ms, 2), round(common.pct(same_total, 95) * 1000, 2),
                     common.ratio(same_ms, ref), "", ""])
        rows.append(["1 bare HTTP hop", round(hop_ms, 2), round(common.pct(hops, 95) * 1000, 2),
                     common.ratio(hop_ms, ref), "", ""])
        for name in hosts:
            p50 = common.pct(full[name], 50) * 1000
            r = common.ratio(p50, ref)
            data[name] = {"cycle_p50_ms": round(p50, 2), "cycle_p95_ms": round(common.pct(full[name], 95) * 1000, 2),
                          "ratio": r, "goal": common.verdict(r, GOAL), "stretch": common.verdict(r, STRETCH),
                          "ratio_minus_4_hops": common.ratio(p50 - 4 * hop_ms, ref),
                          "ratio_vs_sdk_defaults": common.ratio(p50, default_ms),
                          "ratio_vs_same_calls": common.ratio(p50, same_ms),
                          "routes_p50_ms": {k: round(common.pct(v, 50) * 1000, 2) for k, v in route_times[name].items()}}
            rows.append([f"HTTP cycle ({name})", data[name]["cycle_p50_ms"], data[name]["cycle_p95_ms"], r,
                         data[name]["goal"], data[name]["stretch"]])
        text = common.table(f"Broker overhead: full cycle over HTTP vs the 8 bare storage ops ({cycles} interleaved "
                            f"cycles), ms", ["what", "p50", "p95", "ratio", f"goal <= {GOAL}", f"stretch <= {STRETCH}"],
                            rows)
        for name in hosts:
            print(f"  {name}: per route p50 ms {data[name]['routes_p50_ms']}; ratio without the 4 HTTP hops "
                  f"{data[name]['ratio_minus_4_hops']}; against the cycle's own 6 calls, bare: "
                  f"{data[name]['ratio_vs_same_calls']}")
        print(f"  bare ops p50 ms (upload, enqueue, receive, download, upload result, delete msg, delete payload, "
              f"download result): {data['bare_ops_p50_ms']}")
        print(f"  CPU ms (mean, from /proc): {cpu_ms}")
        data["table"] = text
        if not args.no_profile:
            data["profile"] = {}
            for tag, root in (("broker", None), *((("variant", args.compare_root),) if args.compare_root else ())):
                result = profile(stack, common.pick(40, 100), root, tag)
                data["profile"][tag] = result
                data["profile"][tag]["table"] = print_profile(result, tag)
    common.save_compared("overhead", data, args)
    return data


def summary(d: dict, label: str = "broker") -> list[list]:
    """This benchmark's rows of the summary table (bench.plot); label "variant" for a compare run's."""
    if label not in d:
        return []
    what = "broker" if label == "broker" else d.get("variant_label", "scratch copy")
    rows = [["3 overhead", f"HTTP cycle / 8 bare SDK ops, SDK tuned ({what})", f"{d[label]['cycle_p50_ms']:.1f} ms",
             f"{d['bare_p50_ms']:.1f} ms", d[label]["ratio"], "<=1.5 (stretch 1.2)", d[label]["goal"]]]
    if "bare_default_sdk_p50_ms" in d:
        r = d[label]["ratio_vs_sdk_defaults"]
        rows.append(["3 overhead", f"HTTP cycle / 8 bare SDK ops, SDK defaults ({what})",
                     f"{d[label]['cycle_p50_ms']:.1f} ms", f"{d['bare_default_sdk_p50_ms']:.1f} ms", r,
                     "<=1.5 (stretch 1.2)", common.verdict(r, 1.5) + (" (stretch too)" if r <= 1.2 else "")])
    if "same_calls_p50_ms" in d and "ratio_vs_same_calls" in d[label]:
        r = d[label]["ratio_vs_same_calls"]
        rows.append(["3 overhead", f"HTTP cycle / the cycle's own 6 calls, bare ({what})",
                     f"{d[label]['cycle_p50_ms']:.1f} ms", f"{d['same_calls_p50_ms']:.1f} ms", r, "<=1.2",
                     common.verdict(r, 1.2)])
    return rows


def summary_compare(d: dict) -> list[list]:
    return summary(d, "variant")


if __name__ == "__main__":
    main()
