"""The echo worker the client tests run against: the real `python -m mlserver --handler echo`.

Until mlserver exists this falls back to a thread that drives the broker's real worker routes
with the same echo semantics (payload back unchanged; params.sleep_ms; params.fail).
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def real_worker_available() -> bool:
    return (ROOT / "mlserver" / "handlers" / "echo.py").exists() and (ROOT / "devstack" / "worker.py").exists()


@contextlib.contextmanager
def echo_worker(broker, model: str):
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            for task in broker.claim(model, max_tasks=4, wait=1):
                params = task.get("params") or {}
                time.sleep(params.get("sleep_ms", 0) / 1000)
                if "fail" in params:
                    broker.put_failure(task, str(params["fail"]))
                else:
                    broker.put(task, base64.b64decode(task["payload"]), task["content_type"])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
