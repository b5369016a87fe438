"""What the broker keeps about a task, and how it is written into blob metadata and queue messages.

A task lives in two blobs named by its id:
- the inbox blob holds the payload; its metadata holds the submission (`task`), for idempotent
  submits whether its queue message was sent (`queued`), and, once the task has been claimed, the
  lease state (`state`);
- the outbox blob, written once when the task ends, holds the result (or the error as JSON);
  its metadata holds the outcome (`outcome`). Its existence is the one "finished" marker.

Large payloads and results live in the `uploads` container instead, written by the client or the
worker through a SAS URL (`payload_blob`, `result_blob`): the inbox blob is then empty and its
`upload` record names the read-only snapshot taken at the commit; the outbox blob is empty and its
outcome names the result's snapshot. A snapshot cannot be changed by anyone holding a write URL.

Metadata values must be ASCII header values, so each record is compact JSON with non-ASCII
escaped. Azure allows 8 KB of metadata per blob in all, and a header field read back may be at
most 8 KiB, so every record is bounded in stored bytes, not characters: params at most 4096
(validate.py), an error at most MAX_ERROR_BYTES, the rest a few hundred. The inbox blob's
metadata stays under METADATA_BUDGET whatever a request holds (tests/broker/test_bounds.py).

A queue message names its task and the size of its payload, so a claim can stay within its byte
budget before it downloads anything. A plain submit's message also carries a copy of the inbox blob
as the submit wrote it (its etag, its metadata and, when it fits in MESSAGE_BYTES, the payload):
a first claim writes its lease state with If-Match on that etag and needs no read, because the
write succeeding proves the blob still holds exactly that copy. Any other write to the blob (a
claim, a cancel's delete, an idempotent submit's marks) changes the etag, and the claim then reads
the blob as it always did.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime

TERMINAL = ("succeeded", "failed", "cancelled", "expired")
MAX_ERROR_BYTES = 1024  # an error as stored: a JSON string with non-ASCII escaped, quotes included
MAX_PROGRESS_BYTES = 256  # a progress message as stored, the same way
METADATA_BUDGET = 7 * 1024
# A queue message's text, as sent (XML-escaped), at most: Azure allows 64 KiB, so this leaves room
# for the request's XML around it. A payload rides in its task's message only if the whole fits.
MESSAGE_BYTES = 48 * 1024
MAX_ETAG = 256


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now() -> float:
    return time.time()


def stored_size(value) -> int:
    """Bytes `value` takes as a metadata record: compact JSON, non-ASCII escaped."""
    return len(_dump(value))


def clip_error(message: str, limit: int = MAX_ERROR_BYTES, empty: str = "no reason given") -> str:
    """One line of at most `limit` bytes as stored (an emoji costs 12 bytes there, an ASCII letter one)."""
    message = " ".join(str(message)[: limit * 2].split()) or empty
    if stored_size(message) <= limit:
        return message
    budget = limit - stored_size("…")  # the quotes are counted once, in the ellipsis' size
    used = 0
    for end, char in enumerate(message):
        used += stored_size(char) - 2
        if used > budget:
            return message[:end] + "…"
    return message


def stamp(created: float) -> str:
    """A task's submission time as it appears in the names of its uploaded blobs (an Idempotency-Key
    used again after its task's result expired makes a new task under the same id: new names)."""
    return f"{created:.6f}"


def payload_blob(task_id: str, created: float) -> str:
    """The blob in `uploads` a client writes an uploaded payload to."""
    return f"payloads/{task_id}/{stamp(created)}"


def result_blob(task_id: str, created: float, claim: int) -> str:
    """The blob in `uploads` the worker holding `claim` writes a large result to (one per claim, so
    attempts never write over each other)."""
    return f"results/{task_id}/{stamp(created)}/{claim}"


def upload_owner(name: str) -> tuple[str, str] | None:
    """(task id, stamp) of a blob in `uploads` named by payload_blob or result_blob; None for any other name."""
    parts = name.split("/")
    if ((len(parts) == 3 and parts[0] == "payloads") or (len(parts) == 4 and parts[0] == "results")) \
            and _is_task_id(parts[1]):
        return parts[1], parts[2]
    return None


