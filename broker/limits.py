"""What is counted per client, across every instance of the app: request rates (BROKER_RATE_LIMIT, per
client key and per token), the tasks a token has submitted (its `max_tasks`), and revoked tokens.

Counters are append blobs in the `limits` container, one per (who, window): a request appends one
block, and storage answers with the new block count, atomically, so instances counting at once
never lose a count and a burst from many threads is held to the limit exactly (fixed windows: a
client can fit up to twice the limit across a window's edge, no more). Names say when they stop
mattering, so the cleanup timer deletes them without reading them:

    rate/<who>/<window start>      a window's requests        gone two windows later
    tasks/<expires>/<token id>     a token's submitted tasks  gone when the token expires
    revoked/<expires>/<token id>   a revocation (empty)       gone when the token expires
"""

from __future__ import annotations

import time

from .errors import QuotaUsed, RateLimited, TokenRevoked
from .rates import Rate
from .storage import Storage
from .tokens import Token

REVOCATION_CACHE = 5.0  # seconds an instance trusts its last look at whether a token is revoked
MAX_CACHED = 10_000


class Limits:
    def __init__(self, storage: Storage, clock=time.time) -> None:
        self.storage = storage
        self.now = clock
        self._revoked: dict[str, tuple[float, bool]] = {}  # token id -> (when looked, revoked)

    async def admit(self, who: str, rate: Rate) -> None:
        """Count one request of `who` (a key's scope, or a token's id) against `rate`; RateLimited past it."""
        await self.storage.ensure_containers()
        at = self.now()
        window = int(at // rate.period * rate.period)
        if await self.storage.limits.count(f"rate/{who}/{window}") > rate.count:
            raise RateLimited(rate.count, rate.period, max(1, int(window + rate.period - at + 0.999)))

    async def spend(self, token: Token) -> None:
        """Count one task submitted with `token`; QuotaUsed past its max_tasks."""
        await self.storage.ensure_containers()
        if await self.storage.limits.count(f"tasks/{int(token.expires)}/{token.id}") > token.max_tasks:
            raise QuotaUsed(token.max_tasks)

    async def check(self, token: Token) -> None:
        """TokenRevoked if its minter revoked it (looked up at most every REVOCATION_CACHE seconds)."""
        looked = self._revoked.get(token.id)
        at = time.monotonic()
        if looked is None or (not looked[1] and at - looked[0] >= REVOCATION_CACHE):
            revoked = await self.storage.limits.head(_revocation(token)) is not None
            if len(self._revoked) >= MAX_CACHED:
                self._revoked.clear()
            self._revoked[token.id] = looked = (at, revoked)
        if looked[1]:
            raise TokenRevoked()

    async def revoke(self, token: Token) -> None:
        await self.storage.ensure_containers()
        await self.storage.limits.put(_revocation(token), b"", {}, "application/octet-stream")
        self._revoked[token.id] = (time.monotonic(), True)

    async def sweep(self) -> int:
        """Delete counters and revocations that no longer matter; how many."""
        await self.storage.ensure_containers()
        at, gone, continuation = self.now(), [], None
        while True:
            blobs, continuation = await self.storage.limits.page(continuation, 5000)
            gone += [blob.name for blob in blobs if _done_with(blob.name, at)]
            if continuation is None or len(gone) >= 5000:
                break
        for name in gone:
            await self.storage.limits.delete(name)
        return len(gone)


def _revocation(token: Token) -> str:
    return f"revoked/{int(token.expires)}/{token.id}"


def _done_with(name: str, at: float) -> bool:
    parts = name.split("/")
    try:
        if parts[0] == "rate" and len(parts) == 3:
            return int(parts[2]) + 2 * 3600 < at  # two of the longest windows on
        if parts[0] in ("tasks", "revoked") and len(parts) == 3:
            return int(parts[1]) < at
    except ValueError:
        pass
    return True  # a name this module never writes
