"""Azure Storage's REST API spoken directly, for the blob and queue calls on a task's path.

Through the SDK a call costs the dev host about 1.6 ms of CPU (azure-core's pipeline, its
policies and deserialisers); the same request made here over the same aiohttp costs about 0.5 ms
(docs/performance.md, "Storage calls without the SDK"), and a task makes six or seven of them.
storage.py, the one adapter the store talks to, sends the frequent calls here and keeps the SDK
for the rare ones (creating containers and queues, listings, snapshots, batches, leases, SAS).

Invariants:
- every request is authorised as the SDK would: Shared Key with the account key of a connection
  string, the SAS token of one, or a bearer token from the identity's credential (fetched for
  `https://storage.azure.com/.default`, reused until five minutes before it runs out);
- a request that gets no answer, or a 408 or a 5xx other than 501 and 505, is sent again at most
  RETRIES times, about BACKOFF s apart (the SDK's LinearRetry as storage.py configures it); a
  connection has 3 s to open, and each read `timeout` s;
- a 401 to a bearer token drops the token, and the request is sent once more with a new one, for
  the tenant the challenge names (as azure-core's bearer policy does);
- what comes back is an `Answer` when its status is one the caller expects, `Refused` (with the
  status and storage's x-ms-error-code) when storage said no, `NoAnswer` when it never said
  anything, and `Unparseable` when the HTTP client cannot read the response (a header field over
  its 8 KiB limit).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import random
import re
import time
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import quote, urlsplit

import aiohttp
from azure.core.exceptions import ClientAuthenticationError
from multidict import CIMultiDictProxy
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from yarl import URL

from .header_order import storage_header_order

_tracer = trace.get_tracer("broker.storage")
RETRIES = 2
BACKOFF = 0.3
JITTER = 0.2
TOKEN_SCOPE = "https://storage.azure.com/.default"
TOKEN_RENEW_BEFORE = 300
_RETRIED = frozenset({408, 500, 502, 503, 504}) | frozenset(range(506, 600))
# The standard headers Shared Key signs, in its order (Date is left empty: x-ms-date is sent).
_SIGNED = ("content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
           "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range")


class Refused(Exception):
    """Storage answered with a status the caller did not expect."""

    def __init__(self, status: int, code: str, challenge: str = "") -> None:
        super().__init__(f"storage answered {status} {code}")
        self.status, self.code, self.challenge = status, code, challenge

    @property
    def credentials_refused(self) -> bool:
        """Storage refuses the key or token (or the identity lacks the role): a setting to fix."""
        return self.status in (401, 403)


class NoAnswer(Exception):
    """Storage did not answer (refused connection, reset, timeout), after the retries."""


class Unparseable(Exception):
    """Storage answered, but with a response the HTTP client refuses to read."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: CIMultiDictProxy
    body: bytes


