"""`python -m devstack.devhost`: serve function_app.app locally, as `func start` would.

The Functions Core Tools cannot be installed everywhere (their installer downloads a binary), so
this small host reads the app's own function definitions - each HTTP trigger's route and methods,
each timer's schedule - and serves them under /api: the request becomes a `func.HttpRequest`, the
function is awaited, its `func.HttpResponse` goes back. Everything runs on one event loop, so a
long-poll waits without blocking other requests. Timer functions run on their schedule, and
queue-triggered functions on their queue's messages (devstack/queues.py, as the Functions host:
host.json's `extensions.queues`; --no-queues leaves them alone).

Settings come from the environment and from local.settings.json (`Values`) when present; the
environment wins, and an empty value counts as unset.

What a client can make it hold is bounded, as a front end in Azure would bound it: a request's
method and key are checked before its body is read (the function's `gate`, respond.Gate), the
body is capped as it streams (the route's own limit, else Azure's 100 MB) and must arrive within
--body-timeout, the request line and headers within --header-timeout and --max-header-bytes, and
at most --max-connections connections are open. Every answer the host gives itself is JSON.
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
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import azure.functions as func
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from devstack import queues

log = logging.getLogger("devstack.devhost")
invocations = logging.getLogger("Host.Function")  # one line per function invocation, as the Functions host logs it
ROUTE_PREFIX = "api"
DEFAULT_TIMER_SECONDS = 300
AZURE_MAX_REQUEST_BYTES = 100 * 1024 * 1024  # what the Functions front end accepts at all
NOSNIFF = {"X-Content-Type-Options": "nosniff"}


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 10.0  # from a request's first byte to the end of its headers (or a new connection's first byte)
    body_timeout: float = 120.0  # from the end of the headers to the end of the body
    max_header_bytes: int = 32 * 1024
    max_connections: int = 512


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={**NOSNIFF, **(headers or {})})


def _raw_error(status: int, reason: str, message: str, extra: bytes = b"") -> bytes:
    """A complete JSON error response for the protocol layer, which answers before any app code runs."""
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nx-content-type-options: nosniff\r\nconnection: close\r\n").encode() \
        + extra + b"\r\n" + body


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits it lacks: a deadline and a size cap for the request
    line and headers, a cap on open connections, and JSON for the errors it answers itself."""

    limits = Limits()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_bytes, self._head_exact, self._in_head = 0, 0, True
        self._head_timer = None
        if len(self.connections) > self.limits.max_connections:
            log.warning("refused a connection: %d are open (--max-connections)", len(self.connections) - 1)
            self._refuse(503, "Service Unavailable", "the dev host has too many open connections; retry shortly",
                         b"retry-after: 1\r\n")
            return
        self._arm_head_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:  # headers still coming, and too many
            self._head_too_large()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count_head(len(name) + len(value) + 4)

    def _count_head(self, size: int) -> None:
        """The exact count, for headers that arrive whole in one read with a body behind them."""
        self._head_exact += size
        if self._head_exact > self.limits.max_header_bytes:
            self._head_too_large()
            raise OverflowError("headers too large")  # stops the parser; answered already

    def _head_too_large(self) -> None:
        self._refuse(431, "Request Header Fields Too Large",
                     f"the request line and headers are larger than {self.limits.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_exact = 0
        if not self._in_head:  # a keep-alive connection's next request: its headers start now
            self._in_head, self._head_bytes = True, 0
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Until the next request's first byte the keep-alive timer rules; that byte arms the header
        # deadline again (on_message_begin), and only the new request's head is counted.
        self._in_head, self._head_bytes = False, 0

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "Bad Request", "the request is not valid HTTP")  # after a 431, a no-op

    def _refuse(self, status: int, reason: str, message: str, extra: bytes = b"") -> None:
        self._cancel_head_timer()
        if not self.transport.is_closing():
            self.transport.write(_raw_error(status, reason, message, extra))
            self.transport.close()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_too_slow)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()  # nothing to answer: a client this slow is not reading either


def guarded(limits: Limits) -> type:
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})


