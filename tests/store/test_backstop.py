"""The `completed` webhook event is not lost to an instance that dies between writing a task's
outcome and queueing the event: the backstop queued before the outcome delivers it (webhooks.py),
once, and a backstop whose event was already tried is dropped. On Azurite, with a real receiver."""

from __future__ import annotations

import pytest

from broker import delivery, webhooks
from broker.webhooks import Hook, HookEvent
from tests.conftest import WEBHOOK_SECRET
from tests.support.receiver import Receiver

from .conftest import token


async def _events_of(store, task_id: str) -> list[HookEvent]:
    """The queued webhook events of one task (others' are left to show up again in a few seconds)."""
    found = []
    for _ in range(20):
        batch = [m async for m in store.storage.webhooks.client.receive_messages(
            messages_per_page=32, max_messages=32, visibility_timeout=3)]
        found += [m for m in batch if task_id in m.content]
        if not batch or found:
            break
    for message in found:
        await store.storage.webhooks.client.delete_message(message)
    return [HookEvent.parse(m.content) for m in found]


@pytest.mark.parametrize("lost", [True, False])
def test_a_completed_event_is_delivered_once_whether_or_not_its_instance_queued_it(run_store, model, monkeypatch, lost):
    monkeypatch.setattr(webhooks, "BACKSTOP", 0)  # visible at once, instead of a minute later
    with Receiver() as receiver:
        async def scenario(store):
            hook = Hook(receiver.url + "/backstop", ("completed",), "https://broker.example/api/")
            task, _ = await store.submit(model, b"p", "text/plain", {}, hook=hook)
            [claim] = await store.claim(model, 1, 0, 60)
            if lost:  # the instance dies after writing the outcome, before queueing the event
                async def dies(*args, **kwargs):
                    raise ConnectionError("gone")
                store.webhooks.send = dies
            await store.complete(token(store, claim), b"out", "text/plain")
            vars(store.webhooks).pop("send", None)
            events = await _events_of(store, task.task_id)
            reports = [await delivery.deliver(store, store.settings, event) for event in events]
            await delivery.courier(store.settings).session.close()
            return task.task_id, events, reports

        task_id, events, reports = run_store(scenario, webhook_secret=WEBHOOK_SECRET, webhook_allow=("127.0.0.1",))
        [delivered] = receiver.of("/backstop")
    assert sorted(event.backstop for event in events) == ([True] if lost else [False, True])
    assert len({event.id for event in events}) == 1  # the backstop is the same event
    assert [report is not None for report in reports].count(True) == 1  # one try; the other copy dropped
    event = delivered.event
    assert (event["event"], event["task_id"], event["status"]) == ("completed", task_id, "succeeded")
    assert event["result_url"] == f"https://broker.example/api/getresult?task_id={task_id}"


def test_an_earlier_tasks_retry_leaves_a_later_tasks_webhook_alone(run_store, model):
    """Two tasks under one id (an Idempotency-Key used again after the first's result expired): a try
    of the first's event, still queued, is dropped, and the second's report stays its own."""
    with Receiver() as receiver:
        async def scenario(store):
            task_id = "ab" * 16
            first = Hook(receiver.url + "/first", ("completed",))
            second = Hook(receiver.url + "/second", ("completed",))
            await store.webhooks.attach(task_id, 100.0, first)
            await store.webhooks.attach(task_id, 200.0, second)  # the later task replaces the earlier's
            stale = HookEvent(task_id, 100.0, "completed", "evt_old", first.url, attempt=2, body='{"old":1}')
            dropped = await delivery.deliver(store, store.settings, stale)
            kept = await store.webhooks.hook(task_id, 200.0), await store.webhooks.report(task_id, 200.0)
            await store.webhooks.forget(task_id, 100.0)  # the first's cleanup: not the second's blob
            still = await store.webhooks.hook(task_id, 200.0)
            await store.webhooks.forget(task_id, 200.0)
            return dropped, kept, still, await store.webhooks.hook(task_id, 200.0)

        dropped, (hook, report), still, gone = run_store(scenario, webhook_secret=WEBHOOK_SECRET,
                                                         webhook_allow=("127.0.0.1",))
        assert receiver.deliveries == []
    assert dropped is None and hook.url.endswith("/second") and report.deliveries == 0
    assert still is not None and gone is None
