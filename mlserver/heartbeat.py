"""Keeps the leases of in-hand tasks alive while they wait or run, and learns of cancellations."""

from __future__ import annotations

import logging
import threading
import time

from .broker_api import BrokerClient, Cancelled, LeaseLost, Refused, Unavailable
from .stats import Stats
from .tasks import Ledger, Task
from .threadnames import name_os_thread

log = logging.getLogger("mlserver.heartbeat")
RETRY_SOON = 1.0  # after a failed renewal; half a lease is left, so a few tries fit


class Heartbeat(threading.Thread):
    def __init__(self, client: BrokerClient, ledger: Ledger, stats: Stats, lease_seconds: int) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.client, self.ledger, self.stats = client, ledger, stats
        self.tick = min(1.0, lease_seconds / 10)
        self.halt = threading.Event()

    def run(self) -> None:
        name_os_thread()
        while not self.halt.wait(self.tick):
            now = time.monotonic()
            for task in self.ledger.held():
                if task.renew_at <= now and not (task.cancelled or task.lease_lost):
                    self.renew(task)

    def renew(self, task: Task) -> None:
        # A report holds the lock while it uses the token; it ends the lease anyway, so skip.
        if not task.lock.acquire(blocking=False):
            return
        try:
            answer = self.client.extend(task.task_id, task.lease, task.lease_seconds)
            task.lease = answer["lease"]
            task.result_upload_url = answer.get("result_upload_url") or task.result_upload_url
            task.schedule_renewal()
            self.stats.renewal("renewed")
        except Cancelled as exc:
            task.cancelled = True
            self.ledger.remove(task)
            self.stats.count("cancelled")
            self.stats.renewal("cancelled")
            log.info("task %s ended without this worker (%s); dropping it", task.task_id, exc)
        except Unavailable as exc:
            task.renew_at = time.monotonic() + RETRY_SOON
            self.stats.renewal("failed")
            log.warning("could not renew the lease of task %s: %s", task.task_id, exc)
        except (LeaseLost, Refused) as exc:
            # Keep working: a put after a lost lease is still accepted if no other attempt committed.
            task.lease_lost = True
            self.stats.renewal("lost")
            log.warning("lost the lease of task %s: %s", task.task_id, exc)
        except Exception:  # noqa: BLE001 - one odd answer must not end the heartbeat for every task
            task.renew_at = time.monotonic() + RETRY_SOON
            log.exception("unexpected error renewing the lease of task %s", task.task_id)
        finally:
            task.lock.release()
