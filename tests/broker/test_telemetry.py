"""Traces, one operation per task: with APPLICATIONINSIGHTS_CONNECTION_STRING set, the broker sends
each step of a task (submit, claim, put, result) as telemetry whose operation id is the task id,
through the Azure Monitor OpenTelemetry distro, to an ingestion endpoint on 127.0.0.1 that keeps
what arrives (tests/support/ingestion.py)."""

from __future__ import annotations

import pytest

from tests.support.ingestion import Ingestion
from tests.support.polling import wait_for


@pytest.fixture(scope="module")
def traced(start_broker):
    ingestion = Ingestion()
    broker = start_broker({"APPLICATIONINSIGHTS_CONNECTION_STRING": ingestion.connection_string,
                           "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true", "OTEL_BSP_SCHEDULE_DELAY": "200"})
    yield broker, ingestion
    ingestion.close()


def test_every_step_of_a_task_is_one_operation_named_by_its_task_id(traced, model):
    broker, ingestion = traced
    task_id = broker.submit(model, b"traced payload", "text/plain")
    [task] = broker.claim(model)
    assert broker.put(task, b"traced result").status_code == 200
    assert broker.get(f"/getresult?task_id={task_id}").content == b"traced result"
    steps = {"predict", "getnexttask", "puttaskresult", "getresult"}

    def seen():
        names = {name for kind, name in ingestion.operations().get(task_id, []) if kind == "RequestData"}
        return steps <= names and names

    names = wait_for(seen, timeout=30, what="the task's four steps in the telemetry")
    assert steps <= names
    items = ingestion.operations()[task_id]
    assert any(kind == "RemoteDependencyData" for kind, _ in items)  # the storage calls the steps made
    other = broker.submit(model, b"another task")
    wait_for(lambda: other in ingestion.operations(), timeout=30, what="the second task's submit")
    assert not set(ingestion.operations()[other]) & {("RequestData", "puttaskresult")}  # its own operation


def test_without_a_connection_string_nothing_is_sent(broker, model):
    """The main test broker has no Application Insights setting: the same routes work, no exporter runs."""
    task_id = broker.submit(model, b"untraced")
    assert broker.status(task_id)["status"] == "queued"
    assert "azure.monitor" not in broker.host.log_text()