def expiry_error(ttl: int, started: bool, deadline: float | None = None, created: float = 0.0) -> str:
    """Why a task nobody started in time ended `expired`: the queued TTL, or its own deadline (ttl=S)."""
    if deadline is not None and deadline <= created + ttl:
        limit = f"its deadline, {_seconds(deadline - created)} after its submission (ttl)"
        if started:
            return f"its last attempt ended and it was not started again before {limit}"
        return f"not started before {limit}"
    if started:
        return (f"its last attempt ended and it was not started again within {_seconds(ttl)} of its submission "
                "(BROKER_QUEUED_TTL_SECONDS)")
    return f"not started within {_seconds(ttl)} of its submission (BROKER_QUEUED_TTL_SECONDS)"


def deadline_error(deadline: float, created: float) -> str:
    return f"its deadline, {_seconds(deadline - created)} after its submission (ttl), passed while it ran"


def _seconds(span: float) -> str:
    whole = round(span)
    return f"{whole} second" if whole == 1 else f"{whole} seconds"


def _dump(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


def _known(cls, raw: dict) -> dict:
    """The fields of `cls` in a stored record; a field an older version did not write takes its default."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in raw.items() if k in names}


@dataclass(frozen=True)
class Submission:
    """What a submit recorded; never changes."""

    task_id: str
    model: str
    content_type: str
    params: dict
    created: float
    digest: str | None = None  # hash of model, content type, params and payload; idempotent submits only
    size: int = 0  # payload bytes
    owner: str | None = None  # the scope of the client key it was submitted with (auth.Caller), if any
    deadline: float | None = None  # ttl=S: not started by then, it expires; running then, it is cancelled
    hooked: bool = False  # it has a webhook (kept beside its report in `hooks`: webhooks.py)

    def metadata(self) -> dict:
        record = {"model": self.model, "ct": self.content_type, "params": self.params, "created": self.created,
                  "digest": self.digest, "size": self.size}
        if self.owner:
            record["owner"] = self.owner
        if self.deadline is not None:
            record["deadline"] = self.deadline
        if self.hooked:
            record["hook"] = 1
        return {"task": _dump(record)}

    @classmethod
    def from_metadata(cls, task_id: str, metadata: dict) -> Submission:
        raw = json.loads(metadata["task"])
        return cls(task_id, raw["model"], raw["ct"], raw["params"], raw["created"], raw.get("digest"),
                   raw.get("size", 0), raw.get("owner"), raw.get("deadline"), bool(raw.get("hook")))

    def expires(self, ttl: int) -> float:
        """When this task, if nobody is running it, ends `expired`: its queued TTL, or its deadline."""
        return min(self.created + ttl, self.deadline) if self.deadline is not None else self.created + ttl


@dataclass(frozen=True)
class Enqueued:
    """Idempotent submits only: whether the task's one queue message was sent.

    `msg` is its id once sent; until then `pending` says since when a submit has been sending it,
    so a retry with the key can tell a submit that died before sending from one still at it, and
    `lost` that the send failed (whoever meets the task next sends it)."""

    msg: str | None = None
    pending: float | None = None
    lost: bool = False

    def metadata(self) -> dict:
        return {"queued": _dump(asdict(self))}

    @classmethod
    def from_metadata(cls, metadata: dict) -> Enqueued | None:
        raw = metadata.get("queued")
        return cls(**_known(cls, json.loads(raw))) if raw else None


@dataclass(frozen=True)
class Upload:
    """A payload uploaded through a SAS URL (POST /upload) rather than sent in the request.

    Before the commit, `until` is when the client's upload URL runs out, and the task does not exist
    for anyone but the commit; the commit takes a read-only snapshot of the upload (`snapshot`),
    clears `until`, and queues the task."""

    until: float | None = None
    snapshot: str | None = None

    @property
    def committed(self) -> bool:
        return self.until is None

    def metadata(self) -> dict:
        return {"upload": _dump(asdict(self))}

    @classmethod
    def from_metadata(cls, metadata: dict) -> Upload | None:
        raw = metadata.get("upload")
        return cls(**_known(cls, json.loads(raw))) if raw else None


@dataclass
class LeaseState:
    """Which claim holds the task now, through which token, until when; kept beside the submission.

    Only the current claim (`claim`, counted per task) with its current pop receipt (`receipt`, a
    hash) may change it; the store checks both before it writes anything, and writes with If-Match
    on the blob's etag. `attempt` only ever goes up: a claim after a lease ran out or a retryable
    failure is the next attempt, a claim after a give-back keeps the number (a worker gives back
    what it has not started: on shutdown, and the retried batch-mates it runs one at a time)."""

    msg: str
    until: float | None  # None: given back or failed retryably, waiting in the queue again
    started: float
    attempt: int
    givebacks: int = 0  # claims handed back with seconds=0
    error: str | None = None  # why the last attempt ended, for the "gave up" message
    claim: int = 0
    receipt: str = ""
    freed: str | None = None  # how the last claim ended early: "back" (given back) or "retry"
    progress: float | None = None  # 0.0-1.0 as the worker holding it last said (POST /progress) ...
    progress_message: str | None = None  # ... and what it said with it (at most MAX_PROGRESS_BYTES stored)
    progress_event_at: float | None = None  # when a `progress` webhook event was last queued for it

    def holds(self, at: float) -> bool:
        return self.until is not None and self.until > at

    def next_attempt(self) -> tuple[int, int, str | None]:
        """(attempt, give-backs, error) of the claim that follows this one."""
        if self.freed == "back":
            return self.attempt, self.givebacks, self.error
        error = self.error if self.freed else "the worker's lease ran out before it put a result"
        return self.attempt + 1, self.givebacks, error

    def dump(self) -> str:
        return _dump(asdict(self))

    @classmethod
    def from_metadata(cls, metadata: dict) -> LeaseState | None:
        raw = metadata.get("state")
        return cls(**_known(cls, json.loads(raw))) if raw else None


@dataclass(frozen=True)
class Outcome:
    """How a task ended; written once, with the outbox blob."""

    status: str
    model: str
    created: float
    finished: float
    started: float | None = None
    attempts: int = 0
    error: str | None = None
    digest: str | None = None
    committed_by: str | None = None  # Lease.commit_id of the put that committed it
    ref: str | None = None  # a result uploaded by the worker: its blob in `uploads` (result_blob) ...
    snapshot: str | None = None  # ... and the snapshot of it that is the result
    size: int | None = None  # the result's bytes, when uploaded
    owner: str | None = None  # as the submission's
    hooked: bool | None = None  # it had a webhook: its deliveries' report is in `hooks`

    def metadata(self) -> dict:
        return {"outcome": _dump({k: v for k, v in asdict(self).items() if v is not None})}

    @classmethod
    def from_metadata(cls, metadata: dict) -> Outcome:
        return cls(**_known(cls, json.loads(metadata["outcome"])))


@dataclass(frozen=True)
class Claim:
    """A task handed to a worker: what it runs, and the lease it holds it under.

    The payload comes inline (`payload`) when it is small, else as a read URL (`payload_url`);
    `result_upload_url` is where this claim may write a large result."""

    task_id: str
    model: str
    params: dict
    content_type: str
    payload: bytes | None
    lease: str  # the signed token (lease.Lease, encoded)
    lease_expires: float
    attempt: int
    size: int = 0
    payload_url: str | None = None
    result_upload_url: str | None = None


@dataclass(frozen=True)
class Renewal:
    """A lease after a heartbeat or a give-back: its new token, until when it holds, and (for a
    heartbeat) a fresh result upload URL lasting as long."""

    lease: str
    expires: float
    result_upload_url: str | None = None


@dataclass(frozen=True)
class Grant:
    """An upload handed out by POST /upload: the task it will be, and where and until when to write it."""

    task_id: str
    url: str
    expires: float


@dataclass(frozen=True)
class TaskMessage:
    """The content of a task's queue message."""

    task_id: str
    size: int = 0  # payload bytes; 0 when not known (a message of an older version)
    # The submission it was sent for: an Idempotency-Key used again after its task's result expired
    # makes a new task under the same id, and the old task's message must not deliver the new one.
    created: float | None = None
    # A copy of the inbox blob as its submit wrote it (see the module's docstring), or None.
    etag: str | None = None
    metadata: dict | None = None
    body: str | None = None  # the payload, base64, when it fit

    @classmethod
    def carrying(cls, task_id: str, size: int, created: float, etag: str, metadata: dict,
                 payload: bytes | None) -> TaskMessage:
        """A plain submit's message: the blob's copy, with the payload if it is given and fits."""
        if payload is not None and 4 * ((size + 2) // 3) < MESSAGE_BYTES:  # base64 alone would not fit
            message = cls(task_id, size, created, etag, metadata, base64.b64encode(payload).decode())
            if message.fits():
                return message
        return cls(task_id, size, created, etag, metadata)

    def dump(self) -> str:
        record = {"id": self.task_id, "size": self.size, "created": self.created}
        if self.etag is not None:
            record.update(etag=self.etag, meta=self.metadata)
        if self.body is not None:
            record["body"] = self.body
        return _dump(record)

    def fits(self) -> bool:
        text = self.dump()  # ASCII; XML escapes &, < and > (the SDK sends the text as it is)
        return len(text) + 4 * (text.count("&") + text.count("<") + text.count(">")) <= MESSAGE_BYTES

    def payload(self) -> bytes | None:
        """The payload it carries, if any and whole."""
        if self.body is None:
            return None
        try:
            payload = base64.b64decode(self.body, validate=True)
        except (binascii.Error, ValueError):
            return None
        return payload if len(payload) == self.size else None

    def sent_for(self, sub_created: float) -> bool:
        """Whether this message belongs to the task submitted at `sub_created` (older messages say nothing)."""
        return self.created is None or self.created == sub_created

    @classmethod
    def parse(cls, content) -> TaskMessage | None:
        if not isinstance(content, str):
            return None
        if len(content) == 32:  # an older version's message: the task id alone
            return cls(content) if _is_task_id(content) else None
        try:
            raw = json.loads(content)
            task_id, size, created = raw["id"], raw.get("size", 0), raw.get("created")
        except (ValueError, TypeError, KeyError):
            return None
        if not (isinstance(task_id, str) and _is_task_id(task_id) and isinstance(size, int) and size >= 0):
            return None
        if created is not None and (isinstance(created, bool) or not isinstance(created, (int, float))):
            return None
        etag, metadata, body = raw.get("etag"), raw.get("meta"), raw.get("body")
        if not (isinstance(etag, str) and 0 < len(etag) <= MAX_ETAG and isinstance(metadata, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
            return cls(task_id, size, created)  # no copy (or one that is not well formed): the claim reads the blob
        return cls(task_id, size, created, etag, metadata, body if isinstance(body, str) else None)


def _is_task_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class Task:
    """A task as read back from storage: its submission, lease state and outcome (if any).

    Its status is derived: the outcome's, else running while a lease holds, else expired from
    `expires` on (a queued task nobody started in time), else queued."""

    task_id: str
    model: str
    created: float
    digest: str | None = None
    state: LeaseState | None = None
    outcome: Outcome | None = None
    result_content_type: str | None = None
    expires: float | None = None
    expiry_error: str | None = field(default=None, compare=False)
    upload: Upload | None = None  # its payload was uploaded (or is being: not a task yet until committed)
    owner: str | None = None  # whose it is (a client key's scope); None: anybody's
    deadline: float | None = None  # running past it, it reads (and is soon written) `cancelled`
    with_hook: bool = field(default=False, compare=False)  # an open task's Submission.hooked

    @property
    def hooked(self) -> bool:
        """Whether it has a webhook, whose deliveries its status document reports."""
        return self.with_hook or bool(self.outcome and self.outcome.hooked)

    def visible_to(self, owner: str | None) -> bool:
        """Whether a caller who may see `owner`'s tasks (None: every task) may see this one."""
        return owner is None or self.owner is None or self.owner == owner

    def status(self, at: float) -> str:
        if self.outcome:
            return self.outcome.status
        if self.state and self.state.holds(at):
            return "cancelled" if self.past_deadline(at) else "running"
        if self.expires is not None and at >= self.expires:
            return "expired"
        return "queued"

    def past_deadline(self, at: float) -> bool:
        return self.deadline is not None and at >= self.deadline

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def ended(self, at: float) -> bool:
        """Finished, or expired without its outcome written yet."""
        return self.status(at) in TERMINAL

    def document(self, at: float | None = None) -> dict:
        at = now() if at is None else at
        out, state = self.outcome, self.state
        status = self.status(at)
        if out:
            started, attempts, finished, error = out.started, out.attempts, out.finished, out.error
        else:
            started = state.started if state and state.holds(at) else None
            attempts = state.attempt if state else 0
            finished, error = (self.expires, self.expiry_error) if status == "expired" else (None, None)
            if status == "cancelled":  # running past its deadline: cancelled, its outcome on its way
                finished, error = self.deadline, deadline_error(self.deadline, self.created)
        return {
            "task_id": self.task_id,
            "model": self.model,
            "status": status,
            "created_at": iso(self.created),
            "started_at": iso(started),
            "finished_at": iso(finished),
            "attempts": attempts,
            "error": error,
            "result_content_type": self.result_content_type if out and out.status == "succeeded" else None,
            "progress": state.progress if state and not out and status == "running" else None,
            "progress_message": state.progress_message if state and not out and status == "running" else None,
        }
