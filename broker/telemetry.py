"""Traces, one operation per task: when APPLICATIONINSIGHTS_CONNECTION_STRING is set, every step of a
task (submit, claim, heartbeat, put, result) is a span in a trace whose id IS the task id, sent
with the Azure Monitor OpenTelemetry distro. In Application Insights the trace id is the
`operation_Id`, so "where did my task spend its time" is one query:

    union requests, dependencies, traces | where operation_Id == "<task_id>" | order by timestamp asc

(the storage calls each step made show up under it as dependencies: rest.py's client spans for
the calls on a task's path, the Azure SDK's own instrumentation for the rest). Without the setting
nothing is configured and the spans are OpenTelemetry's no-op ones: no cost, no dependency on the
exporter being reachable. Logging goes through the Functions host as before either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

log = logging.getLogger("broker.telemetry")
_configured = False
_lock = threading.Lock()


def configure() -> None:
    """Set up the exporter once per process, if the app has an Application Insights connection string."""
    global _configured
    if _configured:
        return
    with _lock:
        if _configured:
            return
        _configured = True
        connection = os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "").strip()
        if not connection:
            return
        try:
            from azure.monitor.opentelemetry import configure_azure_monitor

            # Sampled by trace id, so a task's steps are kept or dropped together, on every instance (the
            # distro's default, a rate-limited sampler, keeps steps of a task independently). All of them
            # unless the operator sets OTEL_TRACES_SAMPLER (and _ARG) as the distro documents.
            sampling = {} if os.environ.get("OTEL_TRACES_SAMPLER") else {"sampling_ratio": 1.0}
            configure_azure_monitor(connection_string=connection, logger_name="broker",
                                    instrumentation_options={"azure_sdk": {"enabled": True}}, **sampling)
        except Exception as exc:  # noqa: BLE001 - telemetry must never stop the broker serving
            log.warning("Application Insights is not set up (%s: %s); the broker runs without traces",
                        type(exc).__name__, exc)


def _task_context(task_id: str):
    """A context whose parent is the task's trace: trace id = the task id (32 hex digits, 128 bits)."""
    parent = SpanContext(trace_id=int(task_id, 16), span_id=random.getrandbits(64) or 1, is_remote=True,
                         trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(parent))


@contextlib.contextmanager
def task_span(name: str, task_id: str, **attributes):
    """A span named `name` in the trace of task `task_id`; the attributes go with it (None ones left out)."""
    tracer = trace.get_tracer("broker")
    attributes = {f"broker.{k}": v for k, v in attributes.items() if v is not None}
    with tracer.start_as_current_span(name, context=_task_context(task_id), kind=SpanKind.SERVER,
                                      attributes={"broker.task_id": task_id, **attributes}) as span:
        yield span


def finished(name: str, task_id: str, began_ns: int, **attributes) -> None:
    """A step that began at `began_ns` (time.time_ns()) before its task id was known (a submit, a
    claim) and has just ended: a span over that time in the task's trace."""
    tracer = trace.get_tracer("broker")
    attributes = {f"broker.{k}": v for k, v in attributes.items() if v is not None}
    span = tracer.start_span(name, context=_task_context(task_id), kind=SpanKind.SERVER, start_time=began_ns,
                             attributes={"broker.task_id": task_id, **attributes})
    span.end()
