"""The task store: every task operation, as state transitions over the inbox/outbox blobs and a
queue per model (storage.py does the talking to storage).

Semantics (docs/API.md):
- submit = the payload blob, then one queue message (its time-to-live the task's queued TTL); a
  plain submit's message carries a copy of the blob it wrote (records.TaskMessage), so that the
  first claim needs no read: its If-Match write of the lease state proves the copy current;
  an idempotent submit marks in the blob that the message was sent, so a retry with the key sends
  it only if the first submit died before doing so, and a task never has two live messages;
- claim = receive with a visibility timeout (the lease), then write the lease state into the inbox
  blob's metadata with If-Match on its etag. The state names the claim (counted per task) and its
  current pop receipt, and it alone says which token is live: every call with any other token is
  refused before anything is written;
- heartbeat = update the message (a new pop receipt, so a new token), then the state;
- give back / retryable failure = hold the message a few seconds, write the state, then make the
  message visible: the next claim always reads how the last one ended;
- finish = write the outbox blob with If-None-Match: * (the first outcome wins), then delete the
  message and the inbox blob (a plain task's in a batch a moment later: discards.py); a crash in
  between is healed by the next claim or a repeated put;
- a task not started within BROKER_QUEUED_TTL_SECONDS of its submit reads `expired`, and whoever
  meets it next (a claim, a put, a cancel, the sweep) writes that outcome and deletes its payload;
- upload = the inbox blob, empty, with an `upload` record saying until when the client may write
  its payload into `uploads` (records.payload_blob) through a SAS URL; no message, and no task for
  anyone else, until the commit takes a read-only snapshot of what was written, marks it in the
  record and sends the message (as an idempotent submit does: a lost send is taken over);
- a claim hands a large payload (over BROKER_INLINE_BYTES, or uploaded) out as a read URL, and every
  claim a write URL for a large result (records.result_blob); a put of an uploaded result takes a
  snapshot of it and commits that, first outcome winning as ever;
- a task queued (submitted, committed, given back, failed retryably) touches its model's signal
  blob, at most every TOUCH_INTERVAL per instance, so that idle workers watching it wake up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable

from .discards import Discards
from .errors import (
    IdempotencyConflict,
    LeaseLost,
    NotAnUpload,
    NotUploaded,
    RecordUnreadable,
    StorageUnavailable,
    TaskCancelled,
    TaskChanging,
    TaskExpired,
    TaskFinished,
    TaskNotFound,
    UploadLapsed,
    UploadPending,
    UploadTooLarge,
)
from .lease import Lease, receipt_hash
from .limits import Limits
from .looks import Looks
from .presence import Presence
from .recent import SECONDS as RECENT_SECONDS
from .recent import RecentTasks
from .records import (
    MAX_PROGRESS_BYTES,
    Claim,
    Enqueued,
    Grant,
    LeaseState,
    Outcome,
    Renewal,
    Submission,
    Task,
    TaskMessage,
    Upload,
    clip_error,
    deadline_error,
    expiry_error,
    payload_blob,
    result_blob,
    stamp,
    upload_owner,
)
from .result_polls import Durations, Schedule
from .settings import Settings
from .storage import Blob, Message, MessageGone, ReceiptStale, Storage
from .throttle import Throttle
from .wakeups import Wakeups
from .webhooks import PROGRESS_EVERY, Hook, Webhooks

log = logging.getLogger("broker.store")

POLL_FIRST = 0.02  # long-poll backoff: tens of milliseconds, capped at POLL_CAP
POLL_CAP = 0.1
RESULT_POLL_FIRST = 0.05  # getresult?wait= looks for outcomes committed by other instances, from 50 ms ...
RESULT_POLL_CAP = 0.5  # ... growing to half a second
CLEANUP_PARALLEL = 32
SWEEP_PAGE = 1000  # inbox blobs the sweep looks at per listing page
SWEEP_PAGES = 20  # pages per run at most; the next run goes on from there
RELEASE_HOLD = 5  # seconds a freed message stays invisible while its state is written
SEND_TTL_MARGIN = 2  # seconds a task's message outlives the task's queued TTL
CLAIM_TRIES = 3  # a claim's state write that meets a changed blob reads it again, this many times
MAX_STATS_MODELS = 100
JSON = "application/json"
URL_GRACE = 300  # seconds a worker's payload URL outlives the lease it was handed out with
UPLOAD_GRACE = 300  # an upload not committed is swept this long after its URL ran out
SLOWEST_LINK = 1_000_000  # bytes/s: a URL for N bytes lives N / this seconds longer, so that a slow link still finishes
WATCH_SECONDS = 3600  # how long a signal URL handed to an idle worker stays valid
TOUCH_INTERVAL = 0.5  # an instance touches a model's signal blob at most this often
MAX_TOUCHED = 1000  # models whose last touch an instance remembers
# Result types a browser may show in place; any other is served as a download. Results never run
# as active content on the broker's origin (nor, through a download URL, on storage's).
INLINE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "application/json", "text/plain")


def idempotent_id(secret: bytes, scope: str, key: str) -> str:
    """The task id an Idempotency-Key maps to: two submits with one key race for one blob name, and
    nobody without the broker's secret can compute it."""
    digest = hmac.new(secret, f"idempotency\0{scope}\0{key}".encode(), hashlib.sha256).digest()
    return uuid.UUID(bytes=digest[:16], version=4).hex


