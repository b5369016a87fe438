"""Client tokens: what a web page holds instead of a client key.

A backend that holds a client key mints a token per page view (POST /token): it names the models it
may submit to, when it runs out (at most a day), and how many tasks it may submit at most. The page
sends it as `Authorization: Bearer tok_…` on client routes. A token is verified without storage: it
is signed (HMAC-SHA256) with the app's BROKER_LEASE_SECRET, which every instance shares, so any
instance verifies any token, and a rotation keeps tokens of the old value valid while it is listed.
Only what must be counted or can change is in storage (the store's `limits` container): how many
tasks a token has submitted, and whether its minter revoked it.

A token acts for the client key that minted it (`owner`, that key's scope): the tasks it submits
are that key's, and it sees that key's tasks and no other's.
"""

from __future__ import annotations

import binascii
import json
import secrets
from dataclasses import dataclass

from .signing import seal, unseal

PREFIX = "tok_"
PURPOSE = b"client-token"
MAX_LIFETIME = 86400
MAX_MODELS = 16
MAX_TASKS = 50_000  # a token's counter is an append blob: at most 50,000 blocks


class BadToken(ValueError):
    """Not a token this broker issued, or one that ran out; the message is one sentence."""


def looks_like_token(bearer: str) -> bool:
    return bearer.startswith(PREFIX)


@dataclass(frozen=True)
class Token:
    id: str  # 16 hex characters: names its counter and its revocation
    owner: str  # the minting client key's scope (auth.client_scope)
    models: tuple[str, ...]
    expires: float  # Unix time
    max_tasks: int

    @classmethod
    def mint(cls, owner: str, models: tuple[str, ...], expires: float, max_tasks: int) -> Token:
        return cls(secrets.token_hex(8), owner, models, expires, max_tasks)

    def encode(self, secrets_: tuple[bytes, ...]) -> str:
        body = json.dumps([self.id, self.owner, list(self.models), self.expires, self.max_tasks],
                          separators=(",", ":")).encode()
        return PREFIX + seal(PURPOSE, secrets_[0], body)

    @classmethod
    def decode(cls, text: str, secrets_: tuple[bytes, ...], now: float) -> Token:
        try:
            body = unseal(PURPOSE, secrets_, text.removeprefix(PREFIX))
            if body is None:
                raise BadToken("the token is not one this broker issued")
            token_id, owner, models, expires, max_tasks = json.loads(body)
            token = cls(token_id, owner, tuple(models), float(expires), int(max_tasks))
        except BadToken:
            raise
        except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
            raise BadToken("the token is malformed") from None
        if token.expires <= now:
            raise BadToken("the token has expired")
        return token

    def covers(self, model: str) -> bool:
        return model in self.models
