"""The one module that talks to storage: blob containers and task queues, as small records. The calls
on a task's path (a blob's put, head, read, metadata write and delete; a queue message's send,
receive, update and delete; a queue's peek and count) go through rest.py, which speaks the REST
API at a third of the SDK's CPU per call; the rest (creating containers and queues, listings,
snapshots, batches, leases, SAS) through the SDK.

The store (store.py) reads as state transitions over these calls; every "is it there", "write it
unless it changed" and "delete it if it is still there" idiom is spelled once, here:
- `Container.head/read` answer None for a blob that is not there;
- `Container.create` answers None when the blob exists (If-None-Match: *), `set_metadata` when it
  changed or went (If-Match on its etag);
- `Queues.update` raises `MessageGone` (deleted, or expired at its time-to-live) or `ReceiptStale`
  (another receive or update replaced that pop receipt), so callers can tell the two apart;
- every call turns a timeout or a 5xx into the domain error `StorageUnavailable` (the HTTP edge
  answers it 503), and an answer the HTTP client cannot parse into `RecordUnreadable`.

It also signs the URLs through which clients and workers move bytes without the app (`Signer`):
SAS for one blob (or one snapshot of it), with only the permissions and lifetime asked for, signed
with the account key of a connection string, or, for an identity-based connection (a managed
identity, no key), as user delegation SAS (`DelegationSigner`).

One blob and one queue service client, and a REST session for each, per event loop, reused.
Retries are short and few on purpose: a request to the broker must answer (503 if need be) rather
than hang while storage is away, and the caller retries.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape as xml_escape

import aiohttp
from azure.core import MatchConditions
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import generate_blob_sas
from azure.storage.blob.aio import BlobLeaseClient, BlobServiceClient, ContainerClient
from azure.storage.blob.aio import LinearRetry as BlobRetry
from azure.storage.queue._shared.policies_async import LinearRetry as QueueRetry
from azure.storage.queue.aio import QueueClient, QueueServiceClient

from . import rest
from .errors import RecordUnreadable, StorageUnavailable
from .settings import SettingsError, StorageConfig

INBOX = "inbox"
OUTBOX = "outbox"
UPLOADS = "uploads"  # what clients and workers write through SAS URLs: large payloads and results
SIGNALS = "signals"  # one empty blob per model, touched when a task of it is queued (idle workers watch it)
LIMITS = "limits"  # counters of rate limits and token quotas, and token revocations
HOOKS = "hooks"  # what webhook deliveries did, a blob per task (its metadata)
WEBHOOK_QUEUE = "webhooks"  # webhook events to deliver (the queue-triggered function in delivery.py reads it)
QUEUE_PREFIX = "tasks-"


def unparseable(exc: BaseException) -> bool:
    """Storage answered, but with a response the HTTP client refuses to parse (a header field over
    8 KiB: a blob whose metadata no version of the broker writes). Asking again will not help."""
    return isinstance(exc, rest.Unparseable) or (
        isinstance(exc, ServiceResponseError) and isinstance(exc.inner_exception, aiohttp.ClientResponseError))


def is_outage(exc: BaseException) -> bool:
    """Storage did not answer, or answered with a server error."""
    if unparseable(exc):
        return False
    if isinstance(exc, (ServiceRequestError, ServiceResponseError, rest.NoAnswer, asyncio.TimeoutError,
                        ConnectionError)):
        return True
    if isinstance(exc, rest.Refused):
        return exc.status >= 500
    return isinstance(exc, HttpResponseError) and (exc.status_code or 0) >= 500


def _storage_call(method):
    """An adapter call: SDK failures leave it as the broker's own errors."""

    @functools.wraps(method)
    async def call(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except Exception as exc:
            if unparseable(exc):
                raise RecordUnreadable() from exc
            if is_outage(exc):
                raise StorageUnavailable() from exc
            if isinstance(exc, HttpResponseError) and exc.status_code == 403 and not isinstance(exc, ClientAuthenticationError):
                # An identity without the role, a key for another account: a setting to fix (503), as
                # storage's own authentication failures are.
                raise ClientAuthenticationError(message=str(exc), response=exc.response) from exc
            if isinstance(exc, rest.Refused) and exc.credentials_refused:
                raise ClientAuthenticationError(message=str(exc)) from exc
            raise

    return call


class MessageGone(Exception):
    """The queue message does not exist: deleted, or past its time-to-live."""


class ReceiptStale(Exception):
    """The pop receipt is not the message's current one: a later receive or update replaced it."""


@dataclass(frozen=True)
class Blob:
    name: str
    metadata: dict
    etag: str
    content_type: str | None
    created: float
    size: int = 0
    body: bytes | None = None
    snapshot: str | None = None
    modified: float = 0.0


@dataclass(frozen=True)
class Message:
    id: str
    receipt: str
    content: object = None
    dequeue_count: int = 0
    visible_at: float | None = None  # when it becomes visible again (the lease's end), storage's clock


def _blob(properties, body: bytes | None = None) -> Blob:
    settings = properties.content_settings
    created = properties.creation_time or properties.last_modified
    modified = properties.last_modified
    return Blob(properties.name, dict(properties.metadata or {}), properties.etag,
                settings.content_type if settings else None, created.timestamp() if created else 0.0,
                properties.size or 0, body, getattr(properties, "snapshot", None),
                modified.timestamp() if modified else 0.0)


def _time(text: str | None, absent: float | None = 0.0) -> float | None:
    """An HTTP date (storage's headers and queue XML) as a Unix time; `absent` if there is none."""
    return parsedate_to_datetime(text).timestamp() if text else absent


def _meta(metadata: dict) -> dict[str, str]:
    """Blob metadata as the request headers that set it."""
    return {f"x-ms-meta-{k}": v for k, v in metadata.items()}


def _answered_blob(name: str, answer: rest.Answer, body: bytes | None = None, snapshot: str | None = None) -> Blob:
    """A blob from the headers of a GET or HEAD of it."""
    headers = answer.headers
    metadata = {k[10:]: v for k, v in headers.items() if k[:10].lower() == "x-ms-meta-"}
    modified = _time(headers.get("Last-Modified"))
    return Blob(name, metadata, headers.get("ETag", ""), headers.get("Content-Type"),
                _time(headers.get("x-ms-creation-time")) or modified, int(headers.get("Content-Length") or 0),
                body, snapshot, modified)


def _only_condition_not_met(answer: rest.Answer) -> None:
    """A 412 means "changed since that etag" only with ConditionNotMet; any other (a lease) is raised."""
    if answer.status == 412 and answer.headers.get("x-ms-error-code") != "ConditionNotMet":
        raise rest.Refused(412, answer.headers.get("x-ms-error-code", ""))


def _listed_messages(answer: rest.Answer) -> list[Message]:
    """The messages of a Get Messages or Peek Messages answer, in queue order."""
    messages = []
    for element in ElementTree.fromstring(answer.body):
        messages.append(Message(element.findtext("MessageId") or "", element.findtext("PopReceipt") or "",
                                element.findtext("MessageText"), int(element.findtext("DequeueCount") or 0),
                                _time(element.findtext("TimeNextVisible"), None)))
    return messages


class Signer:
    """Signs SAS URLs for single blobs with the account key of the connection string."""

    def __init__(self, account: str, key: str | None) -> None:
        self.account, self.key = account, key

    def check(self) -> None:
        """Raise the SettingsError that says why URLs cannot be signed, if they cannot."""
        if not self.key:
            raise SettingsError("the storage connection has no account key to sign upload and download URLs with "
                                "(use a connection string with AccountKey, or an identity-based connection)")

    async def _signing(self) -> dict:
        """What generate_blob_sas signs with."""
        self.check()
        return {"account_key": self.key}

    async def sign(self, url: str, container: str, name: str, permission: str, expires: float,
                   snapshot: str | None = None, content_type: str | None = None, disposition: str | None = None) -> str:
        token = generate_blob_sas(self.account, container, name, snapshot=snapshot, permission=permission,
                                  expiry=datetime.fromtimestamp(expires, UTC), content_type=content_type,
                                  content_disposition=disposition, **await self._signing())
        return f"{url}{'&' if '?' in url else '?'}{token}"


class DelegationSigner(Signer):
    """Signs user delegation SAS: with a key storage hands the broker's identity (no account key is
    needed, or exists), fetched once and renewed well before it runs out. Only Blob storage has
    them, which is all the broker hands out URLs for."""

    KEY_LIFETIME = 2 * 86400  # at most 7 days; longer than any URL the broker signs
    RENEW_BEFORE = 12 * 3600

    def __init__(self, service: BlobServiceClient) -> None:
        super().__init__(service.account_name, None)
        self.service = service
        self._key = None
        self._key_expires = 0.0
        self._fetching: asyncio.Lock | None = None

    def check(self) -> None:
        return None

    async def _signing(self) -> dict:
        if time.time() >= self._key_expires - self.RENEW_BEFORE:
            self._fetching = self._fetching or asyncio.Lock()
            async with self._fetching:
                if time.time() >= self._key_expires - self.RENEW_BEFORE:
                    await self._fetch()
        return {"user_delegation_key": self._key}

    @_storage_call
    async def _fetch(self) -> None:
        now = time.time()
        self._key = await self.service.get_user_delegation_key(datetime.fromtimestamp(now - 300, UTC),
                                                               datetime.fromtimestamp(now + self.KEY_LIFETIME, UTC))
        self._key_expires = now + self.KEY_LIFETIME


class Container:
    """One blob container, its blobs named by task id (in `uploads`: by a path under it)."""

    def __init__(self, client: ContainerClient, signer: Signer | None = None, service: rest.Account | None = None) -> None:
        self.client = client
        self.signer = signer
        self.service = service

    def _path(self, name: str) -> str:
        return f"/{self.client.container_name}/{quote(name, safe='/~')}"

    async def _write(self, name: str, body: bytes, metadata: dict, content_type: str | None, **headers: str) -> str:
        """Put Blob (a block blob, whole); its etag."""
        headers = {"x-ms-blob-type": "BlockBlob", **headers, **_meta(metadata)}
        if content_type:
            headers["x-ms-blob-content-type"] = content_type
        answer = await self.service.call("PUT", self._path(name), headers=headers, body=body, expect=(201,))
        return answer.headers["ETag"]

    async def url(self, name: str, permission: str, expires: float, snapshot: str | None = None,
                  content_type: str | None = None, disposition: str | None = None) -> str:
        """A SAS URL for one blob (or one snapshot of it): `permission` ("r", "cw") until `expires`
        (a Unix time); a read may name the Content-Type and Content-Disposition storage answers with."""
        # Composed here rather than through get_blob_client, which builds a whole client (0.17 ms) per call.
        url = f"{self.client.url}/{quote(name, safe='/~')}" + (f"?snapshot={quote(snapshot)}" if snapshot else "")
        return await self.signer.sign(url, self.client.container_name, name, permission, expires, snapshot,
                                      content_type, disposition)

    @_storage_call
    async def head(self, name: str, snapshot: str | None = None) -> Blob | None:
        answer = await self.service.call("HEAD", self._path(name), {"snapshot": snapshot} if snapshot else None,
                                         expect=(200, 404))
        return _answered_blob(name, answer, None, snapshot) if answer.status == 200 else None

    @_storage_call
    async def snapshot(self, name: str) -> Blob | None:
        """A read-only snapshot of the blob as it is now (nothing a write SAS allows can change or
        delete it), with its size, etag and content type; None if the blob has no committed content.

        Read from a listing, not a HEAD: whoever holds a write URL can set the blob's metadata, up
        to a header the HTTP client refuses to parse, and a listing leaves metadata out."""
        blob = self.client.get_blob_client(name)
        try:
            taken = await blob.create_snapshot()
        except ResourceNotFoundError:
            return None
        try:
            async for listed in self.client.list_blobs(name_starts_with=name, include=["snapshots"]):
                if listed.name == name and listed.snapshot == taken["snapshot"]:
                    return _blob(listed)
        except BaseException:
            await self.delete_snapshot(name, taken["snapshot"])
            raise
        return None

    @_storage_call
    async def read(self, name: str) -> Blob | None:
        answer = await self.service.call("GET", self._path(name), expect=(200, 404))
        return _answered_blob(name, answer, answer.body) if answer.status == 200 else None

    @_storage_call
    async def create(self, name: str, body: bytes, metadata: dict, content_type: str) -> str | None:
        """Write a new blob; its etag, or None if a blob of that name exists."""
        try:
            return await self._write(name, body, metadata, content_type, **{"If-None-Match": "*"})
        except rest.Refused as exc:
            if exc.status == 409 or (exc.status, exc.code) == (412, "ConditionNotMet"):  # the SDK takes both
                return None
            raise

    @_storage_call
    async def put(self, name: str, body: bytes, metadata: dict, content_type: str) -> str:
        return await self._write(name, body, metadata, content_type)

    @_storage_call
    async def set_metadata(self, name: str, metadata: dict, etag: str) -> str | None:
        """Replace the metadata if the blob is unchanged since `etag`; the new etag, or None if it
        changed or is gone."""
        headers = {"If-Match": etag, **_meta(metadata)}
        answer = await self.service.call("PUT", self._path(name), {"comp": "metadata"}, headers,
                                         expect=(200, 404, 412))
        _only_condition_not_met(answer)
        return answer.headers["ETag"] if answer.status == 200 else None

    @_storage_call
    async def delete(self, name: str, etag: str | None = None) -> bool:
        """Delete the blob if it is there (and unchanged since `etag`, given one), with its snapshots;
        whether this call deleted it. A lease on it (whoever holds a write URL can take one) is broken
        first: only the broker decides when a blob goes."""
        headers = {"x-ms-delete-snapshots": "include", **({"If-Match": etag} if etag else {})}
        for again in (False, True):
            answer = await self.service.call("DELETE", self._path(name), headers=headers, expect=(202, 404, 412))
            code = answer.headers.get("x-ms-error-code", "")
            if answer.status != 412 or not code.startswith("LeaseId"):
                _only_condition_not_met(answer)
                return answer.status == 202  # 404: not there; 412 (ConditionNotMet): changed since `etag`
            if again:
                raise rest.Refused(answer.status, code)
            await BlobLeaseClient(self.client.get_blob_client(name)).break_lease(lease_break_period=0)
        return False

    @_storage_call
    async def delete_batch(self, names: list[str]) -> int:
        """Delete up to 256 blobs, with their snapshots, in one request (Blob Batch); how many went. A
        blob that is not there, or cannot go now, is left as it is (the caller knows who sweeps it)."""
        results = await self.client.delete_blobs(*names, delete_snapshots="include", raise_on_any_failure=False)
        return sum([1 async for result in results if result.status_code == 202])

    @_storage_call
    async def delete_snapshot(self, name: str, snapshot: str) -> None:
        try:
            await self.client.get_blob_client(name, snapshot=snapshot).delete_blob()
        except ResourceNotFoundError:
            pass

    @_storage_call
    async def count(self, name: str) -> int:
        """Add one to the counter `name` (an append blob, made on first use) and return its new value:
        atomic in storage, so instances counting at once never lose a count (at most 50,000)."""
        blob = self.client.get_blob_client(name)
        for _ in range(3):
            try:
                appended = await blob.append_block(b".")
                return int(appended["blob_committed_block_count"])
            except ResourceNotFoundError:
                try:
                    await blob.create_append_blob(match_condition=MatchConditions.IfMissing)
                except (ResourceExistsError, ResourceModifiedError):
                    pass  # another instance made it first: count on it
        raise StorageUnavailable()

    @_storage_call
    async def touch(self, name: str) -> None:
        """Write the blob empty (a new etag: what a watcher of it waits for)."""
        await self._write(name, b"", {}, None)

    @_storage_call
    async def page(self, continuation: str | None, size: int, metadata: bool = False,
                   uncommitted: bool = False, prefix: str | None = None) -> tuple[list[Blob], str | None]:
        """One page of the listing from `continuation`, and where the next page starts (None: the end).
        `uncommitted` lists blobs that have only staged blocks too (an upload never finished)."""
        include = (["metadata"] if metadata else []) + (["uncommittedblobs"] if uncommitted else [])
        pages = self.client.list_blobs(name_starts_with=prefix, include=include or None,
                                       results_per_page=size).by_page(continuation_token=continuation)
        async for page in pages:
            return [_blob(properties) async for properties in page], pages.continuation_token or None
        return [], None

    @_storage_call
    async def ensure(self) -> None:
        await _create(self.client.create_container())


class Queues:
    """The task queues, one per model (`tasks-<model>`), created on first send."""

    def __init__(self, service: QueueServiceClient, rest_service: rest.Account) -> None:
        self.service = service
        self.rest = rest_service
        self._clients: dict[str, QueueClient] = {}
        self._ready: set[str] = set()

    @staticmethod
    def _path(model: str) -> str:
        return f"/{QUEUE_PREFIX}{model}"

    def _messages(self, model: str, msg: str | None = None) -> str:
        return f"{self._path(model)}/messages" + (f"/{quote(msg, safe='')}" if msg else "")

    def _queue(self, model: str) -> QueueClient:
        client = self._clients.get(model)
        if client is None:
            client = self._clients[model] = self.service.get_queue_client(QUEUE_PREFIX + model)
        return client

    @_storage_call
    async def send(self, model: str, content: str, ttl: int) -> Message:
        body = f"<QueueMessage><MessageText>{xml_escape(content)}</MessageText></QueueMessage>".encode()
        for _ in range(2):
            if model not in self._ready:
                await _create(self._queue(model).create_queue())
                self._ready.add(model)
            answer = await self.rest.call("POST", self._messages(model), {"messagettl": str(ttl)},
                                          {"Content-Type": "application/xml"}, body, expect=(201, 404))
            if answer.status == 201:
                [sent] = _listed_messages(answer)
                return Message(sent.id, sent.receipt, content, 0, sent.visible_at)
            self._ready.discard(model)  # deleted since this instance created it
        raise StorageUnavailable()

    @_storage_call
    async def receive(self, model: str, count: int, visibility: int) -> list[Message]:
        answer = await self.rest.call("GET", self._messages(model),
                                      {"numofmessages": str(count), "visibilitytimeout": str(visibility)},
                                      expect=(200, 404))
        return _listed_messages(answer) if answer.status == 200 else []  # 404: no task was ever submitted

    @_storage_call
    async def update(self, model: str, msg: str, receipt: str, visibility: int) -> Message:
        """Make the message visible again in `visibility` seconds; the message with its new receipt."""
        try:
            answer = await self.rest.call("PUT", self._messages(model, msg),
                                          {"popreceipt": receipt, "visibilitytimeout": str(visibility)}, expect=(204,))
        except rest.Refused as exc:
            if exc.status == 404:
                raise MessageGone(msg) from None
            if is_outage(exc) or exc.credentials_refused:
                raise
            raise ReceiptStale(msg) from None
        return Message(msg, answer.headers.get("x-ms-popreceipt", ""), None, 0,
                       _time(answer.headers.get("x-ms-time-next-visible"), None))

    @_storage_call
    async def delete(self, model: str, msg: str, receipt: str) -> None:
        """Delete the message if that receipt is still its current one; quiet if it is gone or stale."""
        await self.rest.call("DELETE", self._messages(model, msg), {"popreceipt": receipt}, expect=(204, 400, 404))

    @_storage_call
    async def peek(self, model: str, count: int) -> list[Message]:
        """The first `count` (at most 32) visible messages, in queue order, without touching them."""
        answer = await self.rest.call("GET", self._messages(model), {"peekonly": "true", "numofmessages": str(count)},
                                      expect=(200, 404))
        return _listed_messages(answer) if answer.status == 200 else []

    @_storage_call
    async def depth(self, model: str) -> int:
        """Messages in the model's queue, leased ones included (Azure's approximate count)."""
        answer = await self.rest.call("GET", self._path(model), {"comp": "metadata"}, expect=(200, 404))
        return int(answer.headers.get("x-ms-approximate-messages-count") or 0) if answer.status == 200 else 0

    @_storage_call
    async def models(self, limit: int) -> tuple[list[str], bool]:
        """Up to `limit` models that have a queue, and whether there are more."""
        names = []
        async for queue in self.service.list_queues(name_starts_with=QUEUE_PREFIX, results_per_page=limit + 1):
            if len(names) == limit:
                return names, True
            names.append(queue.name[len(QUEUE_PREFIX):])
        return names, False

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        await self.service.close()
        await self.rest.close()


class EventQueue:
    """One queue of plain-text messages the Functions host hands to a queue-triggered function
    (host.json sets messageEncoding to none), created on first send."""

    def __init__(self, client: QueueClient) -> None:
        self.client = client
        self._ready = False

    @_storage_call
    async def send(self, content: str, delay: float = 0, ttl: int = 7 * 86400) -> None:
        """Queue `content`, visible `delay` seconds from now (rounded up)."""
        visible = max(0, int(-(-delay // 1)))
        for _ in range(2):
            if not self._ready:
                await _create(self.client.create_queue())
                self._ready = True
            try:
                await self.client.send_message(content, visibility_timeout=visible or None, time_to_live=ttl)
                return
            except ResourceNotFoundError:  # deleted since this instance created it
                self._ready = False
        raise StorageUnavailable()


class Storage:
    def __init__(self, config: StorageConfig | str, timeout: int) -> None:
        config = StorageConfig(config) if isinstance(config, str) else config
        # The SDK logs every storage request at INFO; the Functions host would ship each one.
        logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
        # use_env_settings=False: otherwise aiohttp looks up ~/.netrc and the proxy variables in
        # two worker threads on every request (a third of the host's CPU per storage call). A
        # deployment that must reach storage through a proxy is not supported (docs/API.md).
        options = dict(connection_timeout=3, read_timeout=timeout, use_env_settings=False)
        blob_retry = BlobRetry(backoff=0.3, retry_total=2, random_jitter_range=0.2)
        queue_retry = QueueRetry(backoff=0.3, retry_total=2, random_jitter_range=0.2)
        self.credential = None
        if config.identity_based:
            self.credential = identity_credential(config)
            self.blobs = BlobServiceClient(config.blob_uri, credential=self.credential, retry_policy=blob_retry, **options)
            queues = QueueServiceClient(config.queue_uri, credential=self.credential, retry_policy=queue_retry, **options)
            signer = DelegationSigner(self.blobs)
        else:
            self.blobs = BlobServiceClient.from_connection_string(config.connection, retry_policy=blob_retry, **options)
            queues = QueueServiceClient.from_connection_string(config.connection, retry_policy=queue_retry, **options)
            signer = Signer(self.blobs.account_name, getattr(self.blobs.credential, "account_key", None))
        self.signer = signer
        self.rest_blobs, rest_queues = (
            rest.Account(client.url, client.account_name, client.api_version, timeout, signer.key, self.credential)
            for client in (self.blobs, queues))
        self.inbox, self.outbox, self.uploads, self.signals, self.limits, self.hooks = (
            Container(self.blobs.get_container_client(name), signer, self.rest_blobs)
            for name in (INBOX, OUTBOX, UPLOADS, SIGNALS, LIMITS, HOOKS))
        self.queues = Queues(queues, rest_queues)
        self.webhooks = EventQueue(queues.get_queue_client(WEBHOOK_QUEUE))
        self._containers_ready = False

    @property
    def blob_origin(self) -> str:
        """The Blob service's origin (scheme://host[:port]), where SAS URLs point: a page that uses them
        must be allowed to connect there."""
        parts = urlsplit(self.blobs.url)
        return f"{parts.scheme}://{parts.netloc}"

    @_storage_call
    async def ensure_containers(self) -> None:
        if self._containers_ready:
            return
        await asyncio.gather(*(c.ensure() for c in (self.inbox, self.outbox, self.uploads, self.signals, self.limits,
                                                    self.hooks)))
        self._containers_ready = True

    @_storage_call
    async def ping(self) -> None:
        """Both services answer (for /health)."""
        await asyncio.gather(self.inbox.client.get_container_properties(),
                             self.queues.service.get_service_properties())

    async def close(self) -> None:
        await self.webhooks.client.close()
        await self.queues.close()
        await self.blobs.close()
        await self.rest_blobs.close()
        if self.credential is not None:
            await self.credential.close()


def identity_credential(config: StorageConfig):
    """The Microsoft Entra credential of an identity-based connection, as the Functions host reads its
    settings: __credential=managedidentity (with __clientId for a user-assigned identity) is the
    managed identity alone; otherwise azure-identity's default chain (which tries it too)."""
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    if config.credential == "managedidentity":
        return ManagedIdentityCredential(client_id=config.client_id) if config.client_id else ManagedIdentityCredential()
    return DefaultAzureCredential(managed_identity_client_id=config.client_id)


async def _create(coro) -> None:
    try:
        await coro
    except ResourceExistsError:
        pass
