"""In-process servers print nothing from their threads (devstack/localserver.py says why)."""

from __future__ import annotations

import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler

import pytest
import requests

from devstack.localserver import CLIENT_GONE, HTTPServer


class Watched(HTTPServer):
    """Notes every error its handlers raise, and when a request is over (after handle_error)."""

    def __init__(self, handler) -> None:
        self.raised: list[BaseException] = []
        self.over = threading.Event()
        super().__init__(handler)

    def handle_error(self, request, client_address) -> None:
        self.raised.append(sys.exc_info()[1])
        super().handle_error(request, client_address)

    def shutdown_request(self, request) -> None:
        super().shutdown_request(request)
        self.over.set()


def test_a_client_that_went_away_is_not_reported(capfd):
    release = threading.Event()

    class Late(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            release.wait(10)
            for _ in range(20):  # the first write may still reach the kernel's buffer
                self.wfile.write(b"x" * 65536)

    server = Watched(Late)
    client = socket.create_connection(("127.0.0.1", server.port))
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    client.close()
    release.set()
    assert server.over.wait(10)
    server.close()
    assert [type(e) for e in server.raised if isinstance(e, CLIENT_GONE)], server.raised
    assert server.errors == []
    assert capfd.readouterr().err == ""


def test_any_other_error_is_printed_by_close_not_by_the_handler_thread(capfd):
    class Broken(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            raise ValueError("the handler broke")

    server = Watched(Broken)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{server.port}/", timeout=10)
    assert server.over.wait(10)
    assert capfd.readouterr().err == ""
    server.close()
    assert "ValueError: the handler broke" in capfd.readouterr().err
