"""`python -m bench.profilers.host_tracer OUT.json [devhost args]`: the broker dev host, instrumented.

Used by `bench.overhead --profile`; it changes nothing in broker/. It
- records every storage request the Azure SDK or broker/rest.py sends (method, resource, start, end) against the
  HTTP request that caused it (a context variable set by an ASGI wrapper; asyncio tasks made by
  gather inherit it), and
- samples the whole process with pyinstrument, so CPU time can be told from waiting on storage.
On SIGTERM it writes the trace and the profile summary to OUT.json (and the text profile beside it).
BENCH_HOST_ROOT, when set, serves the broker from that directory (a scratch copy being tried out).
"""

from __future__ import annotations

import contextvars
import itertools
import json
import os
import signal
import sys
import time
from pathlib import Path

REQUEST = contextvars.ContextVar("bench_request", default=None)
_ids = itertools.count(1)
requests_log: list[dict] = []
storage_log: list[dict] = []


def _resource(url: str) -> str:
    path = url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)
    parts = path[0].split("/")[1:]  # drop the account
    query = path[1] if len(path) > 1 else ""
    what = "blob" if len(parts) >= 2 and not parts[-1] == "messages" else "queue"
    if "comp=batch" in query:  # a Blob Batch request goes to its container
        what = "blob"
    if parts and parts[-1] == "messages" or (len(parts) >= 3 and parts[-2] == "messages"):
        what = "message"
    comp = [q for q in query.split("&") if q.startswith("comp=")]
    container = parts[0] if parts else ""
    if container.startswith("tasks-"):
        container = "tasks-*"
    return f"{what}:{container}" + (f"?{comp[0]}" if comp else "")


def instrument() -> None:
    from azure.core.pipeline.transport import AioHttpTransport

    original = AioHttpTransport.send

    async def send(self, request, **kwargs):
        start = time.perf_counter()
        try:
            return await original(self, request, **kwargs)
        finally:
            storage_log.append({"req": REQUEST.get(), "method": request.method, "what": _resource(request.url),
                                "start": start, "end": time.perf_counter()})

    AioHttpTransport.send = send

    import devstack.devhost as devhost

    build = devhost.build

    def traced_build(app, *args, **kwargs):
        server, *background = build(app, *args, **kwargs)
        _instrument_rest()

        async def asgi(scope, receive, send_):
            if scope["type"] != "http":
                return await server(scope, receive, send_)
            rid = next(_ids)
            token = REQUEST.set(rid)
            start = time.perf_counter()
            status = {}

            async def send_status(message):
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send_(message)

            try:
                await server(scope, receive, send_status)
            finally:
                requests_log.append({"id": rid, "route": scope["path"].rsplit("/", 1)[-1], "status": status.get("code"),
                                     "start": start, "end": time.perf_counter()})
                REQUEST.reset(token)

        return (asgi, *background)

    devhost.build = traced_build


def _instrument_rest() -> None:
    """The same record for the calls broker/rest.py makes without the SDK (in checkouts that have it)."""
    try:
        from broker import rest
    except ImportError:
        return
    if getattr(rest.Account._send, "traced", False):
        return
    original = rest.Account._send

    async def send(self, method, path, query, extra, body):
        start = time.perf_counter()
        try:
            return await original(self, method, path, query, extra, body)
        finally:
            url = self.origin + self.base + path + "?" + "&".join(f"{k}={v}" for k, v in query.items())
            storage_log.append({"req": REQUEST.get(), "method": method, "what": _resource(url),
                                "start": start, "end": time.perf_counter()})

    send.traced = True
    rest.Account._send = send


def categorize(path: str, function: str) -> str:
    p = path.replace("\\", "/")
    if "selectors" in p or function in ("select", "poll", "epoll"):
        return "idle (waiting on sockets)"
    for key, name in (("azure/storage", "azure-storage SDK"), ("azure/core", "azure-core pipeline"),
                      ("aiohttp", "aiohttp (storage client)"), ("multidict", "aiohttp (storage client)"),
                      ("yarl", "aiohttp (storage client)"), ("uvicorn", "uvicorn/httptools"),
                      ("httptools", "uvicorn/httptools"), ("starlette", "starlette"),
                      ("azure/functions", "azure-functions request/response"), ("/broker/", "broker code"),
                      ("json", "json"), ("hmac", "hashing/signing"), ("hashlib", "hashing/signing"),
                      ("xml", "XML parsing"), ("asyncio", "asyncio event loop"), ("logging", "logging"),
                      ("urllib", "urllib"), ("email", "email/http headers"), ("isodate", "dates"),
                      ("dateutil", "dates"), ("datetime", "dates")):
        if key in p:
            return name
    return "other python"


def summarize(session) -> dict:
    """Sampled time by library: each frame's own time goes to its file's library (C functions and
    pyinstrument's synthetic frames go to their caller's, except the event loop's socket wait)."""
    buckets: dict[str, float] = {}
    functions: dict[str, float] = {}

    def walk(frame, parent: str, where: tuple = ("", "", 0)) -> None:
        path, function = frame.file_path or "", frame.function or ""
        if frame.is_synthetic or not path:
            path, function, line = where[0], f"{where[1]} {function}", where[2]
        else:
            line = frame.line_no
        if "poll" in function or "select" in function or function == "[await]":
            cat = "idle (waiting on sockets)"
        elif frame.is_synthetic or not path.endswith(".py"):
            cat = parent
        else:
            cat = categorize(path, function)
        own = frame.time - sum(child.time for child in frame.children)
        if own > 0:
            buckets[cat] = buckets.get(cat, 0) + own
            if cat != "idle (waiting on sockets)":
                key = f"{function} ({path.split('site-packages/')[-1].split('/work/main/')[-1]}:{line})"
                functions[key] = functions.get(key, 0) + own
        for child in frame.children:
            walk(child, cat, (path, function, line))

    root = session.root_frame()
    if root is not None:
        walk(root, "other python")
    top = sorted(functions.items(), key=lambda kv: -kv[1])[:40]
    return {"duration": session.duration, "cpu_time": getattr(session, "cpu_time", None),
            "by_library": dict(sorted(buckets.items(), key=lambda kv: -kv[1])), "top_self": top}


def main() -> int:
    out = Path(sys.argv[1])
    root = os.environ.get("BENCH_HOST_ROOT")
    if root:
        os.chdir(root)
        sys.path.insert(0, root)
    instrument()
    from pyinstrument import Profiler

    import devstack.devhost as devhost

    def stop(signum, frame):  # uvicorn re-raises the signal after its graceful shutdown: end here
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    profiler = Profiler(interval=0.001, async_mode="disabled")
    profiler.start()
    try:
        code = devhost.main(sys.argv[2:])
    finally:
        session = profiler.stop()
        out.with_suffix(".txt").write_text(profiler.output_text(unicode=False, color=False, show_all=False))
        out.write_text(json.dumps({"requests": requests_log, "storage": storage_log,
                                   "profile": summarize(session)}) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
