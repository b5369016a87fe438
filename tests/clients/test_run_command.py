"""The README's first command, `scripts/run`, end to end: it starts Azurite, the dev host and a
worker, says where the demo is and how to try it, serves a task, and Ctrl-C stops all of it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from devstack.services import leash

ROOT = Path(__file__).resolve().parents[2]


def wait_for_line(log: Path, pattern: str, proc: subprocess.Popen, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text())
        if match:
            return match
        assert proc.poll() is None, f"scripts/run exited with {proc.returncode}:\n{log.read_text()}"
        time.sleep(0.2)
    raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{log.read_text()}")


def test_scripts_run_serves_a_task_and_ctrl_c_stops_everything(dead_url, tmp_path):
    port = int(dead_url.rsplit(":", 1)[1].split("/")[0])  # a free port
    log = tmp_path / "run.log"
    env = {**os.environ, "MODEL": "echo", "PORT": str(port), "DATA_DIR": str(tmp_path / "data")}
    env.pop("BROKER_WORKER_KEYS", None)
    with open(log, "w") as out:
        proc = subprocess.Popen([*leash(), str(ROOT / "scripts" / "run")], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        demo = wait_for_line(log, r"demo page:\s+(\S+)", proc, timeout=300).group(1)
        key = wait_for_line(log, r"worker key: (\S+)", proc, timeout=10).group(1)
        text = log.read_text()
        assert demo == f"http://127.0.0.1:{port}/api/demo"
        assert "python -m clients predict" in text and "--model echo" in text
        assert requests.get(demo, timeout=30).status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/api/stats",
                            headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 200

        picture = tmp_path / "cat.png"
        picture.write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
        done = subprocess.run([sys.executable, "-m", "clients", "predict", str(picture), "--model", "echo",
                               "--out", str(tmp_path / "result.png"), "--timeout", "60"], cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, "BROKER_URL": f"http://127.0.0.1:{port}/api"},
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert (tmp_path / "result.png").read_bytes() == picture.read_bytes()

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "[run] stopping" in log.read_text()
    try:
        requests.get(f"http://127.0.0.1:{port}/api/health", timeout=5)
        raise AssertionError("the dev host still answers after Ctrl-C")
    except requests.ConnectionError:
        pass
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "data")], capture_output=True, text=True).stdout
    assert leftovers == "", f"processes still running: {leftovers}"
