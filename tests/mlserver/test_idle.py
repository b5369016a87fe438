"""An idle worker holds no Functions execution open: it watches storage (the model's signal blob) and
only calls the broker when a task is queued, or for its rare periodic look."""

from __future__ import annotations

import re
import time

import pytest

from tests.support.polling import wait_for
from tests.support.storage_proxy import StorageProxy

from .conftest import FAST, result

CLAIM = re.compile(r"Executed 'Functions\.getnexttask' \(\w+, Id=[0-9a-f-]+, Duration=(\d+)ms\)")
LONG_POLL_MS = 1000 * int(FAST[FAST.index("--wait") + 1])  # an empty long-poll lasts at least this long


@pytest.fixture(scope="module")
def broker(start_broker):
    """A dev host of this module's own: every claim in its log is these tests' workers' (a claim's log
    line names no model, and the main broker's session-long echo worker claims once a minute asleep)."""
    own = start_broker()
    yield own
    own.host.stop()


def fell_asleep(broker, worker, since: int) -> int:
    """Wait until `worker` has fallen asleep and made the claim with wait=0 that closes the gap (the
    first claim shorter than a long-poll); the broker log's length just after that claim's line.
    `since`: the broker log's length before the worker started (earlier claims are not its)."""
    wait_for(lambda: "watching storage instead of long-polling" in worker.log_text(), timeout=30,
             what="the worker falling asleep")
    ends = []

    def gap_claim() -> bool:
        log = broker.host.log_text()
        ends[:] = [m.end() for m in CLAIM.finditer(log, since) if int(m.group(1)) < LONG_POLL_MS][:1]
        return bool(ends)

    wait_for(gap_claim, timeout=30, what="the claim that closes the gap as the worker falls asleep")
    return ends[0]


def test_an_idle_worker_stops_long_polling_and_wakes_when_a_task_comes(broker, model, start_worker):
    since = len(broker.host.log_text())
    worker = start_worker(model, "--handler", "echo", "--idle-after", "2", "--watch-interval", "0.2",
                          "--idle-check", "600")
    before = fell_asleep(broker, worker, since)
    time.sleep(3)
    asleep = CLAIM.findall(broker.host.log_text()[before:])
    assert asleep == [], asleep  # three seconds idle, no claim at all (a long-poll would be one every 2 s)

    task_id = broker.submit(model, b"wake up", "text/plain")
    answer = result(broker, task_id, timeout=30)
    assert answer.status_code == 200 and answer.content == b"wake up"
    assert CLAIM.findall(broker.host.log_text()[before:])  # woken, it claimed

    # Taking work keeps it awake (long-polling) for --idle-after again, then it sleeps again.
    wait_for(lambda: worker.log_text().count("watching storage instead of long-polling") >= 2, timeout=30,
             what="the worker falling asleep again")
    second = broker.submit(model, b"again", "text/plain")
    assert result(broker, second, timeout=30).content == b"again"


def test_a_worker_that_cannot_watch_long_polls_as_before(broker, model, start_worker):
    """The signal blob unreachable (storage not reachable from the worker): it says so and long-polls."""
    proxy = StorageProxy(refuse=lambda method, url: "/signals/" in url)
    try:
        worker = start_worker(model, "--handler", "echo", "--idle-after", "1", "--watch-interval", "0.05",
                              env={"HTTP_PROXY": proxy.url})
        wait_for(lambda: "long-polling instead" in worker.log_text(), timeout=60, what="the worker giving up watching")
        task_id = broker.submit(model, b"still served", "text/plain")
        assert result(broker, task_id, timeout=30).content == b"still served"
    finally:
        proxy.close()


def test_a_signal_blob_that_goes_away_is_made_again_without_a_claim_each_look(azurite, broker, model, start_worker):
    """A lifecycle rule may delete an idle model's signal blob: the worker asks for it again (the broker
    makes it anew) instead of taking every failed look for a new sleep and claiming each time."""
    from azure.storage.blob import BlobClient

    since = len(broker.host.log_text())
    worker = start_worker(model, "--handler", "echo", "--idle-after", "1", "--watch-interval", "0.1",
                          "--idle-check", "600")
    before = fell_asleep(broker, worker, since)
    BlobClient.from_connection_string(azurite.connection_string, "signals", model).delete_blob()
    time.sleep(5)
    log = broker.host.log_text()[before:]
    assert len(CLAIM.findall(log)) <= 2, log  # the wake-up the new blob's etag causes, not one per look
    assert "Executed 'Functions.watch'" in log
    task_id = broker.submit(model, b"still watched", "text/plain")
    assert result(broker, task_id, timeout=30).content == b"still watched"
