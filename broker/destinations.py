"""Where the broker may send a webhook: never into the network it runs in.

A webhook URL is the client's to choose, and the broker POSTs to it from inside its own network,
so a URL that names a private, loopback, link-local or otherwise non-public address would let any
client make the broker call what only the broker should reach (an instance metadata endpoint, a
storage emulator, an admin port). The rule, checked at submit and again at every delivery:

- `https` only, no credentials in the URL, at most MAX_URL_BYTES;
- every address the host resolves to is public (`ipaddress`'s is_global, and not reserved,
  site-local or multicast; an IPv4 address embedded in IPv6 - mapped, compatible, NAT64, 6to4,
  Teredo - judged as that IPv4 address); a literal address is judged the same way, in any form
  the C library reads as one ("127.1", "2130706433", "0x7f.1");
- unless the host is listed in BROKER_WEBHOOK_ALLOW (exact, case-insensitive host names or
  addresses): those may be anything, and plain `http` too - how development and tests reach a
  receiver on 127.0.0.1.

At delivery the check runs inside the connection (GuardedResolver): the addresses checked are the
ones connected to, so a name that resolves to a public address at submit and a private one later
(DNS rebinding) reaches nothing.

Names are resolved in a pool of LOOKUP_THREADS threads of this module's own, never the event
loop's default pool (which storage calls need): a client naming hosts whose DNS never answers ties
up only these, and a lookup that waited RESOLVE_SECONDS is given up (one still queued never runs).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

MAX_URL_BYTES = 1024
RESOLVE_SECONDS = 5.0
LOOKUP_THREADS = 4
NAT64 = ipaddress.ip_network("64:ff9b::/96")

_lookups = ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="webhook-dns")


class Refused(Exception):
    """A destination the broker will not send to; the message is one sentence for the client."""


def public(address: str) -> bool:
    ip = _address(address)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded(ip)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or getattr(ip, "is_site_local", False))


def _embedded(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo's client, NAT64, IPv4-compatible)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):  # 64:ff9b::a.b.c.d, ::a.b.c.d
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host names as a literal, in any form the C library reads ("127.1", "0x7f.1",
    "2130706433", an IPv6 zone); None for a name."""
    host = host.split("%")[0]  # an IPv6 zone ("fe80::1%eth0") is link-local anyway
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _literal(host: str) -> bool:
    return _address(host) is not None


async def lookup(host: str, port: int, family: int = socket.AF_UNSPEC) -> list[tuple]:
    """getaddrinfo in this module's pool, given up after RESOLVE_SECONDS (OSError then)."""
    loop = asyncio.get_running_loop()
    call = loop.run_in_executor(_lookups, lambda: socket.getaddrinfo(host, port, family, socket.SOCK_STREAM))
    try:
        return await asyncio.wait_for(call, RESOLVE_SECONDS)
    except TimeoutError:
        raise OSError(f"{host} did not resolve within {RESOLVE_SECONDS:g} seconds") from None


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
        why = _literal_refused(host)
        if why:
            raise Refused(why)
        return
    try:
        infos = await lookup(host, port)
    except OSError:
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
        self.inner = None  # tests put a resolver here; otherwise this module's own pool resolves

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await (self.inner.resolve(host, port, family) if self.inner else self._lookup(host, port, family))
        if not allowed(host, self.allow):
            refused = [entry["host"] for entry in found if not public(entry["host"])]
            if refused:
                raise OSError(f"{host} resolves to an address that is not public ({refused[0]})")
        return found

    @staticmethod
    async def _lookup(host: str, port: int, family: int) -> list[ResolveResult]:
        infos = await lookup(host, port, family)
        if not infos:
            raise OSError(f"{host} does not resolve")
        return [{"hostname": host, "host": info[4][0], "port": info[4][1], "family": info[0], "proto": info[2],
                 "flags": socket.AI_NUMERICHOST} for info in infos]

    async def close(self) -> None:
        pass


def refused_literal(url: str, allow: tuple[str, ...]) -> str | None:
    """Why a delivery may not go to `url` before any connection (a literal address aiohttp would not
    resolve, a form that is no longer acceptable); None if it may try."""
    try:
        host, _ = parse(url, allow)
    except Refused as exc:
        return str(exc)
    if allowed(host, allow) or not _literal(host):
        return None
    return _literal_refused(host)


def _literal_refused(host: str) -> str | None:
    """Why a host written as an address may not be sent to: not public, or written in a form
    ("127.1", "0x7f000001") whose reading differs from one library to the next."""
    if not public(host):
        return f"the webhook host {host} is not a public address"
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return f"the webhook host {host} must be written as a dotted-quad or standard IPv6 address"
    return None
