"""--max-batch-delay-ms against the real broker: a short batch waits for tasks that are arriving and
goes to the model full; a lone task after a quiet spell goes at once. The worker's own Prometheus
figures (mlserver_batch_size) say which batches the model ran."""

from __future__ import annotations

from tests.support.polling import wait_for

from .conftest import result
from .test_metrics import free_port, scrape


def batches(port: int) -> tuple[int, int, int]:
    """(batches the model ran, tasks in them, batches of one)."""
    figures = scrape(port)
    return (int(figures["mlserver_batch_size_count"]), int(figures["mlserver_batch_size_sum"]),
            int(figures['mlserver_batch_size_bucket{le="1.0"}']))


def lone_then_three(broker, model) -> list[str]:
    """One task; once a worker holds it (or is done with it), three more: all four, once done."""
    lone = broker.submit(model, b"lone", "text/plain")
    wait_for(lambda: broker.status(lone)["status"] in ("running", "succeeded"), timeout=30,
             what="the lone task claimed")
    ids = [lone] + [broker.submit(model, f"then {i}".encode(), "text/plain") for i in range(3)]
    for task_id in ids:
        assert result(broker, task_id).status_code == 200
    return ids


def test_a_short_batch_waits_for_arriving_tasks_but_a_lone_one_goes_at_once(broker, model, start_worker):
    port = free_port()
    start_worker(model, "--handler", "echo", "--batch", "4", "--max-batch-delay-ms", "5000",
                 "--metrics-port", str(port))

    # A quiet worker: the lone task runs alone. A worker that waited would still hold it when the three
    # come (within 5 s), and all four would run as one batch.
    lone_then_three(broker, model)
    count, tasks, ones = batches(port)
    assert tasks == 4 and count >= 2 and ones >= 1, scrape(port)

    # A busy one (8 tasks just went through): the lone task's batch waits, and the three join it.
    for task_id in [broker.submit(model, f"busy {i}".encode(), "text/plain") for i in range(8)]:
        assert result(broker, task_id).status_code == 200
    count, tasks, _ = wait_for(lambda: (b := batches(port))[1] == 12 and b, timeout=20, what="the busy tasks counted")
    lone_then_three(broker, model)
    after = wait_for(lambda: (b := batches(port))[1] == 16 and b, timeout=20, what="the last four counted")
    assert after[:2] == (count + 1, 16), (count, after)