def submission_digest(model: str, content_type: str, params: dict, payload: bytes | None, size: int = 0,
                      hook: Hook | None = None) -> str:
    """What two submits with one Idempotency-Key must agree on. An upload (payload None) is known by
    its declared size: its bytes are not in the request."""
    content = hashlib.sha256(payload).hexdigest() if payload is not None else f"upload:{size}"
    parts = [model, content_type, params, content] + ([hook.url, list(hook.events)] if hook else [])
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def shown_inline(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() in INLINE_TYPES


def unreadable(exc: BaseException) -> bool:
    """The task's stored record cannot be decoded (not: storage is away, or a request failed)."""
    return isinstance(exc, (KeyError, ValueError, TypeError, RecordUnreadable))


def _with(metadata: dict, **records: str) -> dict:
    """The blob's metadata with some records replaced (set_metadata replaces all of it)."""
    return {**metadata, **records}


class TaskStore:
    def __init__(self, storage: Storage, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.settings = settings
        self.now = clock  # the wall clock every TTL and lease deadline is read from (tests move it)
        self.wakeups = Wakeups()
        self.limits = Limits(storage, clock)  # rate limits, token quotas and revocations (limits.py)
        self.presence = Presence(storage, clock)  # workers online, places in line (presence.py)
        # What this instance queued or ended a moment ago, for waits (recent.py); never trusted longer than a
        # result lives, so a view cannot outlast its task's cleanup.
        self.recent = RecentTasks(min(RECENT_SECONDS, settings.result_ttl_seconds))
        self.webhooks = Webhooks(storage)  # events queued for delivery, and what deliveries did (webhooks.py)
        self.discards = Discards(storage.inbox)  # payloads of ended tasks, deleted in batches (discards.py)
        self.looks = Looks()  # when this instance last looked at each queue, and what it found (looks.py)
        self.durations = Durations()  # how long tasks found done elsewhere took (result_polls.py)
        self._ending: Counter[str] = Counter()  # tasks this instance is writing the outcome of, by writes
        self._touches = Throttle(TOUCH_INTERVAL, self._touch_now, MAX_TOUCHED)  # of each model's signal blob
        self._sweep_from: str | None = None  # where the next inbox sweep goes on
        self._uploads_from: str | None = None  # where the next sweep of `uploads` goes on

    # ---- reading -------------------------------------------------------------------------

    def _open_task(self, task_id: str, inbox: Blob) -> Task:
        sub = Submission.from_metadata(task_id, inbox.metadata)
        state = LeaseState.from_metadata(inbox.metadata)
        ttl = self.settings.queued_ttl_seconds
        return Task(task_id, sub.model, sub.created, sub.digest, state, expires=sub.expires(ttl),
                    expiry_error=expiry_error(ttl, state is not None, sub.deadline, sub.created),
                    upload=Upload.from_metadata(inbox.metadata), owner=sub.owner, deadline=sub.deadline,
                    with_hook=sub.hooked)

    def _queued_task(self, sub: Submission) -> Task:
        """A task just queued, as a read of its inbox blob would find it (no lease state yet; an
        upload's record left out: this view only tells a wait whether to go on)."""
        ttl = self.settings.queued_ttl_seconds
        return Task(sub.task_id, sub.model, sub.created, sub.digest, None, expires=sub.expires(ttl),
                    expiry_error=expiry_error(ttl, False, sub.deadline, sub.created), owner=sub.owner,
                    deadline=sub.deadline, with_hook=sub.hooked)

    def _result_gone(self, outcome: Outcome) -> bool:
        """Past BROKER_RESULT_TTL_SECONDS: the task reads as unknown, whether or not cleanup ran."""
        return outcome.finished + self.settings.result_ttl_seconds <= self.now()

    def _answerable(self, finished: Task, owner: str | None) -> bool:
        """Whether a finished task this instance committed may be answered as a read would: the
        caller's, and its result not past its TTL."""
        return finished.visible_to(owner) and not self._result_gone(finished.outcome)

    def _finished_task(self, task_id: str, out: Blob) -> Task | None:
        """The finished task, or None once its result is past BROKER_RESULT_TTL_SECONDS."""
        outcome = Outcome.from_metadata(out.metadata)
        if self._result_gone(outcome):
            return None
        return Task(task_id, outcome.model, outcome.created, outcome.digest, None, outcome, out.content_type,
                    owner=outcome.owner)

    async def _read_both(self, task_id: str) -> tuple[Blob | None, Blob | None]:
        """(outbox, inbox) blobs of a task, read side by side."""
        out, inbox = await asyncio.gather(self.storage.outbox.head(task_id), self.storage.inbox.head(task_id))
        if out is None and inbox is None:
            # The task may have finished between the two reads (the inbox blob goes only after the
            # outbox blob is written), so look at the outbox once more before calling it unknown.
            out = await self.storage.outbox.head(task_id)
        return out, inbox

    async def _get(self, task_id: str, with_result: bool = False,
                   owner: str | None = None) -> tuple[Task | None, bytes | None]:
        """The task and (with_result) its result's bytes; None for a task nobody knows, or that belongs
        to another owner than `owner` (None: any). An upload not committed yet is no task: UploadPending."""
        # The outbox first: a finished task (what callers mostly ask about) costs one read.
        read_outbox = self.storage.outbox.read if with_result else self.storage.outbox.head
        out = await read_outbox(task_id)
        if out is None:
            inbox = await self.storage.inbox.head(task_id)
            if inbox is not None:
                task = self._open_task(task_id, inbox)
                if not task.visible_to(owner):
                    return None, None
                if task.upload and not task.upload.committed:
                    raise UploadPending()
                return task, None
            out = await read_outbox(task_id)  # it may have finished between the two reads
            if out is None:
                return None, None
        task = self._finished_task(task_id, out)
        if task is not None and not task.visible_to(owner):
            return None, None
        return task, out.body

    async def status(self, task_id: str, owner: str | None = None) -> Task:
        """The task, if `owner` may see it (None: anybody may)."""
        task, _ = await self._get(task_id, owner=owner)
        if task is None:
            raise TaskNotFound()
        return task

    async def result(self, task_id: str, wait: float, owner: str | None = None) -> tuple[Task, bytes | None]:
        """The task and its result, once it has ended or `wait` seconds have passed.

        A task this instance ended a moment ago is answered with what it committed (recent.py). A wait
        starts from the view of the task its instance kept when it queued it a moment ago, and
        waits before its first look; or else reads it in full once. Then, until it is woken (a put on
        this instance) or its view of the task says it has ended by now (a deadline or the queued TTL
        passing, which nothing writes at once), it only looks for an outcome in the outbox - one
        storage call, for an outcome another instance committed - when the model's recent tasks
        say it may be there (result_polls.py). A wait ended
        by anything but that outcome is answered from a full read."""
        deadline = time.monotonic() + wait
        polls, body = None, None
        task, look = None, True
        seen = self.recent.get(task_id)
        if seen is not None and seen.task.finished:
            if seen.body is not None and self._answerable(seen.task, owner):
                return seen.task, seen.body  # committed here: as a read would find it
        elif seen is not None and wait and seen.task.visible_to(owner):
            task, look = seen.task, False  # queued here a moment ago: no need to read it back yet
        while True:
            with self.wakeups.watch("task:" + task_id) as ticket:
                if task is None:
                    task, body = await self._get(task_id, with_result=True, owner=owner)
                    if task is None:
                        raise TaskNotFound()
                    if polls is not None:  # it was pending when this wait began to wait
                        self._learn(task)
                    fresh = True
                elif not look:
                    fresh, look = False, True  # the first wait on a view from this instance needs no look
                else:
                    out = await self.storage.outbox.read(task_id)
                    if out is not None:  # it ended on another instance
                        finished = self._finished_task(task_id, out)
                        if finished is not None:
                            self._learn(finished)
                            if finished.visible_to(owner):
                                return finished, out.body
                        task = None  # past its result TTL, or not the caller's: as a full read says
                        continue
                    fresh = False
                remaining = deadline - time.monotonic()
                if task.ended(self.now()) or remaining <= 0:
                    if fresh:
                        return task, body
                    task = None  # the view is old: read it all before answering
                    continue
                if polls is None:  # when to look for an outcome committed elsewhere (result_polls.py)
                    polls = Schedule(task.created, self.durations.window(task.model), RESULT_POLL_FIRST, RESULT_POLL_CAP)
                woken = await self.wakeups.wait(ticket, min(polls.next(self.now()), remaining))
                handed = ticket.value if woken else None
                if handed is not None and self._answerable(handed[0], owner):
                    return handed  # committed by this instance: as a read would find it
            if woken:
                task = None
                polls.restart()

    def _learn(self, task: Task) -> None:
        """A wait that saw `task` pending read it from storage again: if it has ended since, how long
        its model's tasks take, unless this instance ended it (result_polls.py). Only outcomes that
        came while a wait waited count: one read later (a result fetched again, or long after, maybe
        one this instance committed and has forgotten) would count again, or stale."""
        seen = self.recent.get(task.task_id)
        if task.outcome is None or task.task_id in self._ending or (seen is not None and seen.task.finished):
            return
        self.durations.note(task.model, task.outcome.status, task.outcome.finished - task.outcome.created)

    # ---- submitting ----------------------------------------------------------------------

    async def submit(self, model: str, payload: bytes, content_type: str, params: dict,
                     idempotency_key: str | None = None, scope: str = "", ttl: int | None = None,
                     hook: Hook | None = None) -> tuple[Task, bool]:
        """Store the payload and enqueue the task. Returns (the task, whether this submit created it).
        `scope` is the client key's (auth.Caller): it keys Idempotency-Keys, and the task is its own."""
        await self.storage.ensure_containers()
        owner, created = scope or None, self.now()
        deadline = created + ttl if ttl else None
        if idempotency_key is None:
            sub = Submission(uuid.uuid4().hex, model, content_type, params, created, None, len(payload), owner, deadline,
                             hook is not None)
            metadata = sub.metadata()
            etag = await self.storage.inbox.put(sub.task_id, payload, metadata, content_type)
            try:
                await self._attach(sub, hook)
                inline = payload if len(payload) <= self.settings.inline_bytes else None
                await self._send(sub, TaskMessage.carrying(sub.task_id, sub.size, sub.created, etag, metadata, inline))
            except BaseException:
                # Nobody will ever be told this task id: take the payload back so nothing dangles
                # (if that fails too, the sweep deletes it once its queued TTL has passed).
                with contextlib.suppress(Exception):
                    await self.storage.inbox.delete(sub.task_id)
                    if sub.hooked:
                        await self.webhooks.forget(sub.task_id, sub.created)
                raise
            return Task(sub.task_id, model, sub.created, owner=owner, with_hook=sub.hooked), True
        task_id = idempotent_id(self.settings.lease_secrets[0], scope, idempotency_key)
        sub = Submission(task_id, model, content_type, params, created,
                         submission_digest(model, content_type, params, payload, hook=hook), len(payload), owner,
                         deadline, hook is not None)
        return await self._submit_once(sub, payload, hook)

    async def _attach(self, sub: Submission, hook: Hook | None) -> None:
        """Keep a new task's webhook beside its report (webhooks.py), before its message is sent; done
        again by a retry that takes a lost send over (it finds what is there, and keeps it)."""
        if hook is not None:
            await self.webhooks.attach(sub.task_id, sub.created, hook)

    async def _send(self, sub: Submission, content: TaskMessage | None = None) -> Message:
        """The task's queue message (`content`, or one that only names the task), living as long as the
        task may wait queued."""
        # Rounded up, and a little longer: the message must not die before the task may expire (a
        # claim that meets it past the TTL expires it; the sweep expires the rest).
        ttl = max(1, math.ceil(sub.expires(self.settings.queued_ttl_seconds) - self.now()) + SEND_TTL_MARGIN)
        message, _ = await asyncio.gather(
            self.storage.queues.send(sub.model, (content or TaskMessage(sub.task_id, sub.size, sub.created)).dump(), ttl),
            self._touch(sub.model))
        self._announce(sub.model)
        self.presence.joined(sub.model, sub.task_id)
        self.recent.remember(self._queued_task(sub))
        return message

    async def _touch(self, model: str) -> None:
        """Touch the model's signal blob (idle workers watch its etag), at most once per TOUCH_INTERVAL
        per instance: a task queued within the interval of a touch gets one more touch at its end (a
        worker may have fallen asleep just after the first). Best effort: a sleeping worker also looks
        for work now and then (mlserver's --idle-check)."""
        await self._touches(model)

    async def _touch_now(self, model: str, _=None) -> None:
        try:
            await self.storage.signals.touch(model)
        except Exception as exc:  # noqa: BLE001 - a wake-up missed is a wake-up delayed, not a task lost
            log.warning("could not touch the signal blob of model %s: %s", model, type(exc).__name__)

    async def _create_once(self, sub: Submission, payload: bytes, metadata: dict) -> tuple[str | None, Task | None, Blob | None]:
        """Create the inbox blob of an idempotent submit's task, unless its key made it already:
        (our blob's etag, None, None), or (None, the task as it stands, None) once it has finished,
        or (None, None, the existing inbox blob)."""
        # The outbox is read after the create, not beside it: a finish writes the outbox blob before it
        # deletes the inbox blob, so a create that succeeds because the task just finished sees its
        # outcome here, and takes its blob back instead of running the task again.
        etag = await self.storage.inbox.create(sub.task_id, payload, metadata, sub.content_type)
        out = await self.storage.outbox.head(sub.task_id)
        if out is not None:
            finished = self._finished_task(sub.task_id, out)
            if finished is not None:
                if etag:
                    await self.storage.inbox.delete(sub.task_id, etag)
                return None, self._same_submission(finished, sub), None
            # An expired result of an earlier task under this key: clear it and what its finish left
            # in the inbox (not our blob: it is newer than that outcome), then create ours if that
            # leftover stood in the way.
            await self._delete_leftover(out)
            await self.storage.outbox.delete(sub.task_id, out.etag)
            if etag is None:
                etag = await self.storage.inbox.create(sub.task_id, payload, metadata, sub.content_type)
        if etag is not None:
            return etag, None, None
        inbox = await self.storage.inbox.head(sub.task_id)
        if inbox is None:  # it finished between our two reads: read it again as a finished task
            task, _ = await self._get(sub.task_id)
            if task is None:
                raise TaskChanging("the task changed while it was being read; retry the submit")
            return None, self._same_submission(task, sub), None
        return None, None, inbox

    async def _submit_once(self, sub: Submission, payload: bytes, hook: Hook | None) -> tuple[Task, bool]:
        metadata = _with(sub.metadata(), **Enqueued(pending=sub.created).metadata())
        etag, task, inbox = await self._create_once(sub, payload, metadata)
        if task is not None:
            return task, False
        if etag is not None:
            await self._attach(sub, hook)
            await self._send_once(sub, metadata, etag)
            return Task(sub.task_id, sub.model, sub.created, with_hook=sub.hooked), True
        task = self._same_submission(self._open_task(sub.task_id, inbox), sub)
        if self._send_was_lost(task, inbox):
            await self._attach(Submission.from_metadata(inbox.name, inbox.metadata), hook)
            await self._take_over_send(inbox)
        return task, False

    # ---- uploading -----------------------------------------------------------------------

    async def begin_upload(self, model: str, size: int, content_type: str, params: dict,
                           idempotency_key: str | None = None, scope: str = "", ttl: int | None = None,
                           hook: Hook | None = None) -> Grant | Task:
        """Make room for a payload the client uploads itself: a Grant (where and until when to write
        it), or, when the Idempotency-Key's task was committed already, that task."""
        await self.storage.ensure_containers()
        until = self.now() + self.settings.upload_seconds  # when the sweep may take it (the URL's own end is storage's clock)
        owner, created = scope or None, self.now()
        deadline = created + ttl if ttl else None
        if idempotency_key is None:
            sub = Submission(uuid.uuid4().hex, model, content_type, params, created, None, size, owner, deadline,
                             hook is not None)
            await self.storage.inbox.put(sub.task_id, b"", _with(sub.metadata(), **Upload(until).metadata()),
                                         content_type)
            await self._attach(sub, hook)
            return await self._grant(sub)
        task_id = idempotent_id(self.settings.lease_secrets[0], scope, idempotency_key)
        sub = Submission(task_id, model, content_type, params, created,
                         submission_digest(model, content_type, params, None, size, hook), size, owner, deadline,
                         hook is not None)
        etag, task, inbox = await self._create_once(sub, b"", _with(sub.metadata(), **Upload(until).metadata()))
        if task is not None:
            return task
        if etag is not None:
            await self._attach(sub, hook)
            return await self._grant(sub)
        task = self._same_submission(self._open_task(task_id, inbox), sub)
        if task.upload is None or task.upload.committed:
            return task
        await self._attach(Submission.from_metadata(task_id, inbox.metadata), hook)  # its first ask may have died
        # Asked again before its commit: a fresh URL to the same blob (blocks staged so far stay), for
        # as long as a task may stay queued at most: asking again does not keep an upload alive forever.
        if self.now() >= task.created + self.settings.queued_ttl_seconds:
            raise UploadLapsed()
        until = min(until, task.created + self.settings.queued_ttl_seconds)
        if await self.storage.inbox.set_metadata(task_id, _with(inbox.metadata, **Upload(until).metadata()),
                                                 inbox.etag) is None:
            raise TaskChanging("the upload changed while it was being read; ask again")
        return await self._grant(Submission.from_metadata(task_id, inbox.metadata))

    async def _grant(self, sub: Submission) -> Grant:
        expires = time.time() + self.settings.upload_seconds + sub.size / SLOWEST_LINK
        return Grant(sub.task_id, await self.storage.uploads.url(payload_blob(sub.task_id, sub.created), "cw", expires),
                     expires)

    async def commit_upload(self, task_id: str, owner: str | None = None) -> Task:
        """Queue an uploaded task: what the client wrote becomes its payload (a read-only snapshot).
        Committing again answers the task as it stands. Only its owner may (None: anybody)."""
        for _ in range(CLAIM_TRIES):
            inbox = await self.storage.inbox.head(task_id)
            if inbox is None:
                task, _ = await self._get(task_id, owner=owner)  # committed before, and finished since
                if task is None:
                    raise TaskNotFound()
                return task
            sub = Submission.from_metadata(task_id, inbox.metadata)
            if owner is not None and sub.owner is not None and sub.owner != owner:
                raise TaskNotFound()
            upload = Upload.from_metadata(inbox.metadata)
            if upload is None:
                raise NotAnUpload()
            if upload.committed:
                out = await self.storage.outbox.head(task_id)  # it may have ended (its payload goes in a batch)
                finished = self._finished_task(task_id, out) if out is not None else None
                if finished is not None:
                    return finished
                task = self._open_task(task_id, inbox)
                if self._send_was_lost(task, inbox):
                    await self._take_over_send(inbox)
                return task
            if upload.until + UPLOAD_GRACE <= self.now():
                raise UploadLapsed()
            snapshot = await self._seal(payload_blob(task_id, sub.created), sub.size)
            metadata = _with(inbox.metadata, **Upload(None, snapshot).metadata(),
                             **Enqueued(pending=self.now()).metadata())
            etag = await self.storage.inbox.set_metadata(task_id, metadata, inbox.etag)
            if etag is None:  # another commit (or a fresh grant) came between: look again
                await self.storage.uploads.delete_snapshot(payload_blob(task_id, sub.created), snapshot)
                continue
            await self._send_once(sub, metadata, etag)
            return Task(task_id, sub.model, sub.created, sub.digest, upload=Upload(None, snapshot),
                        with_hook=sub.hooked)
        raise TaskChanging("the upload changed while it was being committed; commit again")

    async def _seal(self, name: str, size: int) -> str:
        """A read-only snapshot of the uploaded blob `name`, which must hold exactly `size` bytes."""
        blob = await self.storage.uploads.snapshot(name)
        if blob is None:
            raise NotUploaded("nothing has been uploaded for this task yet: PUT the payload to its upload_url "
                              "(and, for blocks, the block list), then commit")
        if blob.size != size:
            await self.storage.uploads.delete_snapshot(name, blob.snapshot)
            raise NotUploaded(f"the upload holds {blob.size} bytes, but {size} were declared: upload the whole "
                              "payload again, then commit")
        return blob.snapshot

    async def _send_once(self, sub: Submission, metadata: dict, etag: str) -> None:
        """Send the task's message and mark it sent; if the blob changed meanwhile, keep the message
        only if a claim already took it (a retry with the key took the sending over otherwise). A
        send that fails is marked lost, so that the next retry (or the sweep) sends it at once."""
        try:
            message = await self._send(sub)
        except Exception:
            with contextlib.suppress(Exception):
                await self.storage.inbox.set_metadata(sub.task_id, _with(metadata, **Enqueued(lost=True).metadata()),
                                                      etag)
            raise
        if await self.storage.inbox.set_metadata(
                sub.task_id, _with(metadata, **Enqueued(msg=message.id).metadata()), etag) is not None:
            return
        inbox = await self.storage.inbox.head(sub.task_id)
        state = LeaseState.from_metadata(inbox.metadata) if inbox else None
        if state is None or state.msg != message.id:
            await self.storage.queues.delete(sub.model, message.id, message.receipt)

    def _send_was_lost(self, task: Task, inbox: Blob) -> bool:
        """An idempotent submit's task, never claimed, not marked sent, whose send failed or whose submit
        had ample time to send it. (A plain submit's task has no marker: only its submit knew its id.)"""
        marker = Enqueued.from_metadata(inbox.metadata)
        if marker is None or marker.msg or task.state is not None or task.ended(self.now()):
            return False
        return marker.lost or (marker.pending or 0) + 3 * self.settings.storage_timeout_seconds <= self.now()

    async def _take_over_send(self, inbox: Blob) -> None:
        sub = Submission.from_metadata(inbox.name, inbox.metadata)
        metadata = _with(inbox.metadata, **Enqueued(pending=self.now()).metadata())
        etag = await self.storage.inbox.set_metadata(inbox.name, metadata, inbox.etag)
        if etag is not None:  # else another retry is taking it over right now
            await self._send_once(sub, metadata, etag)

    @staticmethod
    def _same_submission(task: Task, sub: Submission) -> Task:
        if task.model != sub.model or (task.digest and task.digest != sub.digest):
            raise IdempotencyConflict("this Idempotency-Key was already used with a different payload, model, "
                                      "params or content type", task)
        return task

    # ---- claiming ------------------------------------------------------------------------

    async def claim(self, model: str, max_tasks: int, wait: float, lease_seconds: int) -> list[Claim]:
        """Up to max_tasks claimed tasks, long-polling up to `wait` seconds for the first."""
        deadline = time.monotonic() + wait
        delay = POLL_FIRST
        # The first look goes to storage, unless a look here just found the queue short, nothing was
        # queued here since, and other long-polls wait here: then this claim joins them and shares
        # their polls (a lone claim always looks: nobody else would poll for what other instances queue).
        look = not (wait > 0 and self.looks.quiet(model, POLL_CAP) and self.wakeups.waiting("model:" + model))
        if not look:
            delay = POLL_CAP
        while True:
            with self.wakeups.watch("model:" + model) as ticket:
                # (not looking: another long-poll here looked while this one slept, no need to ask again)
                messages = await self._look(model, max_tasks, lease_seconds) if look else []
                if messages:
                    tasks = await self._take_all(model, messages, lease_seconds)
                    if tasks or time.monotonic() >= deadline:
                        return tasks
                    look = True
                    continue  # every message was stale; there may be live ones behind them
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                waited = min(delay, remaining)
                woken = await self.wakeups.wait(ticket, waited)
            delay = POLL_FIRST if woken else min(delay * 2, POLL_CAP)
            # Woken for a task queued here: look, unless a look here began since (it will find it).
            # Not woken: look, unless another long-poll here looked while this one slept.
            look = not self.looks.covered(model) if woken else not self.looks.within(model, waited)

    async def _look(self, model: str, max_tasks: int, lease_seconds: int) -> list[Message]:
        """Receive, noting when and whether the queue came back short (looks.py): long-polls on one
        model in this instance share one storage poll per backoff interval (a look in flight counts)
        instead of each polling on its own."""
        look = self.looks.began(model)
        try:
            messages = await self.storage.queues.receive(model, max_tasks, lease_seconds)
        except BaseException:
            self._announce(model)  # a woken long-poll may have left a task to this look: it looks now
            raise
        self.looks.ended(model, look, short=len(messages) < max_tasks)
        if len(messages) >= max_tasks:
            self._announce(model)  # there may be more: another long-poll looks now
        return messages

    def _announce(self, model: str) -> None:
        """A task was queued or given back here, or a look came back full: a long-poll waiting here looks."""
        self.looks.announced(model)
        self.wakeups.notify_one("model:" + model)

    async def _take_all(self, model: str, messages: list[Message], lease_seconds: int) -> list[Claim]:
        """Take what the claim's byte budget allows, in order; release the rest at once, untouched.

        A task that cannot be taken does not sink the others: a storage error releases its message,
        a record that cannot be read fails that task alone."""
        chosen, drop, defer = [], [], []
        seen: set[str] = set()
        budget = self.settings.max_claim_bytes  # inline payload bytes; larger payloads go as URLs
        for message in messages:
            task = TaskMessage.parse(message.content)
            inline = task.size if task is not None and self._inline(task) else 0
            if task is None:
                drop.append(message)  # not a task message
            elif task.task_id in seen or defer or (chosen and inline > budget):
                # A second message of one task in this batch (the next claim tells whether it is a
                # spare), or past the claim's byte budget: it stays queued, its attempt unspent.
                defer.append(message)
            else:
                chosen.append((message, task))
                seen.add(task.task_id)
                budget -= inline
        results = await asyncio.gather(*(self._take(model, m, t, lease_seconds) for m, t in chosen),
                                       return_exceptions=True)
        errors = []
        for (message, task), result in zip(chosen, results):
            task_id = task.task_id
            if not isinstance(result, BaseException):
                continue
            if unreadable(result):
                await self._give_up_unreadable(model, message, task_id, result)
                continue
            if not isinstance(result, StorageUnavailable):
                log.error("task %s could not be taken (%r); it goes back to the queue", task_id, result)
            errors.append(result)
            defer.append(message)
        await self._quietly(*(self._drop(model, m) for m in drop), *(self._release(model, m) for m in defer))
        claims = [r for r in results if isinstance(r, Claim)]
        if errors and not claims:
            raise errors[0]
        return claims

    async def _take(self, model: str, message: Message, sent: TaskMessage, lease_seconds: int) -> Claim | None:
        """Turn a received message into a claimed task, or settle it (drop, expire, give up)."""
        task_id = sent.task_id
        # On a first delivery an outcome exists only if a cancel or a finish did not get to delete
        # the inbox blob; the first-wins outbox keeps that rare case harmless (its worker's heartbeat
        # and put get 409/410, and the put tidies up), so skip the outbox read.
        first_delivery = message.dequeue_count <= 1
        # On a first delivery the message's copy of the blob stands in for reading it: the state
        # write below is conditional on the copy's etag, and goes to a fresh read if it fails.
        inbox = self._copy(sent) if first_delivery else None
        if inbox is None:
            # A small payload is downloaded to go inside the claim; a large one only named (a URL).
            read_inbox = self.storage.inbox.read if self._inline(sent) else self.storage.inbox.head
            inbox, out = await asyncio.gather(read_inbox(task_id),
                                              _nothing() if first_delivery else self.storage.outbox.head(task_id))
            if out is not None or inbox is None:  # finished (maybe healed now), cancelled or expired
                await asyncio.gather(self._drop(model, message),
                                     self.storage.inbox.delete(task_id) if inbox is not None else _nothing())
                return None
        payload = inbox.body
        for again in range(CLAIM_TRIES):
            sub = Submission.from_metadata(task_id, inbox.metadata)
            if not sent.sent_for(sub.created):  # an earlier task's under the same Idempotency-Key
                await self._drop(model, message)
                return None
            state = LeaseState.from_metadata(inbox.metadata)
            at = self.now()
            if state and state.holds(at) and state.msg != message.id:
                await self._drop(model, message)  # a spare message of a task another claim holds
                return None
            if again and state and state.holds(at) and state.receipt != receipt_hash(message.receipt):
                # Another claim wrote its state meanwhile. If it received this message before us, our
                # receipt is current and its token is stale with the queue: take the lease over (a
                # fresh receipt proves ours current); else the other claim has it and we back off.
                try:
                    updated = await self.storage.queues.update(model, message.id, message.receipt, lease_seconds)
                except (ReceiptStale, MessageGone):
                    return None
                message = dataclasses.replace(message, receipt=updated.receipt, visible_at=updated.visible_at)
            if at >= sub.expires(self.settings.queued_ttl_seconds):
                await self._expire(inbox, message)
                return None
            attempt, givebacks, error = state.next_attempt() if state else (1, 0, None)
            if attempt > self.settings.max_attempts:
                await self._give_up(inbox, message, attempt - 1, error)
                return None
            claimed = LeaseState(message.id, at + lease_seconds, at, attempt, givebacks, error,
                                 claim=(state.claim if state else 0) + 1, receipt=receipt_hash(message.receipt))
            if await self.storage.inbox.set_metadata(task_id, _with(inbox.metadata, state=claimed.dump()),
                                                     inbox.etag) is not None:
                break
            inbox = await self.storage.inbox.head(task_id)  # it changed since we read it: look again
            if inbox is None:  # cancelled or expired meanwhile
                await self._drop(model, message)
                return None
        else:
            await self._release(model, message)
            return None
        upload = Upload.from_metadata(inbox.metadata)
        lease = Lease(task_id, model, message.id, message.receipt, claimed.claim, attempt, sub.created, at, sub.digest,
                      upload is not None, sub.owner, sub.deadline, sub.hooked)
        hook = await self.webhooks.hook(task_id, sub.created) if sub.hooked else None
        if hook and hook.wants("started"):
            started = Task(task_id, model, sub.created, sub.digest, claimed, owner=sub.owner, deadline=sub.deadline)
            await self.webhooks.best_effort(hook, task_id, sub.created, "started", claimed.claim, started.document(at))
        expires = message.visible_at or claimed.until
        payload_url = None
        readable = time.time() + lease_seconds + URL_GRACE + sub.size / SLOWEST_LINK
        if upload is not None:
            payload, payload_url = None, await self.storage.uploads.url(payload_blob(task_id, sub.created), "r", readable,
                                                                  upload.snapshot)
        elif payload is None:  # too large to go inline
            payload_url = await self.storage.inbox.url(task_id, "r", readable)
        return Claim(task_id, model, sub.params, sub.content_type, payload, lease.encode(self.settings.lease_secrets),
                     expires, attempt, sub.size, payload_url, await self._result_url(lease, lease_seconds))

    def _copy(self, sent: TaskMessage) -> Blob | None:
        """The inbox blob as the message's copy has it, if the message carries one with all a claim
        needs of the blob (the payload too, when it goes inline); else None, and the claim reads it."""
        if sent.etag is None or sent.metadata is None:
            return None
        inline = self._inline(sent)
        payload = sent.payload() if inline else None
        if inline and payload is None:
            return None
        try:
            Submission.from_metadata(sent.task_id, sent.metadata)
        except Exception:  # noqa: BLE001 - a copy that does not read well is no copy: the blob is read instead
            return None
        return Blob(sent.task_id, sent.metadata, sent.etag, None, 0.0, sent.size, payload)

    def _inline(self, sent: TaskMessage) -> bool:
        """Whether a claim carries this task's payload itself (else a URL to it)."""
        return sent.size <= self.settings.inline_bytes

    async def _result_url(self, lease: Lease, lease_seconds: int) -> str:
        """Where the worker holding `lease` may write a large result: for its lease, and the time an
        upload may take after it."""
        expires = time.time() + lease_seconds + self.settings.upload_seconds
        return await self.storage.uploads.url(result_blob(lease.task_id, lease.created, lease.claim), "cw", expires)

    async def _give_up(self, inbox: Blob, message: Message, attempts: int, error: str | None) -> None:
        sub, state = Submission.from_metadata(inbox.name, inbox.metadata), LeaseState.from_metadata(inbox.metadata)
        reason = f"gave up after {attempts} attempts: {error or 'no attempt put a result'}"
        outcome = Outcome("failed", sub.model, sub.created, self.now(), state.started if state else None,
                          attempts, clip_error(reason), sub.digest, owner=sub.owner)
        await self._end(sub.task_id, sub.model, outcome, _error_body(outcome.error), JSON, message,
                        uploaded=_uploaded(inbox), hooked=sub.hooked, plain=sub.digest is None)

    async def _give_up_unreadable(self, model: str, message: Message, task_id: str, exc: BaseException) -> None:
        """A task whose stored record cannot be read (written by hand, or by a broken version) fails
        alone and for good, rather than sinking every claim that meets it."""
        log.warning("task %s: its stored record cannot be read (%s); it fails", task_id, type(exc).__name__)
        error = "the broker could not read this task's stored record; submit it again"
        outcome = Outcome("failed", model, self.now(), self.now(), None, 0, error)
        try:
            await self._end(task_id, model, outcome, _error_body(error), JSON, message)
        except Exception as failure:  # noqa: BLE001 - its lease runs out and the next claim tries again
            log.warning("task %s: could not record its failure either (%s)", task_id, type(failure).__name__)

    async def _expire(self, inbox: Blob, message: Message | None) -> None:
        sub, state = Submission.from_metadata(inbox.name, inbox.metadata), LeaseState.from_metadata(inbox.metadata)
        ttl = self.settings.queued_ttl_seconds
        outcome = Outcome("expired", sub.model, sub.created, self.now(), None, state.attempt if state else 0,
                          expiry_error(ttl, state is not None, sub.deadline, sub.created), sub.digest, owner=sub.owner)
        await self._end(sub.task_id, sub.model, outcome, b"", JSON, message, uploaded=_uploaded(inbox),
                        hooked=sub.hooked, plain=sub.digest is None)

    # ---- holding a lease -----------------------------------------------------------------

    async def _held(self, lease: Lease) -> tuple[Blob, LeaseState]:
        """The inbox blob and lease state of a task, if `lease` is its current token; else the refusal."""
        out, inbox = await self._read_both(lease.task_id)
        if out is not None:
            outcome = Outcome.from_metadata(out.metadata)
            task = self._finished_task(lease.task_id, out)
            if outcome.status == "cancelled":
                await self._drop(lease.model, Message(lease.msg, lease.receipt))
                raise TaskCancelled("the task was cancelled", task)
            if outcome.status == "expired":
                raise TaskExpired("the task expired", task)
            raise TaskFinished("the task already finished", task)
        if inbox is None:
            raise TaskNotFound()
        state = LeaseState.from_metadata(inbox.metadata)
        if (state is None or state.msg != lease.msg or state.claim != lease.claim
                or state.receipt != receipt_hash(lease.receipt)):
            raise LeaseLost()
        if lease.deadline is not None and self.now() >= lease.deadline:
            await self._end(lease.task_id, lease.model, self._deadline_outcome(lease), b"", JSON,
                            Message(lease.msg, lease.receipt), uploaded=lease.upload,
                            hooked=lease.hooked)
            task, _ = await self._get(lease.task_id)
            raise TaskCancelled("the task was cancelled: " + deadline_error(lease.deadline, lease.created), task)
        return inbox, state

    def _deadline_outcome(self, lease: Lease) -> Outcome:
        """A task still running at its deadline (ttl) ends cancelled, its worker told at its next call."""
        return Outcome("cancelled", lease.model, lease.created, self.now(), lease.started, lease.attempt,
                       deadline_error(lease.deadline, lease.created), lease.digest, owner=lease.owner)

    async def _write_state(self, lease: Lease, inbox: Blob, state: LeaseState) -> None:
        if await self.storage.inbox.set_metadata(lease.task_id, _with(inbox.metadata, state=state.dump()),
                                                 inbox.etag) is None:
            await self._held(lease)  # it changed: the refusal that says how
            raise LeaseLost()

    @staticmethod
    def _submitted_at(inbox: Blob, created: float) -> bool:
        """Whether the inbox blob holds the task submitted at `created` (not a later one under its key)."""
        try:
            return Submission.from_metadata(inbox.name, inbox.metadata).created == created
        except (KeyError, ValueError, TypeError):
            return False

    def _past_ttl(self, inbox: Blob) -> bool:
        return self.now() >= Submission.from_metadata(inbox.name, inbox.metadata).expires(self.settings.queued_ttl_seconds)

    async def extend(self, lease: Lease, seconds: int) -> Renewal:
        inbox, state = await self._held(lease)
        if seconds == 0:
            receipt = await self._free(lease, inbox, state, "back")
            return Renewal(lease.renewed(receipt).encode(self.settings.lease_secrets), self.now())
        return await self._renew(lease, inbox, state, seconds)

    async def progress(self, lease: Lease, fraction: float, message: str, seconds: int = 0) -> Renewal:
        """Record how far the worker holding `lease` is with its task (the status document shows it);
        with `seconds`, renew the lease too, as a heartbeat (same rules: only the current token)."""
        inbox, state = await self._held(lease)
        state.progress, state.progress_message = fraction, clip_error(message, MAX_PROGRESS_BYTES, "") or None
        at = self.now()
        due = lease.hooked and at - (state.progress_event_at or 0) >= PROGRESS_EVERY
        hook = await self.webhooks.hook(lease.task_id, lease.created) if due else None
        tell = hook is not None and hook.wants("progress")
        if tell:
            state.progress_event_at = at
        if seconds:
            renewal = await self._renew(lease, inbox, state, seconds)
        else:
            await self._write_state(lease, inbox, state)
            renewal = Renewal(lease.encode(self.settings.lease_secrets), state.until)
        if tell:
            running = Task(lease.task_id, lease.model, lease.created, lease.digest, state, owner=lease.owner,
                           deadline=lease.deadline)
            await self.webhooks.best_effort(hook, lease.task_id, lease.created, "progress", at, running.document(at))
        return renewal

    async def _renew(self, lease: Lease, inbox: Blob, state: LeaseState, seconds: int) -> Renewal:
        """Hold the task `seconds` more (a new pop receipt: a new token), writing `state` with it."""
        try:
            updated = await self.storage.queues.update(lease.model, lease.msg, lease.receipt, seconds)
            receipt, expires = updated.receipt, updated.visible_at
        except ReceiptStale:
            raise LeaseLost() from None
        except MessageGone:
            if not self._past_ttl(inbox):
                raise LeaseLost() from None
            if not state.holds(self.now()):  # nothing holds it any more, and it is past its queued TTL
                await self._expire_now(lease, inbox)
            # The message outlived its time-to-live (the queued TTL) under a running task: from
            # here the lease state alone holds the task, and nothing redelivers it.
            receipt, expires = lease.receipt, None
        state.until, state.receipt = self.now() + seconds, receipt_hash(receipt)
        await self._write_state(lease, inbox, state)
        return Renewal(lease.renewed(receipt).encode(self.settings.lease_secrets), expires or state.until,
                       await self._result_url(lease, seconds))

    async def _expire_now(self, lease: Lease, inbox: Blob) -> None:
        """End a task past its queued TTL whose lease ran out or is given back: `expired`, and say so."""
        await self._expire(inbox, Message(lease.msg, lease.receipt))
        task, _ = await self._get(lease.task_id)
        raise TaskExpired("the task expired: it is past its queued TTL and no lease holds it", task)

    async def _free(self, lease: Lease, inbox: Blob, state: LeaseState, how: str, error: str | None = None) -> str:
        """Give the task back to the queue (how="back") or after a retryable failure ("retry"); the
        message's new receipt. A task past its queued TTL ends `expired` instead."""
        if self._past_ttl(inbox):
            await self._expire_now(lease, inbox)
        try:  # hold the message (proving the receipt current) while the state says how the claim ended
            held = await self.storage.queues.update(lease.model, lease.msg, lease.receipt, RELEASE_HOLD)
        except (ReceiptStale, MessageGone):
            raise LeaseLost() from None
        state.until, state.freed, state.receipt = None, how, receipt_hash(held.receipt)
        if how == "back":
            state.givebacks += 1
        else:
            state.error = error
        await self._write_state(lease, inbox, state)
        await self._quietly(self._release(lease.model, held))  # else it is visible again in RELEASE_HOLD s
        await self._touch(lease.model)
        return held.receipt

    # ---- finishing -----------------------------------------------------------------------

    async def complete(self, lease: Lease, body: bytes, content_type: str) -> str:
        """Commit a success; the status the task has now (succeeded)."""
        outcome = Outcome("succeeded", lease.model, lease.created, self.now(), lease.started, lease.attempt,
                          None, lease.digest, lease.commit_id("succeeded", content_type, body), owner=lease.owner)
        return (await self._finish(lease, outcome, body, content_type))[0]

    async def complete_uploaded(self, lease: Lease, content_type: str) -> str:
        """Commit as the success the result this claim's worker uploaded (a read-only snapshot of it)."""
        name = result_blob(lease.task_id, lease.created, lease.claim)
        result = await self.storage.uploads.snapshot(name)
        if result is None:
            raise NotUploaded("no result has been uploaded for this claim: PUT it to the claim's "
                              "result_upload_url first")
        if result.size > self.settings.max_upload_bytes:  # the blob itself may hold an earlier put's committed snapshot
            await self.storage.uploads.delete_snapshot(name, result.snapshot)
            raise UploadTooLarge(f"the uploaded result is larger than the limit of {self.settings.max_upload_bytes} bytes")
        # What the worker wrote is known by its etag: the same put repeated names the same bytes.
        outcome = Outcome("succeeded", lease.model, lease.created, self.now(), lease.started, lease.attempt,
                          None, lease.digest, lease.commit_id("succeeded", content_type, result.etag.encode()),
                          name, result.snapshot, result.size, owner=lease.owner)
        try:
            status, committed = await self._finish(lease, outcome, b"", content_type)
        except BaseException:
            await self._quietly(self.storage.uploads.delete_snapshot(name, result.snapshot))
            raise
        if not committed:  # a repeated put: the snapshot its first time took is the result
            await self._quietly(self.storage.uploads.delete_snapshot(name, result.snapshot))
        return status

    async def fail(self, lease: Lease, error: str, retryable: bool) -> str:
        """Commit a failure, or queue the task again for a retryable one; the status the task has now."""
        error = clip_error(error)
        if retryable:  # it asks for another attempt: only the current token may, with or without one left
            inbox, state = await self._held(lease)
            if lease.attempt < self.settings.max_attempts:
                await self._free(lease, inbox, state, "retry", error)
                task, _ = await self._get(lease.task_id)
                return task.status(self.now()) if task else "queued"
            error = clip_error(f"gave up after {lease.attempt} attempts: {error}")
        body = _error_body(error)
        outcome = Outcome("failed", lease.model, lease.created, self.now(), lease.started, lease.attempt,
                          error, lease.digest, lease.commit_id("failed", JSON, body), owner=lease.owner)
        return (await self._finish(lease, outcome, body, JSON))[0]

    async def _finish(self, lease: Lease, outcome: Outcome, body: bytes, content_type: str) -> tuple[str, bool]:
        """Commit the outcome a worker puts: (the task's status now, whether this put committed it)."""
        await self.storage.ensure_containers()
        at = self.now()
        settings = self.settings
        incarnation = None
        if lease.deadline is not None and at >= lease.deadline:  # the task was cancelled at its deadline
            outcome, body, content_type = self._deadline_outcome(lease), b"", JSON
        if at >= lease.created + min(settings.queued_ttl_seconds, settings.result_ttl_seconds):
            incarnation = lease.created  # old enough that its key may have made a new task since: check again
            # Old enough to have expired queued, or finished and been cleaned away: look before
            # writing (after the write, a claim healing this very write also deletes the inbox
            # blob, so its absence then would prove nothing). Young tasks skip the read.
            inbox = await self.storage.inbox.head(lease.task_id)
            if inbox is None and at >= lease.created + settings.result_ttl_seconds:
                raise TaskNotFound()
            if inbox is not None and not self._submitted_at(inbox, lease.created):
                raise LeaseLost()  # a later task under the same Idempotency-Key: this lease was for one long gone
            if inbox is not None and self._open_task(lease.task_id, inbox).status(at) == "expired":
                await self._expire_now(lease, inbox)
        first = await self._end(lease.task_id, lease.model, outcome, body, content_type,
                                Message(lease.msg, lease.receipt), incarnation, lease.upload, await self._open(lease),
                                plain=lease.digest is None)
        if first is None and outcome.status == "cancelled":  # its deadline passed first: this put is too late
            task, _ = await self._get(lease.task_id)
            raise TaskCancelled("the task was cancelled: " + outcome.error, task)
        if first is None:
            return outcome.status, True
        if first.committed_by == outcome.committed_by:  # the same put, repeated
            return first.status, False
        task, _ = await self._get(lease.task_id)
        if first.status == "cancelled":
            raise TaskCancelled("the task was cancelled", task)
        if first.status == "expired":
            raise TaskExpired("the task expired", task)
        raise TaskFinished("the task's outcome was already put (by another attempt, or by this one with "
                           "other content)", task)

    async def _open(self, lease: Lease) -> bool:
        """Whether the task `lease` holds has a webhook and has not ended (its end sent the event)."""
        if not lease.hooked:
            return False
        inbox = await self.storage.inbox.head(lease.task_id)
        return inbox is not None and self._submitted_at(inbox, lease.created)

    @contextlib.contextmanager
    def _ending_here(self, task_id: str):
        """Notes, while it lasts, that this instance is writing the task's outcome (`_ending`)."""
        self._ending[task_id] += 1
        try:
            yield
        finally:
            self._ending[task_id] -= 1
            if not self._ending[task_id]:
                del self._ending[task_id]

    async def _end(self, task_id: str, model: str, outcome: Outcome, body: bytes, content_type: str,
                   message: Message | None, incarnation: float | None = None, uploaded: bool = False,
                   hooked: bool = False, plain: bool = False) -> Outcome | None:
        """Write the task's outcome unless it has one, then drop its message and payload either way
        (so a repeat heals a finish that could not tidy up); the outcome that was there first, if any.
        `uploaded`: the payload is in `uploads` too (records.payload_blob), and goes as well. When it is
        `hooked` and its webhook wants it, the `completed` event is queued (its backstop first: webhooks.py).

        With `incarnation` (the submission time a late put's lease names), an outcome written while
        its Idempotency-Key made a new task under the same id is taken back (LeaseLost), and the new
        task's payload is left alone. A `plain` task's id is never used again (no Idempotency-Key):
        when its message goes in this same step, its payload's delete can wait for a batch
        (discards.py). While it runs, a wait here that reads the outcome from storage does not learn
        from it (result_polls.py)."""
        with self._ending_here(task_id):
            first, inbox_etag, hook = None, None, None
            if hooked:
                outcome = dataclasses.replace(outcome, hooked=True)
                hook = await self.webhooks.hook(task_id, outcome.created)
                if hook is not None and hook.wants("completed"):
                    await self.webhooks.backstop(hook, task_id, outcome.created)
            etag = await self.storage.outbox.create(task_id, body, outcome.metadata(), content_type)
            if etag is None:
                out = await self.storage.outbox.head(task_id)
                if out is None:  # deleted by cleanup in between: it had expired
                    raise TaskNotFound()
                first = Outcome.from_metadata(out.metadata)
            elif incarnation is not None:
                inbox = await self.storage.inbox.head(task_id)
                if inbox is not None and not self._submitted_at(inbox, incarnation):
                    await self.storage.outbox.delete(task_id, etag)
                    raise LeaseLost()
                inbox_etag = inbox.etag if inbox else None
            later = plain and message is not None and incarnation is None
            drop_payload = self.discards.add(task_id) if later else self.storage.inbox.delete(task_id, inbox_etag)
            await asyncio.gather(self._drop(model, message) if message else _nothing(), drop_payload,
                                 # what is left of an uploaded payload, the sweep of uploads takes
                                 self._quietly(self.storage.uploads.delete(payload_blob(task_id, outcome.created)))
                                 if uploaded else _nothing())
            if first is None:
                finished = Task(task_id, model, outcome.created, outcome.digest, None, outcome, content_type,
                                owner=outcome.owner)  # as _finished_task reads it back
                self.wakeups.notify("task:" + task_id, (finished, body))  # waiters here need not read it back
                self.recent.remember(finished, body)  # nor later ones
                if hook is not None and hook.wants("completed"):
                    with contextlib.suppress(Exception):  # the backstop delivers it in BACKSTOP seconds
                        await self.webhooks.send(hook, task_id, outcome.created, "completed", 0, finished.document())
            return first

    async def cancel(self, task_id: str, owner: str | None = None) -> Task:
        task, _ = await self._get(task_id, owner=owner)
        if task is None:
            raise TaskNotFound()
        if not task.finished:
            at = self.now()
            if task.status(at) == "expired":
                outcome = Outcome("expired", task.model, task.created, at, None,
                                  task.state.attempt if task.state else 0, task.expiry_error, task.digest,
                                  owner=task.owner)
            else:
                state = task.state if task.state and task.state.holds(at) else None
                outcome = Outcome("cancelled", task.model, task.created, at, state.started if state else None,
                                  task.state.attempt if task.state else 0, None, task.digest, owner=task.owner)
            await self._end(task_id, task.model, outcome, b"", JSON, None, uploaded=task.upload is not None,
                            hooked=task.hooked)
            task, _ = await self._get(task_id, owner=owner)
            if task is None:
                raise TaskNotFound()
        if task.outcome.status == "cancelled":
            return task
        raise TaskFinished(f"the task already {task.outcome.status} and cannot be cancelled", task)

    # ---- housekeeping --------------------------------------------------------------------

    async def _drop(self, model: str, message: Message) -> None:
        """Delete the message (quiet if another claim's receipt replaced ours: that claim tidies up)."""
        await self.storage.queues.delete(model, message.id, message.receipt)

    async def _release(self, model: str, message: Message) -> None:
        """Make the message visible again now (quiet if it is gone or no longer ours)."""
        try:
            await self.storage.queues.update(model, message.id, message.receipt, 0)
        except (MessageGone, ReceiptStale):
            pass
        self._announce(model)

    @staticmethod
    async def _quietly(*steps) -> None:
        """Best-effort steps: what fails is logged, and left to leases running out."""
        for result in await asyncio.gather(*steps, return_exceptions=True):
            if isinstance(result, Exception):
                log.warning("a best-effort storage step failed: %s", type(result).__name__)

    async def stats(self, model: str | None = None) -> tuple[dict[str, int], bool]:
        """(queue depth per model, whether more models have queues): the one asked about, the served
        ones (BROKER_MODELS), or the first MAX_STATS_MODELS that have a queue."""
        if model or self.settings.models:
            names, more = [model] if model else list(self.settings.models), False
        else:
            names, more = await self.storage.queues.models(MAX_STATS_MODELS)
        depths = await asyncio.gather(*(self.storage.queues.depth(name) for name in names))
        return dict(zip(names, depths)), more

    def check_signing(self) -> None:
        """Raise the SettingsError that says why this broker cannot hand out storage URLs, if it cannot
        (before a claim takes tasks it could not give URLs for)."""
        self.storage.signer.check()

    async def watch(self, model: str) -> tuple[str, float]:
        """A read URL (and its expiry) for the model's signal blob, whose etag changes whenever a task of
        the model is queued: what an idle worker watches instead of holding a long-poll open."""
        await self.storage.ensure_containers()
        await self.storage.signals.create(model, b"", {}, "application/octet-stream")  # there to be read
        expires = time.time() + WATCH_SECONDS
        return await self.storage.signals.url(model, "r", expires), expires

    async def result_url(self, task: Task) -> tuple[str, float]:
        """A read URL (and its expiry) for a result the worker uploaded: served as its content type, and
        as a download unless it is a type browsers show safely."""
        kind = task.result_content_type or "application/octet-stream"
        expires = time.time() + self.settings.upload_seconds + (task.outcome.size or 0) / SLOWEST_LINK
        disposition = None if shown_inline(kind) else f'attachment; filename="{task.task_id}"'
        url = await self.storage.uploads.url(task.outcome.ref, "r", expires, task.outcome.snapshot, kind, disposition)
        return url, expires

    async def health(self) -> None:
        await self.storage.ensure_containers()
        await self.storage.ping()

    async def cleanup(self) -> int:
        """Delete results past their TTL and what is left of their tasks; at most cleanup_batch."""
        await self.storage.ensure_containers()
        cutoff = self.now() - self.settings.result_ttl_seconds
        expired: list[Blob] = []
        continuation = None
        while len(expired) < self.settings.cleanup_batch:
            blobs, continuation = await self.storage.outbox.page(continuation, 5000, metadata=True)
            expired += [blob for blob in blobs if blob.created <= cutoff][: self.settings.cleanup_batch - len(expired)]
            if continuation is None:
                break
        for start in range(0, len(expired), CLEANUP_PARALLEL):
            chunk = expired[start:start + CLEANUP_PARALLEL]
            # Outbox last: a task whose outbox blob is still there is retried by the next run.
            tidied = await self._each("cleanup", (self._delete_leftover(blob) for blob in chunk))
            await self._each("cleanup", (self.storage.outbox.delete(blob.name, blob.etag)
                                         for blob, done in zip(chunk, tidied) if not isinstance(done, Exception)))
        return len(expired)

    @staticmethod
    async def _each(what: str, steps) -> list:
        """Housekeeping steps side by side: one that fails is logged and left for the next run, and does
        not stop the others (nor the rest of the run)."""
        results = await asyncio.gather(*steps, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.warning("%s: a step failed (%s: %s); the next run tries again", what, type(result).__name__, result)
        return results

    async def _delete_leftover(self, out: Blob) -> None:
        """Delete what a finish left of an expired result's task in the inbox, and not a task submitted
        again since with the same Idempotency-Key (which reuses the blob name); and its uploaded result."""
        with contextlib.suppress(KeyError, ValueError, TypeError):
            outcome = Outcome.from_metadata(out.metadata)
            if outcome.ref:
                await self.storage.uploads.delete(outcome.ref)
            if outcome.hooked:
                await self.webhooks.forget(out.name, outcome.created)
        inbox = await self.storage.inbox.head(out.name)
        if inbox is None:
            return
        try:
            leftover = Submission.from_metadata(out.name, inbox.metadata).created <= Outcome.from_metadata(out.metadata).finished
        except (KeyError, ValueError, TypeError):
            leftover = True
        if leftover:
            await self.storage.inbox.delete(out.name, inbox.etag)

    async def sweep(self) -> int:
        """Expire tasks nobody started within their queued TTL (and payloads whose submit failed half
        way): their outcome is written and their payload deleted. Send the message of an idempotent
        task whose submit failed to, if no retry came. Goes on from where the last run stopped, at
        most SWEEP_PAGES pages or cleanup_batch tasks a run."""
        await self.storage.ensure_containers()
        swept = 0
        for _ in range(SWEEP_PAGES):
            blobs, self._sweep_from = await self.storage.inbox.page(self._sweep_from, SWEEP_PAGE, metadata=True)
            at = self.now()
            stale = [blob for blob in blobs if self._sweepable(blob, at)][: self.settings.cleanup_batch - swept]
            for start in range(0, len(stale), CLEANUP_PARALLEL):
                await self._each("sweep", (self._expire_blob(blob) for blob in stale[start:start + CLEANUP_PARALLEL]))
            await self._quietly(*(self._take_over_send(blob) for blob in blobs if self._unsent(blob)))
            swept += len(stale)
            if self._sweep_from is None or swept >= self.settings.cleanup_batch:
                break
        return swept

    async def sweep_uploads(self) -> int:
        """Delete what clients and workers wrote into `uploads` that no task will read: a payload whose
        task is gone, a result that is not its ended task's outcome (another attempt's, or one a worker
        died writing). Goes on from where the last run stopped, like the inbox sweep."""
        await self.storage.ensure_containers()
        swept = 0
        for _ in range(SWEEP_PAGES):
            blobs, self._uploads_from = await self.storage.uploads.page(self._uploads_from, SWEEP_PAGE, uncommitted=True)
            owners: dict[tuple[str, str] | None, list[Blob]] = {}
            for blob in blobs:
                owners.setdefault(upload_owner(blob.name), []).append(blob)
            groups = list(owners.items())
            for start in range(0, len(groups), CLEANUP_PARALLEL):
                counts = await self._each("sweep of uploads", (self._sweep_owner(owner, group)
                                                               for owner, group in groups[start:start + CLEANUP_PARALLEL]))
                swept += sum(count for count in counts if isinstance(count, int))
            if self._uploads_from is None or swept >= self.settings.cleanup_batch:
                break
        return swept

    async def _sweep_owner(self, owner: tuple[str, str] | None, blobs: list[Blob]) -> int:
        keep: set[str] = set()
        if owner is not None:
            task_id, made = owner
            out, inbox = await self._read_both(task_id)
            with contextlib.suppress(KeyError, ValueError, TypeError):
                if inbox is not None and stamp(Submission.from_metadata(task_id, inbox.metadata).created) == made:
                    return 0  # its task is still open: its payload and any attempt's result may still be used
                if out is not None:
                    keep.add(Outcome.from_metadata(out.metadata).ref or "")
        gone = [blob for blob in blobs if blob.name not in keep]
        deleted = await self._each("sweep of uploads", (self.storage.uploads.delete(blob.name) for blob in gone))
        return sum(1 for done in deleted if done is True)

    def _unsent(self, blob: Blob) -> bool:
        """An idempotent submit's task whose message was never sent, and nobody retried it."""
        try:
            return self._send_was_lost(self._open_task(blob.name, blob), blob)
        except (KeyError, ValueError, TypeError):
            return False

    def _sweepable(self, blob: Blob, at: float) -> bool:
        """A task past its queued TTL, or an upload never committed whose URL ran out a while ago."""
        try:
            task = self._open_task(blob.name, blob)
        except (KeyError, ValueError, TypeError):  # an unreadable record: its age is the blob's
            return blob.created + self.settings.queued_ttl_seconds <= at
        if task.upload is not None and not task.upload.committed:
            return task.upload.until + UPLOAD_GRACE <= at
        return task.status(at) in ("expired", "cancelled")  # cancelled: still running at its deadline

    async def _expire_blob(self, listed: Blob) -> None:
        blob = await self.storage.inbox.head(listed.name)  # the listing may be old: a claim may hold it now
        if blob is None or not self._sweepable(blob, self.now()):
            return
        try:
            sub = Submission.from_metadata(blob.name, blob.metadata)
            upload = Upload.from_metadata(blob.metadata)
        except (KeyError, ValueError, TypeError):
            await self.storage.inbox.delete(blob.name, blob.etag)  # nobody can use it, nobody can read it
            return
        if upload is not None and not upload.committed:  # never a task: no outcome, just gone
            # The record first, and only as it was read: a commit (or a fresh grant) that came since
            # keeps it, and then its upload too.
            if await self.storage.inbox.delete(blob.name, blob.etag):
                await self.storage.uploads.delete(payload_blob(blob.name, sub.created))
                if sub.hooked:
                    await self.webhooks.forget(blob.name, sub.created)
            return
        state = LeaseState.from_metadata(blob.metadata)
        if state is not None and state.holds(self.now()):  # running at its deadline (its worker may be gone)
            outcome = Outcome("cancelled", sub.model, sub.created, self.now(), state.started, state.attempt,
                              deadline_error(sub.deadline, sub.created), sub.digest, owner=sub.owner)
            await self._end(sub.task_id, sub.model, outcome, b"", JSON, None, uploaded=upload is not None,
                            hooked=sub.hooked)
            return
        await self._expire(blob, None)


def _uploaded(inbox: Blob) -> bool:
    return Upload.from_metadata(inbox.metadata) is not None


def _error_body(error: str) -> bytes:
    return json.dumps({"error": error}).encode()


async def _nothing() -> None:
    return None


_stores: dict = {}


def get_store(settings: Settings) -> TaskStore:
    """The store of this event loop and storage account, created on first use and reused."""
    key = (asyncio.get_running_loop(), settings.storage, settings.storage_timeout_seconds)
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = TaskStore(Storage(settings.storage, settings.storage_timeout_seconds), settings)
    store.settings = settings
    return store
