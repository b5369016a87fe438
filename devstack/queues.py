"""Queue-triggered functions, run by the dev host as the Functions host runs them.

For each function with a queue trigger: poll its queue (in the storage account its `connection`
setting names, read as the Functions host reads it), at most `batchSize` messages at a time, with
the polling interval growing while the queue is empty up to `maxPollingInterval`; call the function
with each message; delete the message when the function returns; when it raises, leave the message
to be handed over again after `visibilityTimeout`, and once it has been handed over
`maxDequeueCount` times move it to `<queue>-poison`. The options come from host.json's
`extensions.queues`, with the Functions host's defaults; `messageEncoding` none hands the message
text over as is, base64 (the default) decodes it first.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import azure.functions as func
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue.aio import QueueClient, QueueServiceClient

from broker.settings import AZURITE_CONNECTION, StorageConfig
from broker.storage import identity_credential

log = logging.getLogger("devstack.queues")

LEASE_SECONDS = 600  # how long a message being processed stays invisible (the Functions host renews it)
FIRST_POLL = 0.1


@dataclass(frozen=True)
class Options:
    batch_size: int = 16
    max_polling: float = 60.0
    visibility: float = 0.0
    max_dequeue: int = 5
    encoding: str = "base64"


def _seconds(text: str, default: float) -> float:
    """A host.json time span ("00:00:02", "00:01:00.5") in seconds."""
    match = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2}(?:\.\d+)?)", str(text or "").strip())
    if not match:
        return default
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def options(host_json: Path) -> Options:
    """host.json's extensions.queues, as the Functions host reads them."""
    try:
        queues = json.loads(host_json.read_text()).get("extensions", {}).get("queues", {})
    except (OSError, ValueError):
        queues = {}
    defaults = Options()
    return Options(int(queues.get("batchSize", defaults.batch_size)),
                   _seconds(queues.get("maxPollingInterval"), defaults.max_polling),
                   _seconds(queues.get("visibilityTimeout"), defaults.visibility),
                   int(queues.get("maxDequeueCount", defaults.max_dequeue)),
                   str(queues.get("messageEncoding", defaults.encoding)).lower())


def service(connection: str) -> QueueServiceClient:
    """The queue service a trigger's `connection` names: a connection string in that setting, or an
    identity-based connection in `<connection>__queueServiceUri` (or `__accountName`), `__credential`
    and `__clientId`."""
    raw = os.environ.get(connection, "").strip()
    if raw:
        if raw.replace(" ", "").rstrip(";").lower() == "usedevelopmentstorage=true":
            raw = AZURITE_CONNECTION
        return QueueServiceClient.from_connection_string(raw)
    prefix = connection + "__"
    account = os.environ.get(prefix + "accountName", "")
    uri = os.environ.get(prefix + "queueServiceUri") or (f"https://{account}.queue.core.windows.net" if account else "")
    if not uri:
        raise RuntimeError(f"no storage for queue triggers: set {connection} or {prefix}queueServiceUri")
    config = StorageConfig(None, None, uri, os.environ.get(prefix + "credential", "").lower(),
                           os.environ.get(prefix + "clientId") or None)
    return QueueServiceClient(uri, credential=identity_credential(config))  # as the broker signs in


class Trigger:
    """One queue-triggered function, polling its queue."""

    def __init__(self, name: str, queue: str, connection: str, function, settings: Options, executed) -> None:
        self.name, self.queue, self.function, self.options, self.executed = name, queue, function, settings, executed
        self.service = service(connection)
        self.client: QueueClient = self.service.get_queue_client(queue)
        self.poison: QueueClient = self.service.get_queue_client(queue + "-poison")

    async def run(self) -> None:
        for client in (self.client, self.poison):
            try:
                await client.create_queue()
            except ResourceExistsError:
                pass
        delay = FIRST_POLL
        while True:
            try:
                messages = [m async for m in self.client.receive_messages(
                    messages_per_page=self.options.batch_size, max_messages=self.options.batch_size,
                    visibility_timeout=LEASE_SECONDS)]
            except Exception as exc:  # noqa: BLE001 - storage away: try again at the longest interval
                log.warning("queue %s could not be read (%s)", self.queue, type(exc).__name__)
                await asyncio.sleep(self.options.max_polling)
                continue
            if not messages:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.options.max_polling)
                continue
            delay = FIRST_POLL
            await asyncio.gather(*(self.handle(message) for message in messages))

    def _body(self, content: str) -> bytes | None:
        if self.options.encoding == "none":
            return content.encode()
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            return None

    async def handle(self, message) -> None:
        if message.dequeue_count > self.options.max_dequeue:  # it took its process down that often: no more
            await self._settle_failure(message)
            return
        body = self._body(message.content or "")
        began = time.perf_counter()
        try:
            if body is None:
                raise ValueError("the message is not base64 (host.json's messageEncoding says it should be)")
            await self.function(func.QueueMessage(id=message.id, body=body, pop_receipt=message.pop_receipt))
        except Exception:  # noqa: BLE001 - as the Functions host: logged, and the message handed over again
            log.exception("function %s failed on message %s (delivery %d)", self.name, message.id, message.dequeue_count)
            self.executed(self.name, began, False)
            await self._settle_failure(message)
            return
        self.executed(self.name, began, True)
        try:
            await self.client.delete_message(message)
        except Exception as exc:  # noqa: BLE001 - it shows up again later, as in Azure
            log.warning("message %s could not be deleted (%s)", message.id, type(exc).__name__)

    async def _settle_failure(self, message) -> None:
        try:
            if message.dequeue_count >= self.options.max_dequeue:
                await self.poison.send_message(message.content)
                await self.client.delete_message(message)
                log.warning("message %s moved to %s-poison after %d deliveries", message.id, self.queue,
                            message.dequeue_count)
            else:
                await self.client.update_message(message, visibility_timeout=int(self.options.visibility))
        except Exception as exc:  # noqa: BLE001 - its lease runs out and it comes back anyway
            log.warning("message %s could not be handed back (%s)", message.id, type(exc).__name__)

    async def close(self) -> None:
        await self.client.close()
        await self.poison.close()
        await self.service.close()


async def run(triggers: list[Trigger]) -> None:
    try:
        await asyncio.gather(*(trigger.run() for trigger in triggers))
    finally:
        for trigger in triggers:
            await trigger.close()
