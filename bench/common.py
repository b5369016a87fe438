"""What every benchmark shares: the dev stack, timing statistics, the table, the JSON file.

Absolute times drift on a shared machine, so each benchmark reports its figures as ratios
against a reference it measures in the same run, and takes medians over interleaved repeats.
Every process a benchmark starts is stopped by its PID (devstack's services do that).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import secrets
import socket
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import requests

from devstack.services import Azurite, DevHost

ROOT = Path(__file__).resolve().parent.parent  # the repository
RESULTS = Path(os.environ.get("BENCH_RESULTS") or ROOT / "bench" / "results")
WORKER_KEY = "bench-worker-key"
QUICK = os.environ.get("BENCH_QUICK") == "1"  # set by `python -m bench --quick` and each module's --quick


def pick(quick, full):
    return quick if QUICK else full


def set_quick(flag: bool) -> None:
    global QUICK
    QUICK = QUICK or flag
    if QUICK:
        os.environ["BENCH_QUICK"] = "1"


# ---- statistics -----------------------------------------------------------------------------

def pct(values, q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    data = sorted(values)
    if not data:
        return float("nan")
    k = (len(data) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def summary_ms(seconds) -> dict:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 2), "p95_ms": round(pct(ms, 95), 2),
            "mean_ms": round(statistics.fmean(ms), 2) if ms else None, "min_ms": round(min(ms), 2) if ms else None}


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def verdict(value: float, goal: float, higher_is_better: bool = False) -> str:
    if value != value:  # NaN
        return "n/a"
    return "PASS" if (value >= goal if higher_is_better else value <= goal) else "FAIL"


# ---- output ---------------------------------------------------------------------------------

def table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = [title, "  ".join(h.rjust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    return text


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "-" if value is None else str(value)


def save(name: str, data: dict) -> Path:
    """Write bench/results/<name>.json (the latest run; bench.plot and docs read these)."""
    RESULTS.mkdir(exist_ok=True)
    data = {"benchmark": name, "quick": QUICK, "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "machine": platform.machine(), "python": sys.version.split()[0],
            "load_avg_at_start": _LOAD_AT_START.get(name), **data}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"saved {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}", flush=True)
    return path


_LOAD_AT_START: dict = {}


def note_load(name: str) -> None:
    """Record the machine's load average as a benchmark starts (the machine is shared)."""
    _LOAD_AT_START[name] = [round(v, 2) for v in os.getloadavg()]
    print(f"[{name}] load average {_LOAD_AT_START[name]} on {os.cpu_count()} CPUs", flush=True)


# ---- the stack ------------------------------------------------------------------------------

class Stack:
    """Azurite on free ports and one or more dev hosts on it; stops exactly what it started."""

    def __init__(self, hosts: int = 1, settings: dict | None = None, work: Path | None = None,
                 azurite_node_args: list[str] | None = None) -> None:
        self.work = work or Path(tempfile.mkdtemp(prefix="bench-"))
        self.azurite_node_args = azurite_node_args
        # One lease secret for all hosts: they are instances of one app.
        self.settings = {"BROKER_WORKER_KEYS": WORKER_KEY, "BROKER_LEASE_SECRET": secrets.token_urlsafe(32),
                         **(settings or {})}
        self.count = hosts
        self.azurite: Azurite | None = None
        self.hosts: list[DevHost] = []

    def __enter__(self) -> Stack:
        try:
            self.azurite = Azurite(log_dir=self.work / "azurite", node_args=self.azurite_node_args).start()
            for i in range(self.count):
                self.hosts.append(DevHost(self.azurite.connection_string, self.settings,
                                          log_dir=self.work / f"devhost-{i}", extra_args=["--no-timers"]).start())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for host in self.hosts:
            host.stop()
        if self.azurite:
            self.azurite.stop()

    @property
    def url(self) -> str:
        return self.hosts[0].url

    @property
    def connection_string(self) -> str:
        return self.azurite.connection_string


def worker_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # a ~/.netrc entry would replace the key below
    session.headers["Authorization"] = f"Bearer {WORKER_KEY}"
    return session


def model_name(prefix: str = "bench") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int, field: str = "VmRSS") -> float | None:
    """VmRSS (now) or VmHWM (peak) of a process, in MiB."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"{field}:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else None


def _stat_cpu(stat: Path) -> float | None:
    """User + system CPU seconds from a /proc stat file; None when it is gone."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (from /proc, no psutil needed)."""
    return _stat_cpu(Path(f"/proc/{pid}/stat")) or 0.0


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of a process to `cpus` (threads it starts later inherit their creator's)."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of a process, summed by thread name (/proc/PID/task/*/comm)."""
    totals: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name = (task / "comm").read_text(errors="replace").strip()
        except OSError:
            continue
        spent = _stat_cpu(task / "stat")
        if spent is not None:  # else the thread ended meanwhile
            totals[name] = totals.get(name, 0.0) + spent
    return totals


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def add_compare_args(parser, what: str) -> None:
    """--compare-root/--compare-label: also measure a dev host served from another checkout."""
    parser.add_argument("--compare-root", metavar="DIR", help=f"also {what} a dev host served from DIR, in turns")
    parser.add_argument("--compare-label", default="scratch copy", help="what DIR holds, for the tables")


def save_compared(name: str, data: dict, args) -> None:
    """Save <name>.json (the broker's own figures stand alone too) and, with --compare-root,
    <name>-compare.json labelled with what the other checkout holds."""
    if args.compare_root:
        data["variant_label"] = args.compare_label
    save(name, data)
    if args.compare_root:
        save(f"{name}-compare", data)


def compare_args(name: str, argv, what: str, extra=None):
    """The arguments of a benchmark that can also measure another checkout (--compare-root), with
    the machine's load noted at its start; `extra(parser)` adds the benchmark's own."""
    def add(parser) -> None:
        add_compare_args(parser, what)
        if extra:
            extra(parser)

    args = parse_args(name, argv, add)
    note_load(name)
    return args


def parse_args(name: str, argv, extra=None):
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}")
    parser.add_argument("--quick", action="store_true", help="a short run (fewer repeats, smaller depths)")
    if extra:
        extra(parser)
    args = parser.parse_args(argv)
    set_quick(args.quick)
    return args
