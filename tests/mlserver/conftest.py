"""Worker fixtures: real `python -m mlserver` processes against the real broker and Azurite.

Workers poll with a short --wait so that stopping them at the end of a test is quick, and log a
status line every second so tests can read what they did.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import requests
from PIL import Image

from devstack.services import Worker
from tests.support.polling import final_result

FAST = ["--wait", "2", "--status-interval", "1"]


@pytest.fixture
def start_worker(broker, tmp_path):
    """start_worker(model, *args, via=broker, env=None) -> a running Worker; all are stopped afterwards."""
    workers: list[Worker] = []

    def start(model: str, *args: str, via=None, env: dict | None = None, timeout: float = 240) -> Worker:
        target = via or broker
        worker = Worker(target.url, target.worker_key, ["--model", model, *FAST, *args], env=env,
                        log_dir=tmp_path / f"worker-{len(workers)}")
        workers.append(worker)
        return worker.start(timeout)

    yield start
    for worker in workers:
        worker.stop(timeout=30)


def result(broker, task_id: str, timeout: float = 120) -> requests.Response:
    """The final getresult answer (not 202), long-polling up to `timeout` seconds."""
    return final_result(broker.url, task_id, timeout, broker.session)


def run_mlserver(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """`python -m mlserver ARGS` to its end (for runs that stop by themselves); `env` adds to os.environ."""
    return subprocess.run([sys.executable, "-m", "mlserver", *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def mlserver_lines(done: subprocess.CompletedProcess) -> list[str]:
    """The lines the worker itself wrote to stderr (not TensorFlow's)."""
    return [line for line in done.stderr.splitlines() if line.startswith("mlserver:")]




def image_bytes(mode: str, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    """A small test picture in the given Pillow mode and file format."""
    base = Image.linear_gradient("L").resize(size)
    picture = Image.merge("RGB", (base, base.transpose(Image.Transpose.FLIP_TOP_BOTTOM), Image.new("L", size, 90)))
    if mode == "I;16":  # Pillow cannot convert RGB to 16 bits itself
        picture = Image.fromarray(np.asarray(base, np.uint16) * 257)
    else:
        picture = picture.convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, fmt)
    return buffer.getvalue()
