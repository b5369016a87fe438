"""A forward HTTP proxy on 127.0.0.1 (what HTTP_PROXY names) that passes requests on as they come
(to storage, or to the broker: for an IP address requests cannot tell them apart by port in
NO_PROXY), except those a test says to stall (held, never answered; `stalled` marks that one came)
or to refuse (answered 403 as storage answers a URL it does not accept).

It lets a test catch a worker in the middle of writing a result to storage (a block PUT in flight)
and kill it there, or keep a worker from reading its signal blob. What is behind it is real.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler

import requests

from devstack.localserver import HTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "content-length", "host"}


class StorageProxy:
    def __init__(self, stall=lambda method, url: False, refuse=lambda method, url: False) -> None:
        """`stall(method, url)` says which requests to hold, `refuse(method, url)` which to answer 403."""
        self.stall, self.refuse = stall, refuse
        self.seen: list[str] = []  # every URL asked for, in order
        self.answered: list[str] = []  # every URL passed on and answered, in order
        self.stalled = threading.Event()
        self.release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                proxy.seen.append(self.path)
                if proxy.stall(self.command, self.path):
                    proxy.stalled.set()
                    proxy.release.wait(120)  # never answered while the test runs
                    return
                if proxy.refuse(self.command, self.path):
                    self.send_response(403)
                    self.send_header("x-ms-error-code", "AuthorizationFailure")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                answer = requests.request(self.command, self.path, data=body, headers=headers, timeout=60,
                                          allow_redirects=False)
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer.content)
                proxy.answered.append(self.path)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _forward

        self.server = HTTPServer(Handler)
        self.url = f"http://127.0.0.1:{self.server.port}"

    def close(self) -> None:
        self.release.set()
        self.server.close()
