"""broker/rest.py against a real HTTP server on 127.0.0.1 that plays storage: what is retried and what
is not, how often a bearer token is fetched, and what an answer the HTTP client cannot read becomes.
(Signing, SAS tokens and the calls themselves are tested against Azurite in tests/store/test_rest_calls.py.)"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from types import SimpleNamespace

import pytest
from aiohttp import web
from azure.core.exceptions import ClientAuthenticationError

from broker import rest, storage
from broker.errors import RecordUnreadable, StorageUnavailable
from tests.support.polling import run_async

KEY = base64.b64encode(b"k" * 32).decode()


@contextlib.asynccontextmanager
async def storage_like(answers):
    """A server whose n-th request gets answers[n] (a status, a (status, error code, headers) triple,
    "drop" to close the connection unanswered, or "huge" for a header over aiohttp's 8 KiB limit);
    the last answer repeats. Yields (url, seen)."""
    seen: list[web.BaseRequest] = []

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if answer == "drop":
            request.transport.close()
            return web.Response(status=500)  # never sent: the connection is gone
        if answer == "huge":
            return web.Response(status=200, headers={"x-ms-meta-big": "v" * 9000})
        status, code, headers = answer if isinstance(answer, tuple) else (answer, f"Code{answer}", {})
        return web.Response(status=status, headers={"x-ms-error-code": code, "ETag": '"0x1"', **headers})

    server = web.Server(handle)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/acct/", seen
    finally:
        await runner.cleanup()


async def adapter_get(service: rest.Account, path: str = "/inbox/t1") -> rest.Answer:
    """A GET as storage.py makes one: what fails leaves as the broker's own errors."""
    return await storage._storage_call(service.call)("GET", path)


def account(url: str, **kwargs) -> rest.Account:
    return rest.Account(url, "acct", "2026-10-06", timeout=5, **({"key": KEY} | kwargs))


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(rest, "BACKOFF", 0.01)
    monkeypatch.setattr(rest, "JITTER", 0.0)


def test_a_server_error_is_tried_again_and_a_refusal_is_not():
    async def scenario():
        async with storage_like([503, 500, 201]) as (url, seen):
            service = account(url)
            answer = await service.call("PUT", "/inbox/t1", body=b"x", expect=(201,))
            assert answer.status == 201 and len(seen) == 3
            await service.close()
        async with storage_like([409]) as (url, seen):
            service = account(url)
            with pytest.raises(rest.Refused) as refused:
                await service.call("PUT", "/inbox/t1", body=b"x", expect=(201,))
            assert (refused.value.status, refused.value.code, len(seen)) == (409, "Code409", 1)
            await service.close()

    run_async(scenario)


def test_storage_that_keeps_failing_or_never_answers_is_an_outage_after_the_retries():
    async def scenario():
        for answers in ([503], ["drop"]):
            async with storage_like(answers) as (url, seen):
                service = account(url)
                with pytest.raises(StorageUnavailable):
                    await adapter_get(service)
                # aiohttp itself sends an idempotent request once more when the server drops it unanswered
                assert len(seen) == (1 + rest.RETRIES) * (2 if answers == ["drop"] else 1), answers
                await service.close()

    run_async(scenario)


def test_a_header_the_client_cannot_read_is_an_unreadable_record_not_an_outage():
    async def scenario():
        async with storage_like(["huge"]) as (url, seen):
            service = account(url)
            with pytest.raises(RecordUnreadable):
                await adapter_get(service)
            assert len(seen) == 1  # asking again would not help
            await service.close()

    run_async(scenario)


def test_a_refused_key_or_token_is_a_setting_to_fix():
    async def scenario():
        async with storage_like([403]) as (url, seen):
            with pytest.raises(ClientAuthenticationError):
                await adapter_get(account(url))
            with pytest.raises(ClientAuthenticationError):  # not base64: nothing is sent
                await adapter_get(account(url, key="not base64!"))
            assert len(seen) == 1

    run_async(scenario)


def test_a_bearer_token_is_fetched_once_and_again_only_near_its_end():
    fetched = []

    class Credential:
        async def get_token(self, scope):
            fetched.append(scope)
            lifetime = 3600 if len(fetched) == 1 else 60  # the second one is nearly out from the start
            return SimpleNamespace(token=f"token-{len(fetched)}", expires_on=int(time.time()) + lifetime)

    async def scenario():
        async with storage_like([200]) as (url, seen):
            service = rest.Account(url, "acct", "2026-10-06", timeout=5, credential=Credential())
            await asyncio.gather(*(service.call("GET", "/inbox/t1") for _ in range(5)))
            assert fetched == [rest.TOKEN_SCOPE]
            service._token = (service._token[0], time.time() + rest.TOKEN_RENEW_BEFORE - 1)  # nearly out
            await service.call("GET", "/inbox/t1")
            await service.call("GET", "/inbox/t1")
            assert len(fetched) == 3  # the second token was nearly out when it came: fetched again
            assert [r.headers["Authorization"] for r in seen] == ["Bearer token-1"] * 5 + ["Bearer token-2",
                                                                                           "Bearer token-3"]
            assert all("x-ms-date" in r.headers and r.headers["x-ms-version"] == "2026-10-06" for r in seen)
            await service.close()

    run_async(scenario)


def test_a_sas_token_rides_on_every_request_in_place_of_a_signature():
    async def scenario():
        async with storage_like([200]) as (url, seen):
            service = rest.Account(url + "?sv=2026-10-06&sig=a%2Bb", "acct", "2026-10-06", timeout=5)
            await service.call("GET", "/tasks-m/messages", {"numofmessages": "2", "visibilitytimeout": "30"})
            [request] = seen
            assert request.path_qs == "/acct/tasks-m/messages?numofmessages=2&visibilitytimeout=30&sv=2026-10-06&sig=a%2Bb"
            assert "Authorization" not in request.headers
            await service.close()

    run_async(scenario)


CHALLENGE = ("Bearer authorization_uri=https://login.microsoftonline.com/the-tenant/oauth2/authorize "
             "resource_id=https://storage.azure.com")


def test_a_token_storage_refuses_is_replaced_once_for_the_tenant_the_challenge_names():
    asked = []

    class Credential:
        async def get_token(self, scope, tenant_id=None):
            asked.append(tenant_id)
            return SimpleNamespace(token=f"token-{len(asked)}", expires_on=int(time.time()) + 3600)

    async def scenario():
        refused = (401, "InvalidAuthenticationInfo", {"WWW-Authenticate": CHALLENGE})
        async with storage_like([refused, 200]) as (url, seen):
            service = rest.Account(url, "acct", "2026-10-06", timeout=5, credential=Credential())
            assert (await service.call("GET", "/inbox/t1")).status == 200
            assert asked == [None, "the-tenant"]
            assert [r.headers["Authorization"] for r in seen] == ["Bearer token-1", "Bearer token-2"]
            await service.close()
        async with storage_like([refused]) as (url, seen):  # refused again: a setting to fix, no loop
            service = rest.Account(url, "acct", "2026-10-06", timeout=5, credential=Credential())
            with pytest.raises(ClientAuthenticationError):
                await adapter_get(service)
            assert len(seen) == 2
            await service.close()

    run_async(scenario)


def test_a_precondition_failure_is_a_changed_blob_only_when_storage_says_so():
    """412 ConditionNotMet: a create lost to another (as the SDK reads it), a write or a delete that
    found the blob changed since its etag. Any other 412 (a lease on the blob) is not hidden."""
    async def scenario():
        lost = (412, "ConditionNotMet", {})
        leased = (412, "LeaseIdMissing", {})
        for answers, check in (([lost], _lost_everywhere), ([leased], _leased)):
            async with storage_like(answers) as (url, seen):
                connection = (f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={KEY};"
                              f"BlobEndpoint={url};QueueEndpoint={url}")
                store = storage.Storage(connection, 5)
                try:
                    await check(store.inbox)
                finally:
                    await store.close()

    run_async(scenario)


async def _lost_everywhere(inbox) -> None:
    assert await inbox.create("t1", b"x", {}, "text/plain") is None
    assert await inbox.set_metadata("t1", {"a": "b"}, '"0x1"') is None
    assert await inbox.delete("t1", '"0x1"') is False


async def _leased(inbox) -> None:
    with pytest.raises(rest.Refused):
        await inbox.create("t1", b"x", {}, "text/plain")
    with pytest.raises(rest.Refused):
        await inbox.set_metadata("t1", {"a": "b"}, '"0x1"')
