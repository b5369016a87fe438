"""The timer function: deletes results past BROKER_RESULT_TTL_SECONDS and their leftovers, expires
tasks nobody started within BROKER_QUEUED_TTL_SECONDS (deleting their payloads), drops uploads never
committed, and deletes uploaded payloads and results that no task reads any more.

Each run handles at most BROKER_CLEANUP_BATCH tasks of each kind; what it does not reach (or an
interrupted run leaves) the next run takes up, since it starts from what is still in storage.
"""

from __future__ import annotations

import logging

import azure.functions as func

from .settings import load
from .store import get_store

bp = func.Blueprint()
log = logging.getLogger("broker.cleanup")

SCHEDULE = "0 */5 * * * *"  # every five minutes (NCRONTAB, with seconds)


@bp.timer_trigger(arg_name="timer", schedule=SCHEDULE, run_on_startup=False, use_monitor=True)
async def cleanup(timer: func.TimerRequest) -> None:
    store = get_store(load())
    deleted = await _run(store.cleanup)
    expired = await _run(store.sweep)
    uploads = await _run(store.sweep_uploads)
    await _run(store.limits.sweep)
    await _run(store.presence.sweep)
    if deleted or expired or uploads:
        log.info("cleanup deleted %d results past their TTL, expired %d tasks nobody started (or uploads never "
                 "committed) and deleted %d uploads no task reads", deleted, expired, uploads)


async def _run(part) -> int:
    """One part of the run; a part that fails (storage away) does not keep the others from running."""
    try:
        return await part()
    except Exception as exc:  # noqa: BLE001 - the next run (five minutes on) tries again
        log.warning("cleanup: %s failed (%s: %s); the next run tries again", part.__name__, type(exc).__name__, exc)
        return 0
