"""A pass-through HTTP proxy on 127.0.0.1 that records every puttaskresult and its answer.

It changes nothing: each request goes to the broker as it came, each answer back as it came. It only
lets a test see which puts the broker accepted, which is what "committed exactly once" is about,
and what tokens workers held (`leases`, every token seen in a claim or heartbeat answer, in order).
A test may set `fault(method, path)` to answer some requests itself instead (a failing front end).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import requests

from devstack.localserver import HTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


@dataclass(frozen=True)
class Put:
    task_id: str
    lease: str
    body: bytes
    status: int
    answer: bytes


class RecordingProxy:
    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")  # e.g. http://127.0.0.1:PORT/api
        self.puts: list[Put] = []
        self.leases: list[tuple[str, str]] = []  # (task_id, token) as the broker handed them out
        self.fault = None  # (method, path) -> (status, JSON body) to answer instead of the broker, or None
        self._lock = threading.Lock()
        self.server = HTTPServer(self._handler())
        self.url = f"http://127.0.0.1:{self.server.port}/api"

    def __enter__(self) -> RecordingProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.server.close()

    def _handler(self):
        proxy = self
        local = threading.local()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                session = getattr(local, "session", None) or requests.Session()
                local.session = session
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                path = self.path[len("/api"):] if self.path.startswith("/api") else self.path
                url = urlsplit(self.path)
                fault = proxy.fault(self.command, url.path) if proxy.fault else None
                if fault is not None:
                    self._answer(fault[0], {"Content-Type": "application/json"}, json.dumps(fault[1]).encode())
                    return
                answer = session.request(self.command, proxy.target + path, data=body, headers=headers, timeout=120)
                proxy._note_leases(url, answer)
                if url.path.endswith("/puttaskresult"):
                    query = parse_qs(url.query)
                    with proxy._lock:
                        proxy.puts.append(Put(query["task_id"][0], query["lease"][0], body,
                                              answer.status_code, answer.content))
                self._answer(answer.status_code, answer.headers, answer.content)

            def _answer(self, status: int, headers, content: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _forward

        return Handler

    def _note_leases(self, url, answer: requests.Response) -> None:
        if answer.status_code != 200 or not url.path.endswith(("/getnexttask", "/extendlease")):
            return
        body = answer.json()
        with self._lock:
            if url.path.endswith("/getnexttask"):
                self.leases += [(task["task_id"], task["lease"]) for task in body["tasks"]]
            else:
                self.leases.append((parse_qs(url.query)["task_id"][0], body["lease"]))
