"""The broker's settings, read from the environment (Azure app settings or local.settings.json).

Read on every use rather than once at import: reading a dozen variables costs microseconds,
and it keeps a module import free of side effects. An empty value counts as unset.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass

from .rates import Rate

MODEL_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")  # it becomes part of a storage queue name
MAX_MODEL_CHARS = 40

AZURITE_CONNECTION = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
)

# Every BROKER_* setting with its default; the README's configuration table mirrors this.
DEFAULTS = {
    "BROKER_WORKER_KEYS": "",
    "BROKER_CLIENT_KEYS": "",
    "BROKER_MAX_ATTEMPTS": "5",
    "BROKER_MAX_PAYLOAD_BYTES": str(20 * 1024 * 1024),
    "BROKER_RESULT_TTL_SECONDS": "86400",
    "BROKER_CLEANUP_BATCH": "1000",
    "BROKER_STORAGE_TIMEOUT_SECONDS": "20",
    "BROKER_LEASE_SECRET": "",
    "BROKER_QUEUED_TTL_SECONDS": "86400",
    "BROKER_MODELS": "",
    "BROKER_MAX_CLAIM_BYTES": str(32 * 1024 * 1024),
    "BROKER_INLINE_BYTES": str(1024 * 1024),
    "BROKER_MAX_UPLOAD_BYTES": str(8 * 1024**3),
    "BROKER_UPLOAD_SECONDS": "900",
    "BROKER_WORKER_AUTH_LEVEL": "anonymous",
    "BROKER_RATE_LIMIT": "",
    "BROKER_WEBHOOK_SECRET": "",
    "BROKER_WEBHOOK_ALLOW": "",
    "BROKER_WEBHOOK_TRIES": "6",
    "BROKER_WEBHOOK_BACKOFF_SECONDS": "60",
    "BROKER_WEBHOOK_TIMEOUT_SECONDS": "10",
}
MIN_SECRET_CHARS = 32


class SettingsError(Exception):
    """A setting holds a value the broker cannot use (not a ValueError: nothing may take it for a
    record that failed to parse)."""


def _get(name: str) -> str:
    value = os.environ.get(name, "").strip()
    return value if value else DEFAULTS.get(name, "")


def _int(name: str, low: int, high: int) -> int:
    raw = _get(name)
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"setting {name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"setting {name} must be between {low} and {high}, got {value}")
    return value


def _keys(name: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in _get(name).split(",") if k.strip())


@dataclass(frozen=True)
class Settings:
    storage: StorageConfig | str  # a StorageConfig; a plain connection string is taken as one
    worker_keys: tuple[str, ...]
    client_keys: tuple[str, ...]
    max_attempts: int
    max_payload_bytes: int
    result_ttl_seconds: int
    cleanup_batch: int
    storage_timeout_seconds: int
    queued_ttl_seconds: int = 86400
    models: tuple[str, ...] = ()  # the model names served; empty: any
    max_claim_bytes: int = 32 * 1024 * 1024
    secrets: tuple[str, ...] = ()  # BROKER_LEASE_SECRET, checked when first used
    inline_bytes: int = 1024 * 1024  # payloads up to this ride inside a claim; larger ones go by URL
    max_upload_bytes: int = 8 * 1024**3  # an uploaded payload or result at most
    upload_seconds: int = 900  # how long an upload URL lets a client write, and a result URL read
    rate_limit: Rate | None = None  # requests per client key and per token (BROKER_RATE_LIMIT); None: none
    webhook_secret: str = ""  # BROKER_WEBHOOK_SECRET, whsec_<base64>: signs webhooks; unset, none are sent
    webhook_allow: tuple[str, ...] = ()  # hosts a webhook may reach though not public (lowercase)
    webhook_tries: int = 6  # deliveries of one event at most ...
    webhook_backoff_seconds: int = 60  # ... the first retry this long after the first try, each next twice as long
    webhook_timeout_seconds: int = 10  # a receiver's answer within this, or the try failed

    @property
    def webhook_key(self) -> bytes | None:
        """The key webhooks are signed with; None when BROKER_WEBHOOK_SECRET is unset (webhooks are refused)."""
        if not self.webhook_secret:
            return None
        prefix, _, encoded = self.webhook_secret.partition("_")
        try:
            key = base64.b64decode(encoded, validate=True) if prefix == "whsec" else b""
        except (binascii.Error, ValueError):
            key = b""
        if not 24 <= len(key) <= 64:
            raise SettingsError("BROKER_WEBHOOK_SECRET must be whsec_ and the base64 of 24 to 64 random bytes")
        return key

    @property
    def lease_secrets(self) -> tuple[bytes, ...]:
        """The secrets that sign lease tokens and key idempotent task ids: the first signs, any verifies.

        Checked when needed rather than at load, so a broker without one still takes plain submits
        and answers reads (a worker route answers 503 saying what to set)."""
        self.check_lease_secret()
        return tuple(secret.encode() for secret in self.secrets)

    def check_lease_secret(self) -> None:
        """Raise the SettingsError that says what to set, if BROKER_LEASE_SECRET is unusable."""
        if not self.secrets:
            raise SettingsError("set BROKER_LEASE_SECRET to a long random value (the same on every instance)")
        if any(len(secret) < MIN_SECRET_CHARS for secret in self.secrets):
            raise SettingsError(f"every BROKER_LEASE_SECRET value must be at least {MIN_SECRET_CHARS} characters")


IDENTITY = "AzureWebJobsStorage__"  # the Functions host's prefix for an identity-based connection


@dataclass(frozen=True)
class StorageConfig:
    """Where storage is and how the broker signs in: a connection string (an account key: Azurite,
    key-based accounts), or, identity-based as the Functions host documents it, the service URLs and
    a Microsoft Entra credential (a managed identity in Azure) - no key anywhere."""

    connection: str | None = None
    blob_uri: str | None = None
    queue_uri: str | None = None
    credential: str = ""  # "managedidentity": that alone; otherwise azure-identity's default chain
    client_id: str | None = None  # a user-assigned identity's client id

    @property
    def identity_based(self) -> bool:
        return self.connection is None


def storage_config() -> StorageConfig:
    """BROKER_STORAGE_CONNECTION wins over AzureWebJobsStorage ('UseDevelopmentStorage=true' is
    Azurite); without either, AzureWebJobsStorage__accountName (or __blobServiceUri and
    __queueServiceUri), with __credential and __clientId, make an identity-based connection."""
    raw = _get("BROKER_STORAGE_CONNECTION") or _get("AzureWebJobsStorage")
    if raw:
        if raw.replace(" ", "").rstrip(";").lower() == "usedevelopmentstorage=true":
            return StorageConfig(AZURITE_CONNECTION)
        return StorageConfig(raw)
    account = _get(IDENTITY + "accountName")
    blob = _get(IDENTITY + "blobServiceUri") or (f"https://{account}.blob.core.windows.net" if account else "")
    queue = _get(IDENTITY + "queueServiceUri") or (f"https://{account}.queue.core.windows.net" if account else "")
    if not (blob and queue):
        raise SettingsError("no storage configured: set AzureWebJobsStorage (a connection string) or "
                            "AzureWebJobsStorage__accountName (an identity-based connection)")
    return StorageConfig(None, blob.rstrip("/"), queue.rstrip("/"), _get(IDENTITY + "credential").lower(),
                         _get(IDENTITY + "clientId") or None)


def load() -> Settings:
    return Settings(
        storage=storage_config(),
        worker_keys=_keys("BROKER_WORKER_KEYS"),
        client_keys=_keys("BROKER_CLIENT_KEYS"),
        max_attempts=_int("BROKER_MAX_ATTEMPTS", 1, 100),
        max_payload_bytes=_int("BROKER_MAX_PAYLOAD_BYTES", 1, 100 * 1024 * 1024),
        result_ttl_seconds=_int("BROKER_RESULT_TTL_SECONDS", 1, 365 * 86400),
        cleanup_batch=_int("BROKER_CLEANUP_BATCH", 1, 100_000),
        storage_timeout_seconds=_int("BROKER_STORAGE_TIMEOUT_SECONDS", 1, 600),
        queued_ttl_seconds=_int("BROKER_QUEUED_TTL_SECONDS", 1, 365 * 86400),
        models=_models(),
        max_claim_bytes=_int("BROKER_MAX_CLAIM_BYTES", 1, 1024 * 1024 * 1024),
        secrets=_keys("BROKER_LEASE_SECRET"),
        inline_bytes=_int("BROKER_INLINE_BYTES", 1024, 64 * 1024 * 1024),
        max_upload_bytes=_int("BROKER_MAX_UPLOAD_BYTES", 1, 4 * 1024**4),
        upload_seconds=_int("BROKER_UPLOAD_SECONDS", 1, 7 * 86400),
        rate_limit=_rate("BROKER_RATE_LIMIT"),
        webhook_secret=_get("BROKER_WEBHOOK_SECRET"),
        webhook_allow=tuple(host.lower() for host in _keys("BROKER_WEBHOOK_ALLOW")),
        webhook_tries=_int("BROKER_WEBHOOK_TRIES", 1, 20),
        webhook_backoff_seconds=_int("BROKER_WEBHOOK_BACKOFF_SECONDS", 1, 3600),
        webhook_timeout_seconds=_int("BROKER_WEBHOOK_TIMEOUT_SECONDS", 1, 60),
    )


def _rate(name: str) -> Rate | None:
    try:
        return Rate.parse(_get(name))
    except ValueError as exc:
        raise SettingsError(f"setting {name} {exc}, got {_get(name)[:40]!r}") from None


def worker_auth_level() -> str:
    """BROKER_WORKER_AUTH_LEVEL: `function` puts the worker and operations routes behind the platform's
    function keys too (Azure checks `x-functions-key` before the app runs: unpaid traffic is refused
    unbilled); `anonymous` (the default) leaves the app's own worker key as their only gate. Read
    when the app starts: the auth level is part of each function's definition."""
    level = (_get("BROKER_WORKER_AUTH_LEVEL") or "anonymous").lower()
    if level not in ("anonymous", "function"):
        raise SettingsError(f"setting BROKER_WORKER_AUTH_LEVEL must be anonymous or function, got {level[:40]!r}")
    return level


def _models() -> tuple[str, ...]:
    names = _keys("BROKER_MODELS")
    for name in names:
        if len(name) > MAX_MODEL_CHARS or not MODEL_NAME.fullmatch(name):
            raise SettingsError(f"setting BROKER_MODELS holds {name[:50]!r}, which is not a model name")
    return names
