"""A real TCP relay between a client and the broker that counts requests and can lose answers.

It lets a test see what the client sends (how many requests, how often) and cut a connection
after the broker has done the work but before the client hears back: the case idempotent
retries exist for. The broker behind it is the real one; nothing is faked.
"""

from __future__ import annotations

import socket
import socketserver
import threading

from devstack.localserver import TCPServer


def _read_request(sock: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += sock.recv(65536)
    # One request per upstream connection, so the broker's answer ends where its connection does.
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    return b"\r\n".join(lines + [b"Connection: close"]) + b"\r\n\r\n" + body


class Relay:
    def __init__(self, upstream_port: int, lose_answers: int = 0) -> None:
        self.upstream_port = upstream_port
        self.lose_answers = lose_answers
        self.requests: list[bytes] = []
        self.lock = threading.Lock()
        relay = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                relay._serve(self.request)

        self.server = TCPServer(Handler)
        self.port = self.server.port

    def _serve(self, client: socket.socket) -> None:
        while True:
            request = _read_request(client)
            if request is None:
                return
            with self.lock:
                self.requests.append(request)
                lose = self.lose_answers > 0
                self.lose_answers -= lose
            with socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
                upstream.sendall(request)
                answer = b"".join(iter(lambda: upstream.recv(65536), b""))
            if lose:
                return  # the broker did the work; the client never hears of it
            client.sendall(answer)
            return  # the answer says Connection: close

    def url(self, broker_url: str) -> str:
        return broker_url.replace(f":{self.upstream_port}/", f":{self.port}/")

    def count(self, prefix: bytes) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r.startswith(prefix))

    def close(self) -> None:
        self.server.close()
