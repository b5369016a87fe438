"""The Celery app the peer reference's worker serves (`celery -A bench.celery_app worker`): one echo
task, the same work as the broker's echo handler."""

from __future__ import annotations

import os

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(task_default_queue="bench", worker_prefetch_multiplier=1, result_expires=600,
                broker_connection_retry_on_startup=True, task_serializer="json", result_serializer="json")


@app.task(name="bench.echo")
def echo(payload: str) -> str:
    return payload