class Account:
    """One storage service (blob or queue) of one account: its endpoint, how requests to it are
    authorised, and one aiohttp session per event loop."""

    def __init__(self, endpoint: str, account: str, api_version: str, timeout: float, key: str | None = None,
                 credential=None) -> None:
        parts = urlsplit(endpoint)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.base = parts.path.rstrip("/")  # "/devstoreaccount1" on Azurite, "" on Azure
        self.sas = parts.query  # a SAS connection string's token, sent with every request
        self.account, self.api_version, self.key, self.credential = account, api_version, key, credential
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=timeout)
        self._decoded: bytes | None = None
        self._session: aiohttp.ClientSession | None = None
        self._token: tuple[str, float] | None = None
        self._tenant: str | None = None
        self._token_lock: asyncio.Lock | None = None

    async def call(self, method: str, path: str, query: dict[str, str] | None = None,
                   headers: dict[str, str] | None = None, body: bytes = b"", expect: tuple[int, ...] = (200, 201, 204),
                   ) -> Answer:
        """`method` on `path` (below the account, already quoted), with `query` (values unquoted).
        An answer whose status is not in `expect` raises Refused."""
        query = query or {}
        # A client span per call, as the SDK's own instrumentation makes: a dependency under the
        # step's operation in Application Insights (a no-op unless telemetry.configure set it up).
        name = f"{method} {path.split('/', 2)[1]}"  # the container or queue
        attributes = {"http.method": method, "http.url": self.origin + self.base + path, "az.namespace": "Microsoft.Storage"}
        with _tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes) as span:
            try:
                answer = await self._call(method, path, query, headers, body, expect)
            except Refused as exc:
                if exc.status != 401 or self.credential is None:
                    raise
                # The token was revoked, or is for another tenant than the account's: as azure-core's
                # bearer policy does, forget it, take one for the tenant the challenge names, try once more.
                self._forget_token(exc.challenge)
                answer = await self._call(method, path, query, headers, body, expect)
            span.set_attribute("http.status_code", answer.status)
            return answer

    async def _call(self, method: str, path: str, query: dict[str, str], headers: dict[str, str] | None, body: bytes,
                    expect: tuple[int, ...]) -> Answer:
        for attempt in range(RETRIES + 1):
            try:
                answer = await self._send(method, path, query, headers or {}, body)
            except aiohttp.ClientResponseError as exc:  # raised while reading the response's head
                raise Unparseable(str(exc)) from exc
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                if attempt == RETRIES:
                    raise NoAnswer(f"{type(exc).__name__}: {exc}") from exc
            else:
                if answer.status in expect:
                    return answer
                if answer.status not in _RETRIED or attempt == RETRIES:
                    raise Refused(answer.status, answer.headers.get("x-ms-error-code", ""),
                                  answer.headers.get("WWW-Authenticate", ""))
            await asyncio.sleep(BACKOFF + random.uniform(-JITTER, JITTER))
        raise AssertionError("unreachable")

    async def _send(self, method: str, path: str, query: dict[str, str], extra: dict[str, str], body: bytes) -> Answer:
        headers = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": self.api_version, **extra}
        if body or method in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
            if not any(name.lower() == "content-type" for name in headers):
                headers["Content-Type"] = "application/octet-stream"  # aiohttp would add it, unsigned
        resource = self.base + path
        if "%" in resource:  # as the SDK sends and signs it: the path yarl makes of it (%26 is sent as &)
            resource = str(URL(resource))
        text = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        if self.sas:
            text = f"{text}&{self.sas}" if text else self.sas
        elif self.key is not None:
            headers["Authorization"] = self._shared_key(method, resource, query, headers)
        elif self.credential is not None:
            headers["Authorization"] = "Bearer " + await self._bearer()
        url = URL(self.origin + resource + (f"?{text}" if text else ""), encoded=True)
        session = self._session
        if session is None or session.closed:
            # use env settings off, as for the SDK's transport in storage.py: no ~/.netrc, no proxies.
            session = self._session = aiohttp.ClientSession(timeout=self.timeout, trust_env=False,
                                                            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
        async with session.request(method, url, data=body if body else None, headers=headers,
                                   allow_redirects=False) as response:
            return Answer(response.status, response.headers, await response.read())

    def _shared_key(self, method: str, resource: str, query: dict[str, str], headers: dict[str, str]) -> str:
        lower = {k.lower(): v for k, v in headers.items()}
        if lower.get("content-length") == "0":
            del lower["content-length"]
        signed = [method] + [lower.get(name, "") for name in _SIGNED]
        canonical = "".join(f"{name}:{value}\n" for name, value in
                            storage_header_order([(k, v) for k, v in lower.items() if k.startswith("x-ms-")]))
        canonical += f"/{self.account}{resource}"
        canonical += "".join(f"\n{k.lower()}:{v}" for k, v in sorted(query.items()))
        signature = hmac.new(self._key_bytes(), ("\n".join(signed) + "\n" + canonical).encode(), hashlib.sha256)
        return f"SharedKey {self.account}:{base64.b64encode(signature.digest()).decode()}"

    def _key_bytes(self) -> bytes:
        if self._decoded is None:
            try:
                self._decoded = base64.b64decode(self.key)  # as the SDK decodes it: stray characters skipped
            except (binascii.Error, ValueError) as exc:
                raise ClientAuthenticationError(message="the storage account key is not base64") from exc
        return self._decoded

    async def _bearer(self) -> str:
        if self._token is None or time.time() >= self._token[1] - TOKEN_RENEW_BEFORE:
            self._token_lock = self._token_lock or asyncio.Lock()
            async with self._token_lock:
                if self._token is None or time.time() >= self._token[1] - TOKEN_RENEW_BEFORE:
                    tenant = {"tenant_id": self._tenant} if self._tenant else {}
                    token = await self.credential.get_token(TOKEN_SCOPE, **tenant)
                    self._token = (token.token, float(token.expires_on))
        return self._token[0]

    def _forget_token(self, challenge: str) -> None:
        """After a 401: the next request takes a new token, for the tenant the challenge names
        (`Bearer authorization_uri=https://login.microsoftonline.com/<tenant>/oauth2/authorize ...`)."""
        self._token = None
        named = re.search(r'authorization_uri="?https://[^/\s"]+/([^/\s"]+)', challenge)
        self._tenant = named.group(1) if named else self._tenant

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
