"""The local services' leash: a child started by a parent that dies, however it dies, does not outlive it."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from devstack.services import Service, leash
from tests.support.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not leash() and not os.environ.get("CI"),
                                reason="the leash is Linux's parent-death signal, set by util-linux's setpriv")


class Sleeper(Service):
    """A child that says which signal its parent's death will send it (0: none), then sleeps."""

    name = "sleeper"
    ready = re.compile(r"pdeathsig=(\d+)")

    def command(self) -> list[str]:
        probe = ("import ctypes, time; libc = ctypes.CDLL(None); sig = ctypes.c_int();"
                 " libc.prctl(2, ctypes.byref(sig), 0, 0, 0); print(f'pdeathsig={sig.value}', flush=True);"
                 " time.sleep(600)")
        return [sys.executable, "-c", probe]


def gone(pid: int) -> bool:
    """Ended: no such process, or a zombie waiting for whoever adopted it to reap it."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def test_azurite_a_dev_host_and_a_busy_worker_end_when_the_process_that_started_them_is_killed(tmp_path):
    """SIGKILL gives the parent no chance to stop its children (a cancelled CI job): they end anyway,
    the worker too while it runs a task (its own SIGTERM would finish the task and try for ever to
    report it to the dev host, which is ending as well)."""
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import time\n"
         "from devstack.services import Azurite, DevHost, Worker\n"
         f"azurite = Azurite(log_dir={str(tmp_path)!r}).start()\n"
         f"host = DevHost(azurite.connection_string, {{'BROKER_WORKER_KEYS': 'leash-key'}}, log_dir={str(tmp_path)!r}).start()\n"
         "worker = Worker(host.url, 'leash-key', ['--model', 'leash', '--handler', 'echo', '--wait', '1'],\n"
         f"                log_dir={str(tmp_path)!r}).start()\n"
         "print(azurite.proc.pid, host.proc.pid, worker.proc.pid, host.url, flush=True)\n"
         "time.sleep(600)\n"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    children: list[int] = []
    try:
        line = parent.stdout.readline()
        assert line, parent.stderr.read()
        *pids, url = line.split()
        children = [int(pid) for pid in pids]
        task_id = requests.post(f"{url}/predict?model=leash", params={"params": json.dumps({"sleep_ms": 60_000})},
                                data=b"x", timeout=30).json()["task_id"]
        wait_for(lambda: requests.get(f"{url}/status?task_id={task_id}", timeout=30).json()["status"] == "running",
                 60, 0.1, "the worker to take the task")
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        wait_for(lambda: all(gone(pid) for pid in children), 30, 0.1, "Azurite, the dev host and the worker to end")
    finally:
        parent.kill()
        for pid in children:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_child_started_from_the_main_thread_is_leashed_and_one_from_another_thread_is_not(tmp_path):
    """The kernel's signal follows the thread that started the child: from a helper thread that ends
    (a test's outage thread restarting Azurite), a leashed child would die with it."""
    with Sleeper(tmp_path / "main") as child:
        assert child.matches[0].group(1) == str(int(signal.SIGTERM))
    started = []
    helper = threading.Thread(target=lambda: started.append(Sleeper(tmp_path / "thread").start()))
    helper.start()
    helper.join()
    try:
        assert started[0].matches[0].group(1) == "0"
    finally:
        started[0].stop()
