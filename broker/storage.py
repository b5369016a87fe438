"""The storage clients: one blob and one queue service client per event loop, reused.

Retries are short and few on purpose: a request to the broker must answer (503 if need be)
rather than hang while storage is away, and the caller retries.
"""

from __future__ import annotations

import asyncio
import logging

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ServiceRequestError, ServiceResponseError
from azure.storage.blob.aio import BlobServiceClient, ContainerClient
from azure.storage.blob.aio import LinearRetry as BlobRetry
from azure.storage.queue._shared.policies_async import LinearRetry as QueueRetry
from azure.storage.queue.aio import QueueClient, QueueServiceClient

INBOX = "inbox"
OUTBOX = "outbox"
QUEUE_PREFIX = "tasks-"


class StorageUnavailable(Exception):
    """Storage did not answer, or answered with a server error."""


def is_outage(exc: BaseException) -> bool:
    if isinstance(exc, (ServiceRequestError, ServiceResponseError, asyncio.TimeoutError, ConnectionError)):
        return True
    return isinstance(exc, HttpResponseError) and (exc.status_code or 0) >= 500


class Storage:
    def __init__(self, connection: str, timeout: int) -> None:
        # The SDK logs every storage request at INFO; the Functions host would ship each one.
        logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
        # use_env_settings=False: otherwise aiohttp looks up ~/.netrc and the proxy variables in
        # two worker threads on every request (a third of the host's CPU per storage call). A
        # deployment that must reach storage through a proxy is not supported (docs/API.md).
        options = dict(connection_timeout=3, read_timeout=timeout, use_env_settings=False)
        self.blobs = BlobServiceClient.from_connection_string(
            connection, retry_policy=BlobRetry(backoff=0.3, retry_total=2, random_jitter_range=0.2), **options)
        self.queues = QueueServiceClient.from_connection_string(
            connection, retry_policy=QueueRetry(backoff=0.3, retry_total=2, random_jitter_range=0.2), **options)
        self.inbox: ContainerClient = self.blobs.get_container_client(INBOX)
        self.outbox: ContainerClient = self.blobs.get_container_client(OUTBOX)
        self._queue_clients: dict[str, QueueClient] = {}
        self._containers_ready = False
        self._queues_ready: set[str] = set()

    def queue(self, model: str) -> QueueClient:
        client = self._queue_clients.get(model)
        if client is None:
            client = self._queue_clients[model] = self.queues.get_queue_client(QUEUE_PREFIX + model)
        return client

    async def ensure_containers(self) -> None:
        if self._containers_ready:
            return
        await asyncio.gather(_create(self.inbox.create_container()), _create(self.outbox.create_container()))
        self._containers_ready = True

    async def ensure_queue(self, model: str) -> None:
        if model not in self._queues_ready:
            await _create(self.queue(model).create_queue())
            self._queues_ready.add(model)

    def forget_queue(self, model: str) -> None:
        self._queues_ready.discard(model)

    async def close(self) -> None:
        for client in self._queue_clients.values():
            await client.close()
        await self.blobs.close()
        await self.queues.close()


async def _create(coro) -> None:
    try:
        await coro
    except ResourceExistsError:
        pass
