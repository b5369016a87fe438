"""The dev host's queue triggers (devstack/queues.py) against Azurite: a message a function takes is
deleted, one it fails on comes back after visibilityTimeout and, after maxDequeueCount deliveries,
moves to `<queue>-poison`; host.json's options are read as the Functions host reads them."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid

from azure.storage.queue import QueueClient

from devstack import queues
from tests.support.polling import run_async


def test_host_json_options_are_read_with_the_functions_hosts_defaults(tmp_path):
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"extensions": {"queues": {"maxPollingInterval": "00:00:02.5", "batchSize": 4,
                                                          "visibilityTimeout": "00:01:00", "messageEncoding": "none"}}}))
    assert queues.options(path) == queues.Options(4, 2.5, 60.0, 5, "none")
    assert queues.options(tmp_path / "missing.json") == queues.Options()  # batch 16, 1 min polling, base64


def test_a_message_is_deleted_when_its_function_returns_and_poisoned_after_it_fails_enough(azurite, monkeypatch):
    monkeypatch.setenv("QueuesTestStorage", azurite.connection_string)
    name = "q-" + uuid.uuid4().hex[:12]
    seen, runs = [], []

    async def function(message) -> None:
        body = message.get_body().decode()
        seen.append(body)
        if body == "bad":
            raise ValueError("this one always fails")

    async def scenario() -> tuple[list, list]:
        options = queues.Options(batch_size=8, max_polling=0.2, visibility=0, max_dequeue=3, encoding="base64")
        trigger = queues.Trigger("fn", name, "QueuesTestStorage", function, options,
                                 lambda *args: runs.append(args[2]))
        sender = QueueClient.from_connection_string(azurite.connection_string, name)
        try:
            running = asyncio.create_task(queues.run([trigger]))
            while not await asyncio.to_thread(_exists, sender):
                await asyncio.sleep(0.05)
            for text in ("good", "bad"):
                await asyncio.to_thread(sender.send_message, base64.b64encode(text.encode()).decode())
            for _ in range(1200):  # a minute at most
                if seen.count("bad") >= 3 and await asyncio.to_thread(_count, sender) == 0:
                    break
                await asyncio.sleep(0.05)
            running.cancel()
            poisoned = QueueClient.from_connection_string(azurite.connection_string, name + "-poison")
            moved = [m.content for m in await asyncio.to_thread(lambda: list(poisoned.receive_messages()))]
            left = await asyncio.to_thread(_count, sender)
            return moved, [left]
        finally:
            sender.close()

    moved, [left] = run_async(lambda: scenario())
    assert seen.count("good") == 1 and seen.count("bad") == 3  # maxDequeueCount deliveries of the failing one
    assert [base64.b64decode(m).decode() for m in moved] == ["bad"] and left == 0
    assert runs.count(True) == 1 and runs.count(False) == 3  # each logged as an invocation


def _exists(client: QueueClient) -> bool:
    try:
        client.get_queue_properties()
        return True
    except Exception:  # noqa: BLE001 - not created yet
        return False


def _count(client: QueueClient) -> int:
    return len(list(client.peek_messages(max_messages=32)))
