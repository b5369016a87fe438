"""A webhook receiver on 127.0.0.1: a real HTTP server that records every POST it is sent and answers
with the statuses a test scripts (then 200), optionally after a delay."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from devstack.localserver import HTTPServer


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict
    body: bytes
    status: int  # what the receiver answered

    @property
    def event(self) -> dict:
        return json.loads(self.body)


class Receiver:
    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.script: dict[str, list] = {}  # per path, statuses to answer in turn (then 200); a float: a delay, then 200;
        # a tuple: (a redirect's status, its Location)
        self.lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    steps = receiver.script.get(self.path) or [200]
                    step = steps.pop(0)
                location = None
                if isinstance(step, float):
                    time.sleep(step)
                    step = 200
                elif isinstance(step, tuple):  # (a 3xx status, where to)
                    step, location = step
                self.send_response(step)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with receiver.lock:
                    receiver.deliveries.append(Delivery(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                        body, step))
                    receiver.lock.notify_all()

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(Handler)
        self.url = f"http://127.0.0.1:{self.server.port}"

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc) -> None:
        self.server.close()

    def wait_for(self, condition, timeout: float = 60) -> list[Delivery]:
        """The deliveries so far, once `condition(deliveries)` holds (AssertionError after `timeout`)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while not condition(self.deliveries):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no such deliveries within {timeout} s; got {self.deliveries}")
                self.lock.wait(left)
            return list(self.deliveries)

    def of(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.path == path]
