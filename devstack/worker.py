"""A worker (`python -m mlserver ...`) as a dev service, for tests, benchmarks and local runs."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from .services import Service


class Worker(Service):
    """`python -m mlserver ARGS` with BROKER_URL and BROKER_WORKER_KEY set; ready once it logs "worker ready"."""

    name = "worker"
    ready = re.compile(r"worker ready")

    def __init__(self, broker_url: str, worker_key: str | None, args: list[str],
                 env: dict | None = None, log_dir: str | Path | None = None) -> None:
        super().__init__(log_dir)
        self.broker_url, self.worker_key = broker_url, worker_key
        self.args = list(args)
        self.env = dict(env or {})

    def environment(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env.update({"BROKER_URL": self.broker_url, "PYTHONUNBUFFERED": "1"})
        if self.worker_key:
            env["BROKER_WORKER_KEY"] = self.worker_key
        env.update({k: str(v) for k, v in self.env.items()})
        return env

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mlserver", *self.args]

    def start(self, timeout: float = 180, count: int = 1) -> "Worker":
        return super().start(timeout, count)  # TensorFlow and a model build take a while on a busy CPU
