"""A stand-in for Application Insights' ingestion endpoint on 127.0.0.1: it takes what the Azure
Monitor exporter sends (POST /v2.1/track, a JSON array of envelopes, gzipped or not) and keeps it,
so a test can read the telemetry the broker really emitted. `connection_string` points an app at it."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler

from devstack.localserver import HTTPServer


class Ingestion:
    def __init__(self) -> None:
        self.envelopes: list[dict] = []
        self.lock = threading.Lock()
        ingestion = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                try:
                    items = json.loads(body)
                except ValueError:  # newline-delimited JSON
                    items = [json.loads(line) for line in body.splitlines() if line.strip()]
                items = items if isinstance(items, list) else [items]
                with ingestion.lock:
                    ingestion.envelopes += items
                answer = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = HTTPServer(Handler)
        url = f"http://127.0.0.1:{self.server.port}/"
        self.connection_string = (f"InstrumentationKey=00000000-0000-0000-0000-000000000000;"
                                  f"IngestionEndpoint={url};LiveEndpoint={url}")

    def operations(self) -> dict[str, list[tuple[str, str]]]:
        """(type, name) of every item received, by operation id."""
        found: dict[str, list[tuple[str, str]]] = {}
        with self.lock:
            for envelope in self.envelopes:
                operation = (envelope.get("tags") or {}).get("ai.operation.id")
                data = envelope.get("data") or {}
                name = (data.get("baseData") or {}).get("name", "")
                found.setdefault(operation, []).append((data.get("baseType", ""), name))
        return found

    def close(self) -> None:
        self.server.close()
