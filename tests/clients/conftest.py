"""Fixtures for the client tests: a real echo worker on the main broker, a broker with client keys, and
the session's headless Chromium (Debian's; without it browser tests skip, except under CI=true).

The worker serves model `echo` for the whole session (the demo page offers that name), so
tests that need a task to stay queued use the unique `model` fixture, which no worker serves.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from devstack.services import Worker
from tests.conftest import CLIENT_KEY
from tests.support.polling import wait_for


@pytest.fixture(scope="session")
def echo(broker, tmp_path_factory):
    """A real `python -m mlserver --handler echo` worker for model `echo` on the main broker."""
    worker = Worker(broker.url, broker.worker_key, ["--model", "echo", "--handler", "echo", "--wait", "2"],
                    log_dir=tmp_path_factory.mktemp("echo-worker")).start()
    # Ready means loaded; online means it has asked for work, which is what clients are told.
    wait_for(lambda: broker.get("/stats?model=echo", headers=broker.worker).json()["models"]["echo"]
             ["workers_online"] >= 1, timeout=30, what="the echo worker counted online")
    yield "echo"
    worker.stop(timeout=30)


@pytest.fixture(scope="session")
def keyed_broker(start_broker):
    """A broker whose client routes need CLIENT_KEY."""
    return start_broker({"BROKER_CLIENT_KEYS": CLIENT_KEY})


@pytest.fixture
def dead_url() -> str:
    """A broker URL where nothing listens (a port the OS just handed out and took back)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api"


CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (scripts/setup installs requirements-dev.txt)"
    if not Path(CHROMIUM).exists():
        return f"Chromium is not installed at {CHROMIUM} (scripts/setup --browser installs it as root)"
    return None


@pytest.fixture(scope="session")
def chromium():
    reason = missing_browser()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()
