"""Servers that run inside a Python process on 127.0.0.1 (the dev stack's token endpoint; the tests'
proxies, relay, webhook receiver and ingestion endpoint): threaded, serving from construction on,
and silent in their threads.

A handler thread can outlive its user: a test's proxy still forwarding a long-poll when the test
closes it writes the answer, later, to a client that has gone. socketserver's default `handle_error` prints a
traceback from that thread, and CPython 3.11 parses source with `ast` to format one. The main thread
may be in `ast.parse` at that moment too (pytest rewrites a plugin's module that a test imports
lazily), and two threads converting ASTs at once share one recursion counter: the main thread's
import fails with "SystemError: AST constructor recursion depth mismatch" (seen in CI, reproduced
on 3.11.7 by formatting tracebacks in one thread while another parses). So a client that went away
is not an error, and any other error in a handler is kept and printed by `close()`, in the thread
that closes the server. (The test process also lets one `ast.parse` run at a time: tests/support/
ast_guard.py.)
"""

from __future__ import annotations

import socketserver
import sys
import threading
import traceback
from http.server import ThreadingHTTPServer

CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class _Silent:
    """A threaded socketserver that serves from construction on and reports its errors at `close()`."""

    daemon_threads = True

    def __init__(self, handler) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.port = self.server_address[1]
        self.errors: list[BaseException] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, CLIENT_GONE):
            self.errors.append(error)

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        for error in list(self.errors):
            traceback.print_exception(error)


class HTTPServer(_Silent, ThreadingHTTPServer):
    pass


class TCPServer(_Silent, socketserver.ThreadingTCPServer):
    pass
