"""Webhooks: the broker tells a URL of the client's choosing when its task starts, progresses and
completes, so nobody has to poll.

- A submit names `webhook` and `webhook_events` (`started`, `progress`, `completed`; default
  `completed`). Where it may point, destinations.py decides. The Hook (with the broker's base URL,
  for the links the events carry, and the task's submission time, so a later task under the same
  id never inherits it) is kept in the task's blob in the `hooks` container, beside its Report,
  not in the inbox metadata, whose 8 KB the submission and lease state need; the submission only
  says that it has one (Submission.hooked).
- Each event is a message in the `webhooks` queue (HookEvent): what to POST - the task's status
  document as it was when the event happened, with `event` and its links -, where, and the event's
  id, the same on every try. The queue-triggered function in delivery.py makes the POST and, on a
  non-2xx answer, a timeout or a connection error, queues the next try with an exponential delay,
  up to BROKER_WEBHOOK_TRIES tries.
- `completed` is not lost to an instance dying between writing a task's outcome and queueing the
  event: before the outcome is written, a backstop message is queued, visible BACKSTOP seconds
  later; it delivers the event (rendered then, from the outcome) only if no try of it was made.
  `started` and `progress` are queued after their state is written, best effort.
- What deliveries did is kept in the same blob (Report, in its metadata), which the status document
  shows as `webhook`; the blob goes when the task's result does.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from urllib.parse import urljoin

from .records import _dump, _known
from .storage import Storage

log = logging.getLogger("broker.webhooks")

EVENTS = ("started", "progress", "completed")
DEFAULT_EVENTS = ("completed",)
BACKSTOP = 60  # seconds after a task's end its backstop `completed` message shows up
PROGRESS_EVERY = 1.0  # seconds between two `progress` events of one task, at least
REPORT_TRIES = 5  # a report write that meets a concurrent one reads again, this many times
MAX_BASE_BYTES = 512  # a longer base URL (it comes from the request's Host) is not kept: events carry no links


@dataclass(frozen=True)
class Hook:
    """Where a task's events go, which ones, and the broker's base URL (for the links they carry)."""

    url: str
    events: tuple[str, ...] = DEFAULT_EVENTS
    base: str = ""

    def wants(self, event: str) -> bool:
        return event in self.events

    def record(self) -> dict:
        return {"url": self.url, "events": list(self.events), "base": self.base}

    @classmethod
    def from_record(cls, raw) -> Hook | None:
        if not isinstance(raw, dict):
            return None
        return cls(str(raw["url"]), tuple(raw.get("events") or DEFAULT_EVENTS), str(raw.get("base") or ""))


def event_id(task_id: str, created: float, event: str, nth: float | int = 0) -> str:
    """An event's id, the same on every try (and for the backstop of `completed`): derived from the
    task, its submission, the event and which one of its kind it is."""
    digest = hashlib.sha256(f"{task_id}:{created!r}:{event}:{nth!r}".encode()).hexdigest()[:24]
    return f"evt_{digest}"


@dataclass(frozen=True)
class HookEvent:
    """One event to deliver: the queue message. `body` None (a backstop) means render it from the
    task's outcome when delivered, if the task has one and no try was made."""

    task_id: str
    created: float  # the task's submission time
    event: str
    id: str
    url: str
    attempt: int = 1
    body: str | None = None
    backstop: bool = False
    base: str = ""  # the broker's base URL, for the links a backstop's body carries

    def dump(self) -> str:
        return _dump(asdict(self))

    def next_try(self, body: str) -> HookEvent:
        return replace(self, attempt=self.attempt + 1, body=body, backstop=False)

    @classmethod
    def parse(cls, text: str) -> HookEvent | None:
        try:
            raw = json.loads(text)
            event = cls(**_known(cls, raw))
        except (ValueError, TypeError):
            return None
        if event.event not in EVENTS or not isinstance(event.attempt, int) or not isinstance(event.url, str):
            return None
        return event


@dataclass(frozen=True)
class Report:
    """What the deliveries of a task's events did (the status document's `webhook`), and how far the
    `completed` event got: tries made, and whether one was answered 2xx."""

    deliveries: int = 0
    last_status: int | None = None
    last_error: str | None = None
    completed_tries: int = 0
    completed_delivered: bool = False

    def shown(self) -> dict:
        return {"deliveries": self.deliveries, "last_status": self.last_status, "last_error": self.last_error}

    def metadata(self) -> dict:
        return {"report": _dump(asdict(self))}

    @classmethod
    def from_metadata(cls, metadata: dict) -> Report:
        raw = metadata.get("report")
        return cls(**_known(cls, json.loads(raw))) if raw else cls()


