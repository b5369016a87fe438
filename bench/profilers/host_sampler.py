"""Where the dev host's CPU goes, from py-spy samples of the thread holding the GIL: the host is one
asyncio thread, so while it holds the GIL it is spending CPU. Each sample goes to the innermost frame
that belongs to a named area (the broker, the Azure SDK, its aiohttp transport, ...); plain stdlib
helpers (typing checks, URL parsing, uuid) count toward whoever called them.

Needs py-spy (`pip install -r bench/requirements.txt`); `start` returns None without it.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

# py-spy names files from their import root, and drops the `azure/` of the namespace package:
# azure-core's files show as core/..., azure-storage-blob's as blob/..., azure-functions' as functions/...
AREAS = [
    ("the dev host's HTTP server (devstack/devhost.py, Starlette, uvicorn)", r"^(devstack/devhost\.py|starlette/|uvicorn/|h11/)"),
    ("the broker's own code", r"^broker/"),
    ("azure-functions request/response objects", r"^(azure/)?functions/"),
    ("Azure SDK (azure-core, azure-storage-*)", r"^(azure/|core/|blob/|queue/|storage/)"),
    ("aiohttp (the SDK's HTTP transport)", r"^(aiohttp|multidict|yarl|aiohappyeyeballs)/"),
    ("asyncio event loop and sockets", r"^(asyncio/|selectors\.py|socket\.py)"),
    ("json", r"^json/"),
    ("base64", r"^base64\.py"),
]
FRAME_FILE = re.compile(r"\(([^()]+):\d+\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start(pid: int, out: Path, rate: int = 250) -> subprocess.Popen | None:
    """Sample `pid` into `out` (py-spy's raw format) until `stop`; None when py-spy is missing."""
    binary = py_spy()
    if binary is None:
        print("py-spy is not installed (pip install -r bench/requirements.txt): no dev host profile", flush=True)
        return None
    return subprocess.Popen([binary, "record", "--gil", "--format", "raw", "--rate", str(rate), "--pid", str(pid),
                             "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def area(frames: list[str]) -> str:
    for frame in reversed(frames):
        found = FRAME_FILE.search(frame)
        path = found.group(1) if found else frame
        for name, pattern in AREAS:
            if re.search(pattern, path):
                return name
    return "other"


def summary(paths: list[Path]) -> list[dict]:
    """Share of the samples per area, over every file in `paths` that exists."""
    samples: Counter = Counter()
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                samples[area(stack.split(";"))] += int(count)
    total = sum(samples.values()) or 1
    return [{"area": name, "share": round(value / total, 3), "samples": value} for name, value in samples.most_common()]