@dataclass(frozen=True)
class Cors:
    """Cross-origin requests, as `func start` answers them from local.settings.json's `Host.CORS`
    (comma-separated origins, `*` for any) and `Host.CORSCredentials`; in Azure the platform does this
    (`az functionapp cors add`). A listed origin gets Access-Control-Allow-Origin on its answers and
    its preflight OPTIONS answered; any other gets no CORS header at all, so its browser refuses."""

    origins: tuple[str, ...] = ()
    credentials: bool = False

    def allows(self, origin: str | None) -> bool:
        return bool(origin) and ("*" in self.origins or origin in self.origins)

    def headers(self, origin: str) -> dict:
        any_origin = "*" in self.origins and not self.credentials
        found = {"Access-Control-Allow-Origin": "*" if any_origin else origin}
        if not any_origin:
            found["Vary"] = "Origin"
        if self.credentials:
            found["Access-Control-Allow-Credentials"] = "true"
        return found

    def preflight(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        if not self.allows(origin):
            return Response(status_code=204)
        headers = {**self.headers(origin),
                   "Access-Control-Allow-Methods": request.headers.get("access-control-request-method", "")}
        if "access-control-request-headers" in request.headers:
            headers["Access-Control-Allow-Headers"] = request.headers["access-control-request-headers"]
        return Response(status_code=204, headers=headers)


def load_host_settings(path: Path) -> Cors:
    """local.settings.json's `Host` section, as `func start` reads it: CORS and CORSCredentials."""
    if not path.is_file():
        return Cors()
    host = json.loads(path.read_text()).get("Host") or {}
    origins = tuple(o.strip() for o in str(host.get("CORS") or "").split(",") if o.strip())
    credentials = str(host.get("CORSCredentials", False)).lower() == "true"
    return Cors(origins, credentials)


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


class BodyRefused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, read as it streams: refused (413) past `limit` bytes, (408) past `timeout` s."""
    declared = request.headers.get("content-length", "")
    too_large = error(413, f"the request body is larger than the limit of {limit} bytes", {"Connection": "close"})
    if declared.isdigit() and int(declared) > limit:
        raise BodyRefused(too_large)
    chunks, size = [], 0

    async def stream() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyRefused(too_large)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(stream(), timeout)
    except TimeoutError:
        raise BodyRefused(error(408, f"the request body did not arrive within {timeout:g} seconds",
                                {"Connection": "close"})) from None
    return b"".join(chunks)


def executed(name: str, began: float, succeeded: bool) -> None:
    """The line the Functions host logs after each invocation, so execution time can be summed from
    the log (bench/idle.py does): Succeeded, or Failed for an exception or a 5xx answer."""
    duration = round((time.perf_counter() - began) * 1000)
    invocations.info("Executed 'Functions.%s' (%s, Id=%s, Duration=%dms)", name,
                     "Succeeded" if succeeded else "Failed", uuid.uuid4(), duration)


def _has_body(request: Request) -> bool:
    return request.headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in request.headers


def build(app: func.FunctionApp, limits: Limits = Limits(), cors: Cors = Cors()) -> tuple[Starlette, list, list]:
    """A Starlette app serving every HTTP function of `app`, the (name, period, function) timers and
    the (name, queue, connection, function) queue triggers."""
    routes: dict[str, tuple[set[str], object]] = {}
    timers = []
    queue_triggers = []
    keyed: list[str] = []  # functions whose auth level asks the platform for a function key
    for function in app.get_functions():  # call once per app object: a second call raises
        trigger = function.get_trigger()
        user_function = function.get_user_function()
        if trigger.get_binding_name() == "httpTrigger":
            route = (trigger.route or function.get_function_name()).strip("/").lower()
            methods = {str(getattr(m, "value", m)).upper() for m in (trigger.methods or ["GET", "POST"])}
            routes[route] = (methods, user_function, function.get_function_name())
            if str(getattr(trigger.auth_level, "value", trigger.auth_level)).lower() != "anonymous":
                keyed.append(function.get_function_name())
        elif trigger.get_binding_name() == "timerTrigger":
            timers.append((function.get_function_name(), schedule_seconds(trigger.schedule), user_function))
        elif trigger.get_binding_name() == "queueTrigger":
            queue_triggers.append((function.get_function_name(), trigger.queue_name,
                                   trigger.connection or "AzureWebJobsStorage", user_function))

    if keyed:  # as `func start`: function keys are Azure's front end's to check, not a local host's
        log.info("function keys are not enforced locally (as with func start): %s", ", ".join(sorted(keyed)))

    async def dispatch(request: Request) -> Response:
        origin = request.headers.get("origin")
        if request.method == "OPTIONS" and origin and "access-control-request-method" in request.headers:
            return cors.preflight(request)  # answered by the host, as the platform does, never the function
        response = await answer(request)
        if cors.allows(origin):
            response.headers.update(cors.headers(origin))
        return response

    async def answer(request: Request) -> Response:
        entry = routes.get(request.path_params["path"].strip("/").lower())
        if entry is None:
            return error(404, "no function is served at this path")
        methods, user_function, name = entry
        if request.method not in methods:
            return error(405, "method not allowed")
        gate = getattr(user_function, "gate", None)
        began = time.perf_counter()
        refused = gate.check(request.method, request.headers) if gate else None
        if refused is not None:  # answered before the body is read; the connection closes if one is coming
            response = to_response(refused, request.method)
            if _has_body(request):
                response.headers["Connection"] = "close"
            executed(name, began, response.status_code < 500)
            return response
        try:
            body = await read_body(request, gate.body_limit() if gate else AZURE_MAX_REQUEST_BYTES, limits.body_timeout)
        except BodyRefused as refusal:
            return refusal.response
        except ClientDisconnect:  # the caller went away mid-body (e.g. a killed worker): nobody to answer
            log.info("client disconnected before its request body arrived: %s %s", request.method, request.url.path)
            return Response(status_code=499)
        began = time.perf_counter()  # the invocation starts once the body is in, as in Azure
        try:
            response = await user_function(to_request(request, body))
        except asyncio.CancelledError:  # the host is stopping and stopped waiting for this request
            log.info("cut short by shutdown: %s %s", request.method, request.url.path)
            executed(name, began, False)
            return error(503, "the host is shutting down; retry shortly", {"Retry-After": "2"})
        except Exception:  # noqa: BLE001 - the host answers 500, as the Functions host would
            log.exception("function raised")
            executed(name, began, False)
            return error(500, "the function raised an exception")
        executed(name, began, response.status_code < 500)
        return to_response(response, request.method)

    async def elsewhere(request: Request) -> Response:
        return error(404, f"nothing is served here; the functions are under /{ROUTE_PREFIX}/")

    every_method = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    async def refused(request: Request, exc: HTTPException) -> Response:  # e.g. TRACE: Starlette's own 405
        return error(exc.status_code, str(exc.detail).lower() if exc.detail else "the request was refused")

    server = Starlette(routes=[Route(f"/{ROUTE_PREFIX}/{{path:path}}", dispatch, methods=every_method),
                               Route("/{path:path}", elsewhere, methods=every_method)],
                       exception_handlers={HTTPException: refused})
    return server, timers, queue_triggers


async def run_timers(timers: list) -> None:
    async def every(name: str, period: int, function) -> None:
        while True:
            await asyncio.sleep(period)
            began = time.perf_counter()
            try:
                await function(None)
            except Exception:  # noqa: BLE001 - a failed run is retried at the next tick
                log.exception("timer function %s failed", name)
                executed(name, began, False)
            else:
                executed(name, began, True)

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
    limits = Limits(args.header_timeout, args.body_timeout, args.max_header_bytes, args.max_connections)
    server_app, timers, queue_triggers = build(app, limits, load_host_settings(Path(args.settings)))
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(server_app, http=guarded(limits), log_level="warning", access_log=args.access_log,
                            loop="asyncio", timeout_graceful_shutdown=2, timeout_keep_alive=30)
    server = Server(config)
    print(f"broker dev host listening on http://{host}:{port}/{ROUTE_PREFIX}", flush=True)
    background = []
    if timers and not args.no_timers:
        background.append(asyncio.create_task(run_timers(timers)))
    if queue_triggers and not args.no_queues:
        options = queues.options(Path.cwd() / "host.json")  # the app's root, as the Functions host reads it
        background.append(asyncio.create_task(queues.run(
            [queues.Trigger(*entry, options, executed) for entry in queue_triggers])))
    try:
        await server.serve(sockets=[sock])
    finally:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.devhost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7071, help="port to bind; 0 picks a free one (default 7071)")
    parser.add_argument("--app", default="function_app", help="module holding `app` (default function_app)")
    parser.add_argument("--settings", default="local.settings.json",
                        help="local settings file whose Values fill unset variables (default local.settings.json)")
    parser.add_argument("--no-timers", action="store_true", help="do not run timer functions")
    parser.add_argument("--no-queues", action="store_true", help="do not run queue-triggered functions")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    defaults = Limits()
    parser.add_argument("--header-timeout", type=float, default=defaults.header_timeout,
                        help="seconds a request line and headers may take (default %(default)s)")
    parser.add_argument("--body-timeout", type=float, default=defaults.body_timeout,
                        help="seconds a request body may take (default %(default)s)")
    parser.add_argument("--max-header-bytes", type=int, default=defaults.max_header_bytes,
                        help="bytes a request line and headers may take (default %(default)s)")
    parser.add_argument("--max-connections", type=int, default=defaults.max_connections,
                        help="open connections at most; more are answered 503 (default %(default)s)")
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
