"""The timer function that deletes results past BROKER_RESULT_TTL_SECONDS and their leftovers.

Each run deletes at most BROKER_CLEANUP_BATCH tasks; what it does not reach (or an interrupted
run leaves) the next run takes up, since it starts from what is still in the outbox.
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
    deleted = await get_store(load()).cleanup()
    if deleted:
        log.info("cleanup deleted %d expired tasks", deleted)
