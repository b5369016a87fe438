"""The queue-triggered function that delivers webhook events (webhooks.py queues them).

One message is one try of one event:
- an event whose `completed` was delivered (or given up) already, or a backstop whose event was
  tried already, is dropped; a backstop renders its body now, from the task's outcome (no outcome:
  the event never happened, and the end that writes one queues its own);
- the POST is signed as the Standard Webhooks specification says: `webhook-id` (the event's, the
  same on every try), `webhook-timestamp` (this try's, in seconds), `webhook-signature: v1,<base64
  HMAC-SHA256 of "<id>.<timestamp>.<body>">` keyed with BROKER_WEBHOOK_SECRET's bytes;
- it goes only where destinations.py allows (checked again as it connects), follows no redirect,
  and must be answered within BROKER_WEBHOOK_TIMEOUT_SECONDS; the answer's body is not read;
- a 2xx answer delivers the event; anything else (another status, a timeout, a refused or failed
  connection) queues the next try, BROKER_WEBHOOK_BACKOFF_SECONDS * 2^(try-1) later (a day at
  most), up to BROKER_WEBHOOK_TRIES tries; a `progress` event is tried once (a later one
  supersedes it). The next try is queued before the report is written, and a report that cannot
  be written is logged, not raised: a failure there loses a line of the report, never a try, and
  never makes a second chain of tries;
- an event of a task that keeps no webhook any more (its result expired, or a later task under
  the same Idempotency-Key has the id) is dropped.

A storage error raises, and the Functions host hands the message over again (host.json's
visibilityTimeout later, up to maxDequeueCount times, then to the `webhooks-poison` queue).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time

import aiohttp
import azure.functions as func

from . import destinations
from .settings import Settings, load
from .storage import WEBHOOK_QUEUE
from .store import TaskStore, get_store
from .webhooks import Hook, HookEvent, Report, body

bp = func.Blueprint()
log = logging.getLogger("broker.delivery")

USER_AGENT = "ml-broker-webhooks/1"
MAX_DELAY = 86400  # seconds between two tries at most (a queue message may wait 7 days at most)
CONNECT_SECONDS = 5.0  # a receiver's TCP and TLS handshake within this, whatever the answer's timeout


def sign(key: bytes, event_id: str, timestamp: int, payload: bytes) -> str:
    """The `webhook-signature` header value (Standard Webhooks, v1: HMAC-SHA256)."""
    mac = hmac.new(key, f"{event_id}.{timestamp}.".encode() + payload, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def backoff(attempt: int, base: int) -> float:
    """Seconds between try `attempt` and the next: base, 2 base, 4 base, ... (a day at most)."""
    return min(base * 2 ** (attempt - 1), MAX_DELAY)


class Courier:
    """Makes the POSTs: one HTTP session per event loop, whose connections go only where allowed."""

    def __init__(self, allow: tuple[str, ...]) -> None:
        self.allow = allow
        self.session: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            connector = aiohttp.TCPConnector(resolver=destinations.GuardedResolver(self.allow), limit=64,
                                             use_dns_cache=False)
            self.session = aiohttp.ClientSession(connector=connector, trust_env=False,
                                                 headers={"User-Agent": USER_AGENT})
        return self.session

    async def post(self, url: str, payload: bytes, headers: dict, timeout: float) -> tuple[int | None, str | None]:
        """(status, error): the answer's status, and why the try failed (None: a 2xx answer)."""
        refused = destinations.refused_literal(url, self.allow)
        if refused:
            return None, refused
        try:
            async with self._session().post(url, data=payload, headers=headers, allow_redirects=False,
                                            timeout=aiohttp.ClientTimeout(total=timeout,
                                                                          sock_connect=min(timeout, CONNECT_SECONDS))) as answer:
                status = answer.status
        except TimeoutError:
            return None, f"no answer within {timeout:g} seconds"
        except (aiohttp.ClientError, OSError) as exc:
            return None, f"could not connect: {_reason(exc)}"
        return status, None if 200 <= status < 300 else f"answered HTTP {status}"


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "os_error", None) or exc) or type(exc).__name__
    return " ".join(text.split())[:200]


_couriers: dict = {}


def courier(settings: Settings) -> Courier:
    key = (asyncio.get_running_loop(), settings.webhook_allow)
    if key not in _couriers:
        _couriers[key] = Courier(settings.webhook_allow)
    return _couriers[key]


async def deliver(store: TaskStore, settings: Settings, event: HookEvent, now=time.time) -> Report | None:
    """Make one try of `event`; the task's report after it (None: nothing to do)."""
    webhooks = store.webhooks
    report = await webhooks.report(event.task_id, event.created)
    if report is None:
        return None
    if event.event == "completed" and (report.completed_delivered or report.completed_tries >= settings.webhook_tries
                                       or (event.backstop and report.completed_tries)):
        return None
    payload = event.body
    if payload is None:  # a backstop: the outcome says what to send, if the task has one
        try:
            task = await store.status(event.task_id)
        except Exception as exc:  # noqa: BLE001 - gone (its result expired) or unreadable: nothing to send
            log.info("task %s: no completed event to back up (%s)", event.task_id, type(exc).__name__)
            return None
        if not task.finished or task.created != event.created:
            return None
        payload = body(Hook(event.url, base=event.base), "completed", task.document())
    key = settings.webhook_key
    if key is None:
        log.warning("task %s: its %s event is dropped: BROKER_WEBHOOK_SECRET is no longer set", event.task_id, event.event)
        return None
    data = payload.encode()
    timestamp = int(now())
    headers = {"Content-Type": "application/json", "webhook-id": event.id, "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(key, event.id, timestamp, data)}
    status, error = await courier(settings).post(event.url, data, headers, settings.webhook_timeout_seconds)
    if error is not None and event.attempt < settings.webhook_tries and event.event != "progress":
        await store.storage.webhooks.send(event.next_try(payload).dump(),
                                          delay=backoff(event.attempt, settings.webhook_backoff_seconds))
    if error is not None:
        log.info("task %s: %s event, try %d of %d: %s", event.task_id, event.event, event.attempt,
                 settings.webhook_tries, error)

    def tried(report: Report) -> Report:
        completed = event.event == "completed"
        return Report(report.deliveries + 1, status, error,
                      max(report.completed_tries, event.attempt) if completed else report.completed_tries,
                      report.completed_delivered or (completed and error is None))

    try:
        return await webhooks.record(event.task_id, event.created, tried)
    except Exception as exc:  # noqa: BLE001 - raising would have the host run this try again, and fork its retries
        log.warning("task %s: the report of its %s event's try %d could not be written (%s)", event.task_id,
                    event.event, event.attempt, type(exc).__name__)
        return None


@bp.queue_trigger(arg_name="message", queue_name=WEBHOOK_QUEUE, connection="AzureWebJobsStorage")
async def webhooks(message: func.QueueMessage) -> None:
    """Deliver one try of one webhook event."""
    text = message.get_body().decode("utf-8", errors="replace")
    event = HookEvent.parse(text)
    if event is None:
        log.warning("a message in the %s queue is not a webhook event; it is dropped", WEBHOOK_QUEUE)
        return
    settings = load()
    await deliver(get_store(settings), settings, event)
