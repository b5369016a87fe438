"""Signed, URL-safe strings, the form of lease tokens (lease.py) and client tokens (tokens.py):
`<body>.<mac>`, each URL-safe base64 without padding, the mac a truncated HMAC-SHA256 of the body
under a purpose label, so that a string signed for one purpose never passes for another. Secrets
come as a tuple: the first signs, every one verifies (how a secret is rotated)."""

from __future__ import annotations

import base64
import hashlib
import hmac

MAC_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(purpose: bytes, secret: bytes, body: bytes) -> bytes:
    return hmac.new(secret, purpose + b"\0" + body, hashlib.sha256).digest()[:MAC_BYTES]


def seal(purpose: bytes, secret: bytes, body: bytes) -> str:
    return f"{_b64(body)}.{_b64(_mac(purpose, secret, body))}"


def unseal(purpose: bytes, secrets: tuple[bytes, ...], text: str) -> bytes | None:
    """The body, if one of `secrets` signed it for `purpose`; None if none did. A string not of this
    form raises ValueError (binascii.Error is one)."""
    body_text, _, mac_text = text.partition(".")
    body, mac = _unb64(body_text), _unb64(mac_text)
    return body if any(hmac.compare_digest(mac, _mac(purpose, secret, body)) for secret in secrets) else None
