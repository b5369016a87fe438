"""Where a webhook may go (broker/destinations.py) and how it is signed (broker/delivery.py): the
fast layer beside tests/broker/test_webhooks.py, which sends real ones."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac

import pytest

from broker import destinations
from broker.delivery import backoff, sign
from broker.settings import Settings, SettingsError, load
from tests.support.polling import run_async


@pytest.mark.parametrize("address, public", [
    ("93.184.215.14", True), ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
    ("10.0.0.1", False), ("172.16.5.4", False), ("192.168.1.1", False), ("127.0.0.1", False), ("0.0.0.0", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("224.0.0.1", False), ("::1", False), ("fe80::1%eth0", False),
    ("fd00::1", False), ("::ffff:10.0.0.1", False), ("::ffff:93.184.215.14", True), ("not an address", False),
    # IPv4 inside IPv6 is judged as that IPv4 address; reserved and site-local ranges are not public
    ("64:ff9b::a00:5", False), ("2002:7f00:1::", False), ("::7f00:1", False), ("fec0::1", False),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", False), ("64:ff9b::5db8:d70e", True),
    # shorthand IPv4 forms the C library reads
    ("127.1", False), ("0x7f.1", False), ("2130706433", False), ("1572395042", True),
])
def test_only_global_unicast_addresses_are_public(address, public):
    assert destinations.public(address) is public


def test_an_allowed_host_may_be_private_and_plain_http_but_no_other_host_may():
    run_async(lambda: destinations.check("http://127.0.0.1:8080/hook", ("127.0.0.1",)))
    run_async(lambda: destinations.check("https://LOCALHOST/hook", ("localhost",)))
    for url in ("http://127.0.0.1:8080/hook", "https://127.0.0.1/hook", "https://localhost/hook"):
        with pytest.raises(destinations.Refused):
            run_async(lambda url=url: destinations.check(url, ("example.com",)))


def test_at_delivery_the_addresses_connected_to_are_checked_again():
    """DNS rebinding: a name that was public at submit and resolves to a private address later."""

    class Rebound:
        async def resolve(self, host, port=0, family=0):
            return [{"hostname": host, "host": "10.0.0.7", "port": port, "family": family, "proto": 0, "flags": 0}]

    async def resolve(allow):
        guard = destinations.GuardedResolver(allow)  # aiohttp's resolver needs a running loop
        guard.inner = Rebound()
        return await guard.resolve("hooks.example.com", 443)

    with pytest.raises(OSError, match="not public"):
        run_async(lambda: resolve(()))
    assert run_async(lambda: resolve(("hooks.example.com",)))[0]["host"] == "10.0.0.7"
    assert destinations.refused_literal("https://10.0.0.7/hook", ()) == "the webhook host 10.0.0.7 is not a public address"
    assert destinations.refused_literal("https://93.184.215.14/hook", ()) is None


def test_an_address_written_in_a_shorthand_is_refused_even_when_public():
    assert destinations.refused_literal("https://1572395042/hook", ()) == \
        "the webhook host 1572395042 must be written as a dotted-quad or standard IPv6 address"
    with pytest.raises(destinations.Refused, match="dotted-quad"):
        run_async(lambda: destinations.check("https://93.184.55022/hook", ()))


def test_a_lookup_that_never_answers_ties_up_only_the_webhook_pool(monkeypatch):
    """The event loop's default pool (which storage calls use) stays free while webhook hosts hang."""
    import socket
    import threading

    real, release = socket.getaddrinfo, threading.Event()

    def hanging(host, *args, **kwargs):
        if host.endswith(".slow.example"):
            release.wait(30)
            raise socket.gaierror("gave up")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    monkeypatch.setattr(destinations, "RESOLVE_SECONDS", 0.5)

    async def scenario():
        checks = [destinations.check(f"https://h{i}.slow.example/hook", ()) for i in range(12)]
        refused = asyncio.gather(*checks, return_exceptions=True)
        await asyncio.sleep(0.1)
        # Were the default pool taken, this would wait for `release`, which only the test's end sets.
        await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, lambda: real("localhost", 80)), 20)
        served_while_hanging = not release.is_set()
        return await refused, served_while_hanging

    try:
        outcomes, served_while_hanging = run_async(lambda: scenario())
    finally:
        release.set()
    assert all(isinstance(o, destinations.Refused) and "does not resolve" in str(o) for o in outcomes)
    assert served_while_hanging


def test_the_signature_is_standard_webhooks_v1():
    key = bytes(range(24))
    value = sign(key, "evt_1", 1700000000, b'{"a":1}')
    expected = hmac.new(key, b'evt_1.1700000000.{"a":1}', hashlib.sha256).digest()
    assert value == "v1," + base64.b64encode(expected).decode()


def test_retries_back_off_exponentially_about_half_an_hour_over_six_tries():
    assert [backoff(attempt, 60) for attempt in range(1, 6)] == [60, 120, 240, 480, 960]
    assert sum(backoff(attempt, 60) for attempt in range(1, 6)) == 1860  # 31 minutes
    assert backoff(19, 3600) == 86400  # a day at most: a queue message waits 7 days at most


@pytest.mark.parametrize("secret", ["whsec_c2hvcnQ=", "secret_" + "A" * 32, "whsec_!!not-base64!!", "whsec_" + "A" * 100])
def test_a_malformed_webhook_secret_is_a_settings_error(secret, monkeypatch):
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    with pytest.raises(SettingsError, match="BROKER_WEBHOOK_SECRET"):
        _ = _settings(secret).webhook_key
    assert _settings("").webhook_key is None
    assert len(_settings("whsec_" + base64.b64encode(bytes(32)).decode()).webhook_key) == 32


def _settings(secret: str) -> Settings:
    return dataclasses.replace(load(), webhook_secret=secret)
