"""`pip install ./mlserver` and `pip install ./clients`: the installed commands work end to end, under
import names of their own, without the repository on the path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.services import ROOT, Worker


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """Both distributions installed (without their dependencies, which this venv has) into one folder."""
    work = tmp_path_factory.mktemp("packaging")
    for folder in ("mlserver", "clients"):  # built from copies: an in-tree build leaves build/ behind
        shutil.copytree(ROOT / folder, work / "src" / folder, ignore=shutil.ignore_patterns("__pycache__"))
    target = work / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(work / "src" / "mlserver"), str(work / "src" / "clients")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def run(installed: Path, *command: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(installed / "bin" / command[0]), *command[1:]], capture_output=True, text=True,
                          timeout=120, cwd=installed.parent, env={**os.environ, "PYTHONPATH": str(installed), **(env or {})})


def test_the_installed_packages_have_their_own_import_names(installed):
    assert {p.name for p in installed.iterdir() if not p.name.endswith(".dist-info")} == {
        "mlbroker_worker", "mlbroker_client", "bin"}
    assert (installed / "mlbroker_worker" / "imagenet_classes.json").is_file()
    for command, usage in (("mlbroker", "usage: mlbroker "), ("mlbroker-worker", "usage: mlbroker-worker ")):
        done = run(installed, command, "--help")
        assert done.returncode == 0 and done.stdout.startswith(usage), done.stdout + done.stderr


def test_the_installed_worker_and_client_serve_a_task(installed, broker, model, tmp_path):
    worker = Worker(broker.url, broker.worker_key, ["--model", model, "--handler", "echo", "--wait", "2"],
                    env={"PYTHONPATH": str(installed)}, log_dir=tmp_path / "worker",
                    program=[str(installed / "bin" / "mlbroker-worker")]).start()
    try:
        (tmp_path / "in.txt").write_bytes(b"through the installed packages")
        done = run(installed, "mlbroker", "predict", str(tmp_path / "in.txt"), "--model", model,
                   "--out", str(tmp_path / "out.txt"), env={"BROKER_URL": broker.url})
        assert done.returncode == 0, done.stdout + done.stderr
        assert (tmp_path / "out.txt").read_bytes() == b"through the installed packages"
    finally:
        worker.stop(timeout=30)
