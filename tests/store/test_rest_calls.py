"""The storage adapter's REST calls (broker/rest.py) against Azurite: Azurite checks each Shared Key
signature and SAS token, so a request signed wrong is refused here as it would be in Azure."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.storage.blob._shared.models import AccountSasPermissions, ResourceTypes
from azure.storage.blob._shared.shared_access_signature import SharedAccessSignature

from broker.storage import Storage
from tests.support.polling import run_async


def parts(connection: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in connection.split(";") if part)


def test_names_metadata_conditions_and_receipts_round_trip(azurite):
    """A blob name and a message that need quoting or escaping, metadata, and each conditional write."""
    name = f"{uuid.uuid4().hex}/a b+c%d~é&x=1.txt"
    text = '{"q": "<a & b>", "n": "\\u00e9"}'  # the records escape what is not ASCII (records.py)

    async def scenario():
        storage = Storage(azurite.connection_string, 5)
        try:
            await storage.ensure_containers()
            etag = await storage.uploads.create(name, b"body", {"task": text}, "text/plain; charset=utf-8")
            assert etag and await storage.uploads.create(name, b"again", {}, "text/plain") is None
            blob = await storage.uploads.read(name)
            assert (blob.body, blob.metadata, blob.etag, blob.content_type, blob.size) == (
                b"body", {"task": text}, etag, "text/plain; charset=utf-8", 4)
            assert blob.created > 0 and blob.modified >= blob.created
            head = await storage.uploads.head(name)
            assert (head.body, head.metadata, head.etag, head.size) == (None, {"task": text}, etag, 4)
            newer = await storage.uploads.set_metadata(name, {"state": "s"}, etag)
            assert newer and newer != etag
            assert await storage.uploads.set_metadata(name, {"state": "t"}, etag) is None  # stale etag
            assert await storage.uploads.delete(name, etag) is False  # stale etag: left
            assert await storage.uploads.delete(name, newer) is True
            assert await storage.uploads.read(name) is None and await storage.uploads.head(name) is None
            assert await storage.uploads.set_metadata(name, {}, newer) is None  # gone

            model = "t-" + uuid.uuid4().hex[:12]
            sent = await storage.queues.send(model, text, 600)
            assert sent.content == text and sent.id
            [peeked] = await storage.queues.peek(model, 32)
            assert (peeked.id, peeked.content) == (sent.id, text)
            assert await storage.queues.depth(model) == 1
            [got] = await storage.queues.receive(model, 32, 30)
            assert (got.id, got.content, got.dequeue_count) == (sent.id, text, 1) and got.visible_at > 0
            moved = await storage.queues.update(model, got.id, got.receipt, 60)
            assert moved.receipt != got.receipt and moved.visible_at > got.visible_at
            await storage.queues.delete(model, got.id, got.receipt)  # stale receipt: quiet, left
            assert await storage.queues.depth(model) == 1
            await storage.queues.delete(model, got.id, moved.receipt)
            assert await storage.queues.depth(model) == 0
            assert await storage.queues.receive("t-never-" + uuid.uuid4().hex[:8], 1, 30) == []
        finally:
            await storage.close()

    run_async(scenario)


def test_a_sas_connection_string_serves_the_task_path(azurite):
    """A connection string with a SharedAccessSignature and no key: each request carries the token."""
    given = parts(azurite.connection_string)
    token = SharedAccessSignature(given["AccountName"], given["AccountKey"]).generate_account(
        "bq", ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True, update=True,
                              process=True), datetime.now(UTC) + timedelta(hours=1))
    connection = (f"BlobEndpoint={given['BlobEndpoint']};QueueEndpoint={given['QueueEndpoint']};"
                  f"SharedAccessSignature={token}")

    async def scenario():
        storage = Storage(connection, 5)
        try:
            await storage.ensure_containers()
            name = uuid.uuid4().hex
            assert await storage.inbox.create(name, b"payload", {"task": "{}"}, "application/octet-stream")
            assert (await storage.inbox.read(name)).body == b"payload"
            model = "t-" + uuid.uuid4().hex[:12]
            await storage.queues.send(model, "hello", 600)
            [got] = await storage.queues.receive(model, 1, 30)
            assert got.content == "hello"
        finally:
            await storage.close()

    run_async(scenario)


@pytest.mark.parametrize("key", [base64.b64encode(b"another account's key").decode(), "not base64!"])
def test_a_key_storage_refuses_is_a_setting_to_fix(azurite, key):
    given = parts(azurite.connection_string)
    connection = ";".join(f"{k}={key if k == 'AccountKey' else v}" for k, v in given.items())

    async def scenario():
        storage = Storage(connection, 5)
        try:
            with pytest.raises(ClientAuthenticationError):
                await storage.inbox.read("any")
            with pytest.raises(ClientAuthenticationError):
                await storage.queues.receive("any", 1, 30)
        finally:
            await storage.close()

    run_async(scenario)
