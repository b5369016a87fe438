"""`python -m clients` as a user runs it, in a subprocess, against a real broker and echo worker."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from clients import BrokerClient
from tests.conftest import CLIENT_KEY

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, url: str, cwd: Path, key: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update({"BROKER_URL": url, "PYTHONPATH": str(ROOT)})
    if key:
        env["BROKER_CLIENT_KEY"] = key
    kwargs = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.run([sys.executable, "-m", "clients", *args], cwd=cwd, env=env, text=True, timeout=120,
                          **kwargs)


def one_error_line(process: subprocess.CompletedProcess) -> str:
    lines = process.stderr.strip().splitlines()
    assert process.returncode != 0
    assert "Traceback" not in process.stderr
    assert len([line for line in lines if line.startswith("error:")]) == 1, process.stderr
    return [line for line in lines if line.startswith("error:")][0]


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    made = {"cat.png": b"\x89PNG\r\n\x1a\n" + os.urandom(300), "scores.json": b'{"label": "tabby", "score": 0.9}'}
    for name, content in made.items():
        (tmp_path / name).write_bytes(content)
    return {name: tmp_path / name for name in made}


def test_predict_several_files_into_a_directory(broker, echo, files, tmp_path):
    done = cli("predict", "cat.png", "scores.json", "--model", echo, "--out", "results", url=broker.url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "results" / "cat.echo.png").read_bytes() == files["cat.png"].read_bytes()
    assert (tmp_path / "results" / "scores.echo.json").read_bytes() == files["scores.json"].read_bytes()
    # Not a terminal: plain lines, one per change of state.
    assert "cat.png: queued (task " in done.stderr
    assert "cat.png: succeeded -> results/cat.echo.png" in done.stderr
    assert "\r" not in done.stderr


def test_predict_prints_a_json_result_and_names_other_results_after_the_input(broker, echo, files, tmp_path):
    done = cli("predict", "scores.json", "--model", echo, url=broker.url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"label": "tabby", "score": 0.9}
    done = cli("predict", "cat.png", "--model", echo, url=broker.url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cat.echo.png").read_bytes() == files["cat.png"].read_bytes()


def test_a_json_result_that_is_not_json_is_saved_not_printed(broker, echo, tmp_path):
    (tmp_path / "broken.json").write_bytes(b"{not json")
    done = cli("predict", "broken.json", "--model", echo, url=broker.url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert (tmp_path / "broken.echo.json").read_bytes() == b"{not json"


def test_predict_several_json_results_print_one_line_each(broker, echo, files, tmp_path):
    (tmp_path / "more.json").write_text('{"n": 2}')
    done = cli("predict", "scores.json", "more.json", "--model", echo, url=broker.url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert {line["file"]: line["result"] for line in lines} == {"scores.json": {"label": "tabby", "score": 0.9},
                                                                 "more.json": {"n": 2}}


def test_predict_shows_a_progress_bar_on_a_terminal(broker, echo, files, tmp_path):
    leader, follower = pty.openpty()
    try:
        done = cli("predict", "cat.png", "scores.json", "--model", echo, "--out", "out", "--params",
                   '{"sleep_ms": 300}', url=broker.url, cwd=tmp_path, stderr=follower)
        os.close(follower)
        screen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(leader)
    text = screen.decode()
    assert done.returncode == 0, text
    assert "\r" in text and "2 queued" in text
    assert "2/2 done  0 running  0 queued  0 failed" in text


def test_a_failed_task_is_one_error_line_and_exit_1(broker, echo, files, tmp_path):
    done = cli("predict", "cat.png", "--model", echo, "--params", '{"fail": "no cats today"}',
               url=broker.url, cwd=tmp_path)
    assert done.returncode == 1
    line = one_error_line(done)
    assert line.startswith("error: cat.png: task ") and line.endswith("failed: no cats today")


def test_exit_code_is_0_only_if_all_succeeded(broker, echo, files, tmp_path):
    (tmp_path / "bad.txt").write_text("x")
    done = cli("predict", "scores.json", "bad.txt", "--model", echo, "--out", "out", "--params",
               '{"fail": "this one fails"}', url=broker.url, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.count("error:") == 2  # both failed here, each with its line


def test_missing_file_submits_nothing(broker, files, tmp_path, model):
    done = cli("predict", "cat.png", "missing.png", "--model", model, url=broker.url, cwd=tmp_path)
    assert one_error_line(done) == "error: cannot read missing.png: No such file or directory"
    assert broker.claim(model, wait=0) == []  # cat.png was not sent either


def test_broker_unreachable(dead_url, files, tmp_path):
    done = cli("predict", "cat.png", "--model", "echo", url=dead_url, cwd=tmp_path)
    assert one_error_line(done) == f"error: cannot reach the broker at {dead_url} (connection refused)"


def test_missing_key_is_401_and_the_key_comes_from_the_environment(keyed_broker, files, tmp_path, model):
    done = cli("predict", "cat.png", "--model", model, url=keyed_broker.url, cwd=tmp_path)
    assert one_error_line(done) == ("error: a valid client key or token is required "
                                    "(Authorization: Bearer <key or token>) (HTTP 401)")
    done = cli("predict", "cat.png", "--model", model, "--timeout", "1", url=keyed_broker.url, cwd=tmp_path,
               key=CLIENT_KEY)
    assert "cat.png: waiting for a worker (none online) (task " in done.stderr  # accepted; nobody serves it


def test_timeout_names_the_task(broker, files, tmp_path, model):
    done = cli("predict", "cat.png", "--model", model, "--timeout", "2", url=broker.url, cwd=tmp_path)
    line = one_error_line(done)
    task_id = line.split("task ")[1].split()[0]
    assert line.endswith(f"it may still finish: python -m clients result {task_id}")
    assert broker.status(task_id)["status"] == "queued"


def test_a_task_nobody_serves_says_so_instead_of_spinning(broker, files, tmp_path, model):
    done = cli("predict", "cat.png", "--model", model, "--timeout", "3", url=broker.url, cwd=tmp_path)
    waiting = [line for line in done.stderr.splitlines() if line.startswith("cat.png: ")]
    assert waiting and waiting[0].startswith("cat.png: waiting for a worker (none online) (task "), done.stderr


def test_a_running_task_shows_how_far_it_is(broker, echo, files, tmp_path):
    done = cli("predict", "scores.json", "--model", echo, "--params", '{"sleep_ms": 9000, "steps": 3}',
               url=broker.url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("scores.json: running ")]
    assert any(line.startswith(("scores.json: running 33% (step 1 of 3)", "scores.json: running 66% (step 2 of 3)"))
               for line in said), done.stderr
    assert json.loads(done.stdout) == {"label": "tabby", "score": 0.9}


def test_bad_params_is_a_usage_error(broker, files, tmp_path):
    done = cli("predict", "cat.png", "--model", "echo", "--params", "[1, 2]", url=broker.url, cwd=tmp_path)
    assert done.returncode == 2
    assert one_error_line(done) == "error: --params must be a JSON object, like '{\"top_k\": 3}'"


def test_status_result_and_cancel(broker, echo, model, tmp_path):
    with BrokerClient(broker.url) as client:
        waiting = client.submit(b"x", model)
        finished = client.submit(b"\x00\x01binary", echo, content_type="image/png")
        client.wait(finished, timeout=60)

    shown = cli("status", waiting, url=broker.url, cwd=tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "queued"
    pending = cli("result", waiting, url=broker.url, cwd=tmp_path)
    assert pending.returncode == 3 and one_error_line(pending).endswith("is still queued; ask again later (or use --wait)")

    cancelled = cli("cancel", waiting, url=broker.url, cwd=tmp_path)
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["status"] == "cancelled"
    assert one_error_line(cli("result", waiting, url=broker.url, cwd=tmp_path)) == \
        f"error: task {waiting} was cancelled"

    saved = cli("result", finished, "--out", "r.png", url=broker.url, cwd=tmp_path)
    assert saved.returncode == 0 and (tmp_path / "r.png").read_bytes() == b"\x00\x01binary"
    beside = cli("result", finished, url=broker.url, cwd=tmp_path)  # not JSON, not text: a file named by id
    assert beside.returncode == 0 and (tmp_path / f"{finished}.png").read_bytes() == b"\x00\x01binary"
    too_late = cli("cancel", finished, url=broker.url, cwd=tmp_path)
    assert one_error_line(too_late) == f"error: task {finished} already succeeded and cannot be cancelled (HTTP 409)"
    unknown = cli("status", "not-an-id", url=broker.url, cwd=tmp_path)
    assert one_error_line(unknown) == "error: task_id must be 32 lowercase hexadecimal characters (HTTP 400)"


def test_predict_a_large_file_uploads_it_with_progress(broker, echo, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 * 1024 * 1024))
    done = cli("predict", "big.bin", "--model", echo, "--out", "echoed.bin", url=broker.url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "echoed.bin").read_bytes() == big.read_bytes()
    assert "big.bin: uploading 100% (6.3 of 6.3 MB" in done.stderr, done.stderr
    assert "big.bin: succeeded -> echoed.bin" in done.stderr


def test_a_client_killed_mid_upload_leaves_no_task_and_the_sweep_takes_what_it_wrote(azurite, broker, tmp_path,
                                                                                     lease_secret, monkeypatch):
    """A real `predict` of a large file, held by a proxy in the middle of its blocks and SIGKILLed there:
    the upload was never committed, so no task exists (404, nothing queued); the sweep, once the upload's
    time has passed (a moved clock), deletes its record and the blocks it staged."""
    import base64
    import re
    import signal

    from broker import settings as broker_settings
    from broker.storage import Storage
    from broker.store import TaskStore
    from tests.store.conftest import wall_clock
    from tests.support.polling import run_async, wait_for
    from tests.support.storage_proxy import StorageProxy

    model = "t-killed-" + os.urandom(4).hex()
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20 * 1024 * 1024))  # three blocks of 8 MiB at most
    third = base64.b64encode(b"block-00000002").decode().rstrip("=")  # the client's block ids (clients/blobs.py)
    proxy = StorageProxy(stall=lambda method, url: method == "PUT" and f"blockid={third}" in url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update({"BROKER_URL": broker.url, "PYTHONPATH": str(ROOT), "HTTP_PROXY": proxy.url})
    process = subprocess.Popen([sys.executable, "-m", "clients", "predict", str(big), "--model", model], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proxy.stalled.wait(60), process.stderr.read1().decode() if process.poll() is not None else "no block PUT"
        # Blocks go up in parallel: kill once an earlier one is staged, so there is something to sweep.
        wait_for(lambda: any("comp=block&" in url for url in proxy.answered), 60, 0.05, "a block staged")
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        proxy.close()
    task_id = re.search(r"payloads/([0-9a-f]{32})/", proxy.seen[-1]).group(1)
    status = broker.get(f"/status?task_id={task_id}")
    assert status.status_code == 404 and "not committed" in status.json()["error"]
    assert broker.claim(model, wait=0) == []

    monkeypatch.setenv("BROKER_STORAGE_CONNECTION", azurite.connection_string)
    monkeypatch.setenv("BROKER_LEASE_SECRET", lease_secret)

    async def sweep():
        storage = Storage(azurite.connection_string, 5)
        try:
            store = TaskStore(storage, broker_settings.load(), clock=wall_clock())
            listed, _ = await storage.uploads.page(None, 5000, uncommitted=True)
            staged = [b.name for b in listed if task_id in b.name]
            store.now.advance(store.settings.upload_seconds + 20 + 301)  # the URL's time, its MB allowance, the grace
            await store.sweep()
            listed, _ = await storage.uploads.page(None, 5000, uncommitted=True)
            return staged, await storage.inbox.head(task_id), [b.name for b in listed if task_id in b.name]
        finally:
            await storage.close()

    staged, record, left = run_async(sweep)
    assert staged and record is None and left == []
