"""Leases, cancellation, shutdown and broker outages, with the echo handler's simulated work."""

from __future__ import annotations

import json
import signal

from tests.support.polling import wait_for

from .conftest import mlserver_lines, result, run_mlserver


def sleeping(ms: int) -> dict:
    return {"params": json.dumps({"sleep_ms": ms})}


def test_heartbeat_keeps_a_slow_task_from_being_redelivered(broker, model, start_worker):
    task_id = broker.submit(model, b"slow", params=sleeping(12_000))
    start_worker(model, "--handler", "echo", "--batch", "1", "--lease", "5")
    wait_for(lambda: broker.status(task_id)["status"] == "running", what="the worker to claim the task")
    # Without renewals the 5 s lease would run out and this claim would get the task (attempt 2).
    assert broker.claim(model, wait=14) == []
    response = result(broker, task_id)
    assert response.status_code == 200 and response.content == b"slow"
    assert broker.status(task_id)["attempts"] == 1


def test_cancel_reaches_a_running_task(broker, model, start_worker):
    task_id = broker.submit(model, b"doomed", params=sleeping(12_000))
    worker = start_worker(model, "--handler", "echo", "--batch", "1", "--lease", "5")
    wait_for(lambda: broker.status(task_id)["status"] == "running", what="the worker to claim the task")
    assert broker.post(f"/cancel?task_id={task_id}").status_code == 200
    # The heartbeat (every 2.5 s) learns of it while the 12 s of work is still going on; the put at
    # the end would log "its outcome was not kept" instead.
    wait_for(lambda: f"task {task_id} ended without this worker (extendlease answered 410: the task was cancelled); "
                     "dropping it" in worker.log_text(), timeout=10, what="the heartbeat's 410")
    follower = broker.submit(model, b"next")
    assert result(broker, follower).content == b"next"
    assert broker.status(task_id)["status"] == "cancelled"
    assert "cancelled 1" in worker.log_text()


def test_sigterm_finishes_the_running_batch_gives_back_the_rest_and_exits_0(broker, model, start_worker):
    ids = [broker.submit(model, f"task {i}".encode(), params=sleeping(4_000)) for i in range(6)]
    worker = start_worker(model, "--handler", "echo", "--batch", "2")
    # Two tasks run, two more are claimed and decoded ahead of them; two stay in the queue.
    wait_for(lambda: sum(broker.status(t)["status"] == "running" for t in ids) == 4, timeout=30,
             what="a running batch and a prefetched one")
    worker.send(signal.SIGTERM)
    assert worker.proc.wait(30) == 0, worker.log_text()

    statuses = [broker.status(t) for t in ids]
    assert [s["status"] for s in statuses].count("succeeded") == 2, statuses
    assert [s["status"] for s in statuses].count("queued") == 4, statuses
    given_back = [t for t in broker.claim(model, max_tasks=6, wait=5) if t["task_id"] in ids]
    assert len(given_back) == 4 and all(t["attempt"] == 1 for t in given_back)
    assert "gave back 2" in worker.log_text()


def test_broker_down_at_start_and_mid_run_the_worker_waits_and_resumes(broker, start_broker, model, start_worker):
    # A second dev host on the same storage: tasks submitted through the main one reach it.
    flaky = start_broker()
    flaky.host.stop()
    worker = start_worker(model, "--handler", "echo", "--batch", "4", via=flaky)
    first = broker.submit(model, b"before")
    wait_for(lambda: "retrying in" in worker.log_text(), what="the worker to notice the broker is down")
    flaky.host.start()
    assert result(broker, first).content == b"before"
    assert worker.alive()

    flaky.host.stop()
    wait_for(lambda: worker.log_text().count("retrying in") >= 2, what="the worker to notice the second outage")
    second = broker.submit(model, b"after")
    flaky.host.start()
    assert result(broker, second).content == b"after"
    assert worker.alive() and "Traceback" not in worker.log_text()


def test_a_wrong_worker_key_stops_the_worker_with_one_line(broker, model):
    done = run_mlserver("--model", model, "--handler", "echo",
                        env={"BROKER_URL": broker.url, "BROKER_WORKER_KEY": "not-the-key"}, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert mlserver_lines(done) == [
        "mlserver: the broker refused this worker: getnexttask answered 401: "
        f"{broker.get('/getnexttask?model=x', headers={'Authorization': 'Bearer nope'}).json()['error']}"
        " (check BROKER_WORKER_KEY)"]


def test_a_netrc_entry_does_not_replace_the_worker_key(broker, model, start_worker, tmp_path):
    # requests, left to itself, sends a matching ~/.netrc entry's credentials instead of the key
    # (a `default` entry matches every host): the worker would stop at its first claim with a 401.
    netrc = tmp_path / "netrc"
    netrc.write_text("default login someone password elsewhere\n")
    netrc.chmod(0o600)
    start_worker(model, "--handler", "echo", env={"NETRC": str(netrc)})
    assert result(broker, broker.submit(model, b"hello")).content == b"hello"


def test_a_second_signal_quits_even_while_results_wait_for_a_broker_that_is_gone(broker, start_broker, model,
                                                                                  start_worker):
    flaky = start_broker()
    task_id = flaky.submit(model, b"stranded", params=sleeping(6_000))
    worker = start_worker(model, "--handler", "echo", "--batch", "1", via=flaky)
    wait_for(lambda: broker.status(task_id)["status"] == "running", what="the worker to claim the task")
    worker.send(signal.SIGSTOP)  # held still, so that its put cannot come before the broker is gone
    try:
        flaky.host.stop()
    finally:
        worker.send(signal.SIGCONT)
    wait_for(lambda: f"task {task_id}: the broker" in worker.log_text(), what="the put to fail and be retried")
    worker.send(signal.SIGTERM)
    wait_for(lambda: "SIGTERM: stopping" in worker.log_text(), what="the first signal")
    assert worker.alive()  # still trying to deliver the result
    worker.send(signal.SIGTERM)
    assert worker.proc.wait(30) == 0, worker.log_text()
    assert "gave up on the broker while quitting" in worker.log_text()


def test_a_put_the_broker_keeps_failing_is_given_up_and_the_task_runs_again(broker, model, start_worker):
    """A front end answering every put 500 (as Azure did for oversized metadata): the worker says so and
    moves on instead of holding the task forever; its lease runs out and the next attempt delivers."""
    from tests.conftest import Broker
    from tests.support.recording_proxy import RecordingProxy

    with RecordingProxy(broker.url) as proxy:
        proxy.fault = lambda method, path: ((500, {"error": "the broker hit an unexpected error; it has been logged"})
                                            if path.endswith("/puttaskresult") else None)
        via = Broker(proxy.url, broker.host, broker.worker_key)
        worker = start_worker(model, "--handler", "echo", "--batch", "1", "--lease", "5", via=via)
        task_id = broker.submit(model, b"stuck")
        wait_for(lambda: f"task {task_id}: gave up putting its outcome (done) after 4 tries" in worker.log_text(),
                 timeout=60, what="the worker to give up the put")
        assert worker.alive()
        proxy.fault = None
        response = result(broker, task_id)
        assert response.status_code == 200 and response.content == b"stuck"
        assert broker.status(task_id)["attempts"] >= 2  # delivered again after the given-up put
