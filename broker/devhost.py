"""`python -m broker.devhost`: serve function_app.app locally, as `func start` would.

The Functions Core Tools cannot be installed everywhere (their installer downloads a binary), so
this small host reads the app's own function definitions - each HTTP trigger's route and methods,
each timer's schedule - and serves them under /api: the request becomes a `func.HttpRequest`, the
function is awaited, its `func.HttpResponse` goes back. Everything runs on one event loop, so a
long-poll waits without blocking other requests. Timer functions run on their schedule.

Settings come from the environment and from local.settings.json (`Values`) when present; the
environment wins, and an empty value counts as unset.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import re
import socket
import sys
from pathlib import Path

import azure.functions as func
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("broker.devhost")
ROUTE_PREFIX = "api"
DEFAULT_TIMER_SECONDS = 300


def load_local_settings(path: Path) -> list[str]:
    """Copy local.settings.json `Values` into the environment where unset; returns the names set."""
    if not path.is_file():
        return []
    values = json.loads(path.read_text()).get("Values", {})
    applied = []
    for name, value in values.items():
        if value not in (None, "") and not os.environ.get(name):
            os.environ[name] = str(value)
            applied.append(name)
    return applied


def schedule_seconds(schedule: str) -> int:
    """A period for the common NCRONTAB shapes ("0 */5 * * * *", "*/30 * * * * *"); else five minutes."""
    fields = schedule.split()
    if len(fields) == 6:
        for index, unit in ((0, 1), (1, 60), (2, 3600)):
            match = re.fullmatch(r"\*/(\d+)", fields[index])
            if match and all(f == "*" for f in fields[index + 1:]) and all(f == "0" for f in fields[1:index]):
                return int(match.group(1)) * unit
    return DEFAULT_TIMER_SECONDS


def to_request(request: Request, body: bytes) -> func.HttpRequest:
    return func.HttpRequest(method=request.method, url=str(request.url), headers=dict(request.headers),
                            params=dict(request.query_params), route_params={}, body=body)


def to_response(response: func.HttpResponse, method: str) -> Response:
    headers = dict(response.headers)
    body = response.get_body()
    if response.status_code != 204 and not any(k.lower() == "content-type" for k in headers):
        kind = response.mimetype
        if kind.startswith("text/") or kind == "application/json":
            kind = f"{kind}; charset={response.charset}"
        headers["Content-Type"] = kind
    if response.status_code == 204 or method == "HEAD":
        body = b""
    return Response(content=body, status_code=response.status_code, headers=headers)


def build(app: func.FunctionApp) -> tuple[Starlette, list]:
    """A Starlette app serving every HTTP function of `app`, and the (name, period, function) timers."""
    routes: dict[str, tuple[set[str], object]] = {}
    timers = []
    for function in app.get_functions():  # call once per app object: a second call raises
        trigger = function.get_trigger()
        user_function = function.get_user_function()
        if trigger.get_binding_name() == "httpTrigger":
            route = (trigger.route or function.get_function_name()).strip("/").lower()
            methods = {str(getattr(m, "value", m)).upper() for m in (trigger.methods or ["GET", "POST"])}
            routes[route] = (methods, user_function)
        elif trigger.get_binding_name() == "timerTrigger":
            timers.append((function.get_function_name(), schedule_seconds(trigger.schedule), user_function))

    async def dispatch(request: Request) -> Response:
        entry = routes.get(request.path_params["path"].strip("/").lower())
        if entry is None:
            return JSONResponse({"error": "no function is served at this path"}, status_code=404)
        methods, user_function = entry
        if request.method not in methods:
            return JSONResponse({"error": "method not allowed"}, status_code=405)
        try:
            body = await request.body()
        except ClientDisconnect:  # the caller went away mid-body (e.g. a killed worker): nobody to answer
            log.info("client disconnected before its request body arrived: %s %s", request.method, request.url.path)
            return Response(status_code=499)
        try:
            response = await user_function(to_request(request, body))
        except asyncio.CancelledError:  # the host is stopping and stopped waiting for this request
            log.info("cut short by shutdown: %s %s", request.method, request.url.path)
            return JSONResponse({"error": "the host is shutting down; retry shortly"}, status_code=503,
                                headers={"Retry-After": "2"})
        except Exception:  # noqa: BLE001 - the host answers 500, as the Functions host would
            log.exception("function raised")
            return JSONResponse({"error": "the function raised an exception"}, status_code=500)
        return to_response(response, request.method)

    every_method = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    server = Starlette(routes=[Route(f"/{ROUTE_PREFIX}/{{path:path}}", dispatch, methods=every_method)])
    return server, timers


async def run_timers(timers: list) -> None:
    async def every(name: str, period: int, function) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await function(None)
            except Exception:  # noqa: BLE001 - a failed run is retried at the next tick
                log.exception("timer function %s failed", name)

    await asyncio.gather(*(every(*timer) for timer in timers))


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this. Without it a keep-alive response written in two parts
    # waits ~40 ms for the client's delayed ACK (uvicorn sets it only on sockets it binds itself).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


class Server(uvicorn.Server):
    async def shutdown(self, sockets=None) -> None:
        await super().shutdown(sockets)
        # uvicorn cancels the requests that outlive the grace period (long-polls) but does not wait
        # for them: let them finish cancelling (one log line each) before the process exits.
        pending = [task for task in self.server_state.tasks if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=1)


async def serve(args: argparse.Namespace) -> None:
    app = importlib.import_module(args.app).app
    server_app, timers = build(app)
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(server_app, http="httptools", log_level="warning", access_log=args.access_log, loop="asyncio",
                            timeout_graceful_shutdown=2, timeout_keep_alive=30)
    server = Server(config)
    print(f"broker dev host listening on http://{host}:{port}/{ROUTE_PREFIX}", flush=True)
    timer_task = asyncio.create_task(run_timers(timers)) if timers and not args.no_timers else None
    try:
        await server.serve(sockets=[sock])
    finally:
        if timer_task:
            timer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer_task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker.devhost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7071, help="port to bind; 0 picks a free one (default 7071)")
    parser.add_argument("--app", default="function_app", help="module holding `app` (default function_app)")
    parser.add_argument("--settings", default="local.settings.json",
                        help="local settings file whose Values fill unset variables (default local.settings.json)")
    parser.add_argument("--no-timers", action="store_true", help="do not run timer functions")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    sys.path.insert(0, os.getcwd())
    applied = load_local_settings(Path(args.settings))
    if applied:
        log.info("settings from %s: %s", args.settings, ", ".join(sorted(applied)))
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        print(f"broker dev host could not start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
