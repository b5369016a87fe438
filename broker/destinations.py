"""Where the broker may send a webhook: never into the network it runs in.

A webhook URL is the client's to choose, and the broker POSTs to it from inside its own network,
so a URL that names a private, loopback, link-local or otherwise non-public address would let any
client make the broker call what only the broker should reach (an instance metadata endpoint, a
storage emulator, an admin port). The rule, checked at submit and again at every delivery:

- `https` only, no credentials in the URL, at most MAX_URL_BYTES;
- every address the host resolves to is public (`ipaddress`'s is_global, IPv4-mapped IPv6 seen
  through); a literal address is judged the same way;
- unless the host is listed in BROKER_WEBHOOK_ALLOW (exact, case-insensitive host names or
  addresses): those may be anything, and plain `http` too - how development and tests reach a
  receiver on 127.0.0.1.

At delivery the check runs inside the connection (GuardedResolver): the addresses checked are the
ones connected to, so a name that resolves to a public address at submit and a private one later
(DNS rebinding) reaches nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

MAX_URL_BYTES = 1024
RESOLVE_SECONDS = 5.0


class Refused(Exception):
    """A destination the broker will not send to; the message is one sentence for the client."""


def public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])  # an IPv6 zone ("fe80::1%eth0") is link-local anyway
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True


def allowed(host: str, allow: tuple[str, ...]) -> bool:
    return host.lower() in allow


def parse(url: str, allow: tuple[str, ...]) -> tuple[str, int]:
    """(host, port) of a webhook URL whose form is acceptable; Refused with the reason otherwise."""
    if len(url.encode()) > MAX_URL_BYTES:
        raise Refused(f"the webhook URL must be at most {MAX_URL_BYTES} bytes")
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        raise Refused("the webhook URL must be printable ASCII without spaces (percent-encode the rest)")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise Refused("the webhook URL is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise Refused("the webhook URL must be an absolute https:// URL")
    if parts.username is not None or parts.password is not None:
        raise Refused("the webhook URL must not carry credentials (sign-in is the signature's job)")
    if parts.fragment:
        raise Refused("the webhook URL must not have a #fragment")
    if parts.scheme == "http" and not allowed(host, allow):
        raise Refused("the webhook URL must use https (plain http only to hosts in BROKER_WEBHOOK_ALLOW)")
    return host, port or (443 if parts.scheme == "https" else 80)


async def check(url: str, allow: tuple[str, ...]) -> None:
    """Refused unless the broker may send to `url`: its form, and every address its host resolves to."""
    host, port = parse(url, allow)
    if allowed(host, allow):
        return
    if _literal(host):
        if not public(host):
            raise Refused(f"the webhook host {host} is not a public address")
        return
    try:
        infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM),
                                       RESOLVE_SECONDS)
    except (OSError, TimeoutError):
        raise Refused(f"the webhook host {host} does not resolve") from None
    if not infos:
        raise Refused(f"the webhook host {host} does not resolve")
    private = sorted({info[4][0] for info in infos if not public(info[4][0])})
    if private:
        raise Refused(f"the webhook host {host} resolves to an address that is not public ({private[0]})")


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing a host any of whose addresses is not public (unless allowed):
    the connection goes only to addresses that passed."""

    def __init__(self, allow: tuple[str, ...]) -> None:
        self.allow = allow
        self.inner = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        if not allowed(host, self.allow):
            refused = [entry["host"] for entry in found if not public(entry["host"])]
            if refused:
                raise OSError(f"{host} resolves to an address that is not public ({refused[0]})")
        return found

    async def close(self) -> None:
        await self.inner.close()


def refused_literal(url: str, allow: tuple[str, ...]) -> str | None:
    """Why a delivery may not go to `url` before any connection (a literal address aiohttp would not
    resolve, a form that is no longer acceptable); None if it may try."""
    try:
        host, _ = parse(url, allow)
    except Refused as exc:
        return str(exc)
    if not allowed(host, allow) and _literal(host) and not public(host):
        return f"the webhook host {host} is not a public address"
    return None
