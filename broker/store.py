"""The task store: every task operation, over the inbox/outbox containers and a queue per model.

Semantics (docs/API.md, DESIGN.md):
- claim = receive from the model's queue with a visibility timeout (the lease); the lease token
  carries the message id and pop receipt;
- heartbeat = update_message (a new pop receipt, so a new token);
- complete = write the outbox blob with If-None-Match: * (the first outcome wins), then delete the
  message and the inbox blob; a crash in between is healed by the next claim, which finds the
  outbox blob and drops the message;
- the inbox blob's lease state is written with If-Match on its etag, so of two messages for one
  task (an idempotent retry may enqueue a second) only one is ever held at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid

from azure.core import MatchConditions
from azure.core.exceptions import (HttpResponseError, ResourceExistsError, ResourceModifiedError,
                                   ResourceNotFoundError)
from azure.storage.blob import ContentSettings
from azure.storage.queue import QueueMessage

from .errors import Rejected, not_found
from .lease import Lease
from .records import LeaseState, Outcome, Submission, Task, clip_error, iso, now
from .settings import Settings
from .storage import QUEUE_PREFIX, Storage
from .wakeups import Wakeups

POLL_FIRST = 0.02  # long-poll backoff: tens of milliseconds, capped at POLL_CAP
POLL_CAP = 0.1
RESULT_POLL_CAP = 0.5  # getresult?wait= polls storage for results committed by other instances
CLEANUP_PARALLEL = 32
JSON = "application/json"


def idempotent_id(scope: str, key: str) -> str:
    """The task id an Idempotency-Key maps to: two submits with one key race for one blob name."""
    digest = hashlib.sha256(f"{scope}\n{key}".encode()).digest()
    return uuid.UUID(bytes=digest[:16], version=4).hex


def _lease_lost() -> Rejected:
    return Rejected(409, "the lease is lost: it ran out and the task was claimed again, or the task finished")


class TaskStore:
    def __init__(self, storage: Storage, settings: Settings) -> None:
        self.storage = storage
        self.settings = settings
        self.wakeups = Wakeups()
        self._looked_at: dict[str, float] = {}  # model -> when a long-poll here last began a receive

    # ---- reading -------------------------------------------------------------------------

    async def _inbox_props(self, task_id: str):
        try:
            return await self.storage.inbox.get_blob_client(task_id).get_blob_properties()
        except ResourceNotFoundError:
            return None

    async def _outbox_props(self, task_id: str):
        try:
            return await self.storage.outbox.get_blob_client(task_id).get_blob_properties()
        except ResourceNotFoundError:
            return None

    async def _outbox_download(self, task_id: str):
        try:
            downloader = await self.storage.outbox.get_blob_client(task_id).download_blob()
            return downloader.properties, await downloader.readall()
        except ResourceNotFoundError:
            return None

    def _expired(self, outcome: Outcome, at: float) -> bool:
        return outcome.finished + self.settings.result_ttl_seconds <= at

    def _finished_task(self, task_id: str, props) -> Task | None:
        outcome = Outcome.from_metadata(props.metadata)
        if self._expired(outcome, now()):
            return None
        return Task(task_id, outcome.model, outcome.created, outcome.digest, None, outcome,
                    props.content_settings.content_type)

    @staticmethod
    def _open_task(task_id: str, props) -> Task:
        sub = Submission.from_metadata(task_id, props.metadata)
        return Task(task_id, sub.model, sub.created, sub.digest, LeaseState.from_metadata(props.metadata))

    async def _read_both(self, task_id: str):
        """(outbox props, inbox props) of a task, read side by side."""
        out, inbox = await asyncio.gather(self._outbox_props(task_id), self._inbox_props(task_id))
        if out is None and inbox is None:
            # The task may have finished between the two reads (the inbox blob goes only after the
            # outbox blob is written), so look at the outbox once more before calling it unknown.
            out = await self._outbox_props(task_id)
        return out, inbox

    async def _get(self, task_id: str, with_result: bool = False) -> tuple[Task | None, bytes | None]:
        # The outbox first: a finished task (what callers mostly ask about) costs one read.
        read_outbox = self._outbox_download if with_result else self._outbox_props
        out = await read_outbox(task_id)
        if out is None:
            inbox = await self._inbox_props(task_id)
            if inbox is not None:
                return self._open_task(task_id, inbox), None
            out = await read_outbox(task_id)  # it may have finished between the two reads
            if out is None:
                return None, None
        props, body = out if with_result else (out, None)
        return self._finished_task(task_id, props), body

    async def status(self, task_id: str) -> dict:
        task, _ = await self._get(task_id)
        if task is None:
            raise not_found()
        return task.document()

    async def result(self, task_id: str, wait: float) -> tuple[Task, bytes | None]:
        deadline = time.monotonic() + wait
        delay = POLL_FIRST
        while True:
            with self.wakeups.watch("task:" + task_id) as ticket:
                task, body = await self._get(task_id, with_result=True)
                if task is None:
                    raise not_found()
                remaining = deadline - time.monotonic()
                if task.finished or remaining <= 0:
                    return task, body
                woken = await self.wakeups.wait(ticket, min(delay, remaining))
            delay = POLL_FIRST if woken else min(delay * 2, RESULT_POLL_CAP)

    # ---- submitting ----------------------------------------------------------------------

    async def submit(self, model: str, payload: bytes, content_type: str, params: dict,
                     idempotency_key: str | None = None, scope: str = "") -> tuple[dict, bool]:
        """Store the payload and enqueue the task. Returns (status document, created)."""
        await self.storage.ensure_containers()
        if idempotency_key is None:
            sub = Submission(uuid.uuid4().hex, model, content_type, params, now())
            await self._upload_inbox(sub, payload, overwrite=True)
            await self._enqueue_new(sub)
            return Task(sub.task_id, model, sub.created).document(), True
        digest = hashlib.sha256(payload).hexdigest()[:32]
        sub = Submission(idempotent_id(scope, idempotency_key), model, content_type, params, now(), digest)
        return await self._submit_once(sub, payload)

    async def _upload_inbox(self, sub: Submission, payload: bytes, overwrite: bool) -> bool:
        try:
            await self.storage.inbox.get_blob_client(sub.task_id).upload_blob(
                payload, overwrite=overwrite, metadata=sub.metadata(),
                content_settings=ContentSettings(content_type=sub.content_type))
            return True
        except ResourceExistsError:
            return False

    async def _enqueue_new(self, sub: Submission, take_back: bool = True) -> None:
        try:
            await self._enqueue(sub.model, sub.task_id)
        except BaseException:
            if take_back:
                # Nobody will ever be told this task id: take the payload back so nothing dangles.
                await self._delete_inbox(sub.task_id)
            raise

    async def _enqueue(self, model: str, task_id: str) -> None:
        queue = self.storage.queue(model)
        try:
            await queue.send_message(task_id, time_to_live=-1)
        except ResourceNotFoundError:
            self.storage.forget_queue(model)
            await self.storage.ensure_queue(model)
            await queue.send_message(task_id, time_to_live=-1)
        self.wakeups.notify("model:" + model)

    async def _submit_once(self, sub: Submission, payload: bytes) -> tuple[dict, bool]:
        created, out = await asyncio.gather(self._upload_inbox(sub, payload, overwrite=False),
                                            self._outbox_props(sub.task_id))
        if out is not None:
            finished = self._finished_task(sub.task_id, out)
            if finished is not None:
                if created:
                    await self._delete_inbox(sub.task_id)
                return self._same_submission(finished, sub), False
            await self._delete_quietly(self.storage.outbox, sub.task_id, etag=out.etag)  # expired leftover
        if created:
            # No take-back: a concurrent submit with this key may already have answered 202 for
            # this blob, and a retry with the key enqueues it again (it is never claimed yet).
            await self._enqueue_new(sub, take_back=False)
            return Task(sub.task_id, sub.model, sub.created).document(), True
        props = await self._inbox_props(sub.task_id)
        if props is None:  # it finished between our two reads: read it again as a finished task
            task, _ = await self._get(sub.task_id)
            if task is None:
                raise Rejected(503, "the task changed while it was being read; retry the submit",
                               headers={"Retry-After": "1"})
            return self._same_submission(task, sub), False
        task = self._open_task(sub.task_id, props)
        document = self._same_submission(task, sub)
        if task.state is None:
            # Never claimed: the first submit may have died before enqueueing. A second message
            # is harmless (claims hold one at a time and drop the spare); a lost task is not.
            await self._enqueue(sub.model, sub.task_id)
        return document, False

    @staticmethod
    def _same_submission(task: Task, sub: Submission) -> dict:
        if task.model != sub.model or (task.digest and task.digest != sub.digest):
            raise Rejected(409, "this Idempotency-Key was already used with a different payload or model",
                           task.document())
        return task.document()

    # ---- claiming ------------------------------------------------------------------------

    async def claim(self, model: str, max_tasks: int, wait: float, lease_seconds: int) -> list[dict]:
        """Up to max_tasks claimed tasks, long-polling up to `wait` seconds for the first. Each task's
        `payload` is raw bytes, for respond.tasks_response to put in the body as base64."""
        deadline = time.monotonic() + wait
        delay = POLL_FIRST
        woken, waited = True, 0.0  # the first look always goes to storage
        while True:
            with self.wakeups.watch("model:" + model) as ticket:
                if woken or not self._looked_within(model, waited):
                    messages = await self._look(model, max_tasks, lease_seconds)
                else:
                    messages = []  # another long-poll here looked while this one slept: no need to ask again
                if messages:
                    tasks = await self._take_all(model, messages, lease_seconds)
                    if tasks or time.monotonic() >= deadline:
                        return tasks
                    woken = True
                    continue  # every message was stale; there may be live ones behind them
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                waited = min(delay, remaining)
                woken = await self.wakeups.wait(ticket, waited)
            delay = POLL_FIRST if woken else min(delay * 2, POLL_CAP)

    async def _look(self, model: str, max_tasks: int, lease_seconds: int) -> list[QueueMessage]:
        """Receive, noting when: long-polls on one model in this instance share one storage poll per
        backoff interval (a look in flight counts) instead of each polling on its own."""
        self._looked_at[model] = time.monotonic()
        messages = await self._receive(model, max_tasks, lease_seconds)
        if len(messages) >= max_tasks:
            self.wakeups.notify("model:" + model)  # there may be more: the other long-polls look now
        return messages

    def _looked_within(self, model: str, seconds: float) -> bool:
        return time.monotonic() - self._looked_at.get(model, float("-inf")) < seconds

    async def _receive(self, model: str, count: int, lease_seconds: int) -> list[QueueMessage]:
        pages = self.storage.queue(model).receive_messages(
            messages_per_page=count, max_messages=count, visibility_timeout=lease_seconds)
        try:
            async for page in pages.by_page():
                return [message async for message in page]
        except ResourceNotFoundError:  # no task was ever submitted for this model
            pass
        return []

    async def _take_all(self, model: str, messages: list[QueueMessage], lease_seconds: int) -> list[dict]:
        firsts: dict[str, QueueMessage] = {}
        spares = []
        for message in messages:
            if message.content in firsts:
                spares.append(message)  # two messages of one task in one batch: hold one
            else:
                firsts[message.content] = message
        results = await asyncio.gather(*(self._take(model, m, lease_seconds) for m in firsts.values()),
                                       *(self._drop(model, m.id, m.pop_receipt) for m in spares))
        return [task for task in results[: len(firsts)] if task]

    async def _take(self, model: str, message: QueueMessage, lease_seconds: int) -> dict | None:
        """Turn a received message into a claimed task, or drop it if it is stale."""
        task_id = message.content
        if not (isinstance(task_id, str) and len(task_id) == 32):
            await self._drop(model, message.id, message.pop_receipt)
            return None
        blob = self.storage.inbox.get_blob_client(task_id)
        # On a first delivery an outcome exists only if a cancel or a finish did not get to delete
        # the inbox blob (a cancelled task's only message, or a spare message of an idempotent
        # resubmit); the first-wins outbox keeps that rare case harmless (its worker's heartbeat
        # and put get 409/410, and the put tidies up), so skip the outbox read.
        first_delivery = (message.dequeue_count or 0) <= 1
        inbox, out = await asyncio.gather(self._download(blob),
                                          _nothing() if first_delivery else self._outbox_props(task_id))
        if out is not None or inbox is None:  # finished (maybe healed now), cancelled or expired
            await asyncio.gather(self._drop(model, message.id, message.pop_receipt),
                                 self._delete_inbox(task_id) if inbox is not None else _nothing())
            return None
        props, payload = inbox
        sub = Submission.from_metadata(task_id, props.metadata)
        state = LeaseState.from_metadata(props.metadata)
        at = now()
        if state and state.msg != message.id and state.holds(at):
            await self._drop(model, message.id, message.pop_receipt)  # a spare message of a held task
            return None
        givebacks = state.givebacks if state and state.msg == message.id else 0
        attempt = message.dequeue_count - givebacks
        error = state.error if state else None
        if state and state.until is not None:
            error = "the worker's lease ran out before it put a result"
        if attempt > self.settings.max_attempts:
            await self._give_up(sub, state, message, attempt - 1, error)
            return None
        new_state = LeaseState(message.id, at + lease_seconds, at, attempt, givebacks, error)
        try:
            await blob.set_blob_metadata({**sub.metadata(), "state": new_state.dump()},
                                         etag=props.etag, match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            # Another message of this task was claimed at the same moment, or it was cancelled.
            await self._drop(model, message.id, message.pop_receipt)
            return None
        lease = Lease(task_id, model, message.id, message.pop_receipt, attempt, sub.created, at, sub.digest)
        expires = message.next_visible_on.timestamp() if message.next_visible_on else at + lease_seconds
        return {
            "task_id": task_id,
            "model": model,
            "params": sub.params,
            "content_type": sub.content_type,
            "payload": payload,  # raw bytes: the route encodes it (respond.tasks_response)
            "lease": lease.encode(self.settings.lease_secret),
            "lease_expires_at": iso(expires),
            "attempt": attempt,
        }

    async def _give_up(self, sub: Submission, state: LeaseState | None, message: QueueMessage,
                       attempts: int, error: str | None) -> None:
        reason = f"gave up after {attempts} attempts: {error or 'no attempt put a result'}"
        outcome = Outcome("failed", sub.model, sub.created, now(), state.started if state else None,
                          attempts, clip_error(reason), sub.digest)
        await self._write_outcome(sub.task_id, outcome, _error_body(outcome.error), JSON)
        await asyncio.gather(self._drop(sub.model, message.id, message.pop_receipt),
                             self._delete_inbox(sub.task_id))
        self.wakeups.notify("task:" + sub.task_id)

    @staticmethod
    async def _download(blob):
        try:
            downloader = await blob.download_blob()
            return downloader.properties, await downloader.readall()
        except ResourceNotFoundError:
            return None

    # ---- holding a lease -----------------------------------------------------------------

    async def _held_state(self, lease: Lease):
        """The inbox props and lease state of a task this lease still holds, or the right refusal."""
        out, inbox = await self._read_both(lease.task_id)
        if out is not None:
            outcome = Outcome.from_metadata(out.metadata)
            document = self._finished_task(lease.task_id, out)
            if outcome.status == "cancelled":
                await self._drop(lease.model, lease.msg, lease.receipt)
                raise Rejected(410, "the task was cancelled", document.document() if document else None)
            raise Rejected(409, "the task already finished", document.document() if document else None)
        if inbox is None:
            raise not_found()
        state = LeaseState.from_metadata(inbox.metadata)
        if state is None or state.msg != lease.msg:
            raise _lease_lost()
        return inbox, state

    async def _write_state(self, lease: Lease, props, state: LeaseState) -> None:
        sub = Submission.from_metadata(lease.task_id, props.metadata)
        try:
            await self.storage.inbox.get_blob_client(lease.task_id).set_blob_metadata(
                {**sub.metadata(), "state": state.dump()}, etag=props.etag,
                match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            raise _lease_lost() from None

    async def _set_visibility(self, lease: Lease, seconds: int) -> QueueMessage:
        try:
            return await self.storage.queue(lease.model).update_message(
                lease.msg, pop_receipt=lease.receipt, visibility_timeout=seconds)
        except (ResourceNotFoundError, HttpResponseError) as exc:
            if isinstance(exc, HttpResponseError) and (exc.status_code or 0) >= 500:
                raise
            raise _lease_lost() from None

    async def extend(self, task_id: str, lease: Lease, seconds: int) -> dict:
        props, state = await self._held_state(lease)
        if seconds == 0:
            # Record the give-back before the message becomes visible, so the next claim reads it.
            state.until, state.givebacks = None, state.givebacks + 1
            await self._write_state(lease, props, state)
            updated = await self._set_visibility(lease, 0)
            self.wakeups.notify("model:" + lease.model)
            expires = now()
        else:
            updated = await self._set_visibility(lease, seconds)
            state.until = now() + seconds
            await self._write_state(lease, props, state)
            expires = updated.next_visible_on.timestamp() if updated.next_visible_on else state.until
        return {"lease": lease.renewed(updated.pop_receipt).encode(self.settings.lease_secret), "lease_expires_at": iso(expires)}

    # ---- finishing -----------------------------------------------------------------------

    async def complete(self, lease: Lease, body: bytes, content_type: str) -> dict:
        outcome = Outcome("succeeded", lease.model, lease.created, now(), lease.started, lease.attempt,
                          None, lease.digest, lease.fingerprint())
        return await self._finish(lease, outcome, body, content_type)

    async def fail(self, lease: Lease, error: str, retryable: bool) -> dict:
        error = clip_error(error)
        if retryable and lease.attempt < self.settings.max_attempts:
            return await self._requeue(lease, error)
        if retryable:
            error = clip_error(f"gave up after {lease.attempt} attempts: {error}")
        outcome = Outcome("failed", lease.model, lease.created, now(), lease.started, lease.attempt,
                          error, lease.digest, lease.fingerprint())
        return await self._finish(lease, outcome, _error_body(error), JSON)

    async def _requeue(self, lease: Lease, error: str) -> dict:
        props, state = await self._held_state(lease)
        state.until, state.error = None, error
        await self._write_state(lease, props, state)
        await self._set_visibility(lease, 0)
        self.wakeups.notify("model:" + lease.model)
        return {"task_id": lease.task_id, "status": "queued"}

    async def _write_outcome(self, task_id: str, outcome: Outcome, body: bytes, content_type: str) -> Outcome | None:
        """Write the outbox blob unless one exists; returns the outcome that was there first, if any."""
        try:
            await self.storage.outbox.get_blob_client(task_id).upload_blob(
                body, overwrite=False, metadata=outcome.metadata(),
                content_settings=ContentSettings(content_type=content_type))
            return None
        except ResourceExistsError:
            props = await self._outbox_props(task_id)
            if props is None:  # deleted by cleanup in between: it had expired
                raise not_found() from None
            return Outcome.from_metadata(props.metadata)

    async def _finish(self, lease: Lease, outcome: Outcome, body: bytes, content_type: str) -> dict:
        await self.storage.ensure_containers()
        if now() >= lease.created + self.settings.result_ttl_seconds and await self._inbox_props(lease.task_id) is None:
            # Old enough to have finished, expired and been cleaned away: nothing to put a result to.
            # (Asked before writing: after the write, a claim healing this very write also deletes
            # the inbox blob, so its absence then would prove nothing. Young tasks skip the read.)
            raise not_found()
        first = await self._write_outcome(lease.task_id, outcome, body, content_type)
        # Finished either way: drop the message and the payload (a repeated put heals a put that
        # wrote its outcome and then could not tidy up).
        await asyncio.gather(self._drop(lease.model, lease.msg, lease.receipt), self._delete_inbox(lease.task_id))
        if first is None:
            self.wakeups.notify("task:" + lease.task_id)
            return {"task_id": lease.task_id, "status": outcome.status}
        if first.committed_by == outcome.committed_by:  # the same put, repeated
            return {"task_id": lease.task_id, "status": first.status}
        task, _ = await self._get(lease.task_id)
        document = task.document() if task else None
        if first.status == "cancelled":
            raise Rejected(410, "the task was cancelled", document)
        raise Rejected(409, "another attempt already put this task's outcome", document)

    async def cancel(self, task_id: str) -> dict:
        task, _ = await self._get(task_id)
        if task is None:
            raise not_found()
        if not task.finished:
            state = task.state if task.state and task.state.holds(now()) else None
            outcome = Outcome("cancelled", task.model, task.created, now(), state.started if state else None,
                              task.state.attempt if task.state else 0, None, task.digest)
            if await self._write_outcome(task_id, outcome, b"", JSON) is None:
                await self._delete_inbox(task_id)
                self.wakeups.notify("task:" + task_id)
            task, _ = await self._get(task_id)
            if task is None:
                raise not_found()
        if task.outcome.status == "cancelled":
            return task.document()
        raise Rejected(409, f"the task already {task.outcome.status} and cannot be cancelled", task.document())

    # ---- housekeeping --------------------------------------------------------------------

    async def _drop(self, model: str, msg: str, receipt: str) -> None:
        try:
            await self.storage.queue(model).delete_message(msg, receipt)
        except (ResourceNotFoundError, HttpResponseError) as exc:
            if isinstance(exc, HttpResponseError) and (exc.status_code or 0) >= 500:
                raise
            # The receipt is stale: another claim holds the message and will clean it up.

    async def _delete_inbox(self, task_id: str) -> None:
        await self._delete_quietly(self.storage.inbox, task_id)

    @staticmethod
    async def _delete_quietly(container, name: str, etag: str | None = None) -> None:
        """Delete a blob if it is there (and unchanged, given an etag)."""
        kwargs = dict(etag=etag, match_condition=MatchConditions.IfNotModified) if etag else {}
        try:
            await container.get_blob_client(name).delete_blob(**kwargs)
        except (ResourceNotFoundError, ResourceModifiedError):
            pass

    async def stats(self) -> dict:
        names = [q.name async for q in self.storage.queues.list_queues(name_starts_with=QUEUE_PREFIX)]
        props = await asyncio.gather(*(self.storage.queues.get_queue_client(n).get_queue_properties() for n in names))
        return {"models": {n[len(QUEUE_PREFIX):]: {"queued": p.approximate_message_count or 0}
                           for n, p in zip(names, props)}}

    async def health(self) -> None:
        await self.storage.ensure_containers()
        await asyncio.gather(self.storage.inbox.get_container_properties(),
                             self.storage.queues.get_service_properties())

    async def cleanup(self) -> int:
        """Delete results past their TTL and what is left of their tasks; at most cleanup_batch."""
        await self.storage.ensure_containers()
        cutoff = now() - self.settings.result_ttl_seconds
        expired: list[str] = []
        async for blob in self.storage.outbox.list_blobs():
            if blob.last_modified.timestamp() <= cutoff:
                expired.append(blob.name)
                if len(expired) >= self.settings.cleanup_batch:
                    break
        for start in range(0, len(expired), CLEANUP_PARALLEL):
            names = expired[start:start + CLEANUP_PARALLEL]
            # Outbox last: a task whose outbox blob is still there is retried by the next run.
            await asyncio.gather(*(self._delete_inbox(n) for n in names))
            await asyncio.gather(*(self._delete_quietly(self.storage.outbox, n) for n in names))
        return len(expired)


def _error_body(error: str) -> bytes:
    return json.dumps({"error": error}).encode()


async def _nothing() -> None:
    return None


_stores: dict = {}


def get_store(settings: Settings) -> TaskStore:
    """The store of this event loop and storage account, created on first use and reused."""
    key = (asyncio.get_running_loop(), settings.storage_connection, settings.storage_timeout_seconds)
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = TaskStore(Storage(settings.storage_connection, settings.storage_timeout_seconds), settings)
    store.settings = settings
    return store