def body(hook: Hook, event: str, document: dict) -> str:
    """What a delivery POSTs: the task's status document, the event, and the task's links."""
    task_id = document["task_id"]
    links = {"status_url": urljoin(hook.base, f"status?task_id={task_id}"),
             "result_url": urljoin(hook.base, f"getresult?task_id={task_id}")} if hook.base else {}
    return json.dumps({"event": event, **document, **links}, separators=(",", ":"))


class Webhooks:
    """The sending side the store uses: queue events, and read and write the per-task Report."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def send(self, hook: Hook, task_id: str, created: float, event: str, nth: float | int, document: dict) -> None:
        """Queue one event for delivery now."""
        message = HookEvent(task_id, created, event, event_id(task_id, created, event, nth), hook.url,
                            body=body(hook, event, document))
        await self.storage.webhooks.send(message.dump())

    async def best_effort(self, hook: Hook, task_id: str, created: float, event: str, nth: float | int,
                          document: dict) -> None:
        """`started` and `progress`: queued if storage takes it; the task goes on either way."""
        try:
            await self.send(hook, task_id, created, event, nth, document)
        except Exception as exc:  # noqa: BLE001
            log.warning("task %s: its %s webhook event could not be queued (%s)", task_id, event, type(exc).__name__)

    async def backstop(self, hook: Hook, task_id: str, created: float) -> None:
        """Before a task's outcome is written: the `completed` event, should nothing else deliver it."""
        message = HookEvent(task_id, created, "completed", event_id(task_id, created, "completed"), hook.url,
                            backstop=True, base=hook.base)
        await self.storage.webhooks.send(message.dump(), delay=BACKSTOP)

    async def attach(self, task_id: str, created: float, hook: Hook) -> None:
        """Keep the webhook of the task submitted at `created` (kept if there already; one an earlier
        task under the same id left is replaced)."""
        await self.storage.ensure_containers()
        base = hook.base if len(hook.base.encode()) <= MAX_BASE_BYTES else ""
        metadata = {"hook": _dump({**hook.record(), "base": base, "created": created})}
        if await self.storage.hooks.create(task_id, b"", metadata, "application/octet-stream"):
            return
        found = await self.storage.hooks.head(task_id)
        if found is None or _created(found.metadata) != created:
            await self.storage.hooks.put(task_id, b"", metadata, "application/octet-stream")

    async def hook(self, task_id: str, created: float) -> Hook | None:
        """The webhook of the task submitted at `created`, if it has one."""
        found = await self._kept(task_id, created)
        return Hook.from_record(json.loads(found.metadata["hook"])) if found is not None else None

    async def _kept(self, task_id: str, created: float):
        """The `hooks` blob of the task submitted at `created`; None if there is none (the task's
        result expired and took it, or a later task under the same id has its own)."""
        await self.storage.ensure_containers()
        found = await self.storage.hooks.head(task_id)
        return found if found is not None and _created(found.metadata) == created else None

    async def report(self, task_id: str, created: float) -> Report | None:
        """What the deliveries of the task submitted at `created` did; None: it keeps no webhook."""
        found = await self._kept(task_id, created)
        return Report.from_metadata(found.metadata) if found is not None else None

    async def record(self, task_id: str, created: float, change) -> Report | None:
        """Apply `change(report) -> report` to the task's Report, written only over what was read;
        None (nothing written) when the task keeps no webhook any more."""
        for _ in range(REPORT_TRIES):
            found = await self._kept(task_id, created)
            if found is None:
                return None
            updated = change(Report.from_metadata(found.metadata))
            if await self.storage.hooks.set_metadata(task_id, {**found.metadata, **updated.metadata()},
                                                     found.etag) is not None:
                return updated
        raise RuntimeError(f"task {task_id}: its webhook report kept changing under this write")

    async def forget(self, task_id: str, created: float) -> None:
        """Delete the webhook of the task submitted at `created` (not a later task's under its id)."""
        found = await self._kept(task_id, created)
        if found is not None:
            await self.storage.hooks.delete(task_id, found.etag)


def _created(metadata: dict) -> float | None:
    """The submission time of the task whose webhook a `hooks` blob keeps (None: it keeps none)."""
    try:
        return json.loads(metadata["hook"])["created"]
    except (KeyError, ValueError, TypeError):
        return None
