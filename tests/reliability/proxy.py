"""A pass-through HTTP proxy on 127.0.0.1 that records every puttaskresult and its answer.

It changes nothing: each request goes to the broker as it came, each answer back as it came. It only
lets a test see which puts the broker accepted, which is what "committed exactly once" is about.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import requests

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
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "RecordingProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

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
                answer = session.request(self.command, proxy.target + path, data=body, headers=headers, timeout=120)
                url = urlsplit(self.path)
                if url.path.endswith("/puttaskresult"):
                    query = parse_qs(url.query)
                    with proxy._lock:
                        proxy.puts.append(Put(query["task_id"][0], query["lease"][0], body,
                                              answer.status_code, answer.content))
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = _forward

        return Handler
