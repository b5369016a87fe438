"""Moving bytes to and from Azure Blob Storage through the SAS URLs the broker hands out, with plain
HTTP (requests), so neither the client nor the worker needs the Azure SDK.

- `upload`: one PUT for a small payload; for a large one, blocks of BLOCK_BYTES PUT in parallel, then
  the block list that makes them the blob (nothing is visible until that last request, so a transfer
  cut short never leaves half a blob).
- `download`: one GET, or ranged GETs in parallel into one buffer (or file).
- `etag`: what an idle worker polls (a HEAD).

Failures that may pass (no answer, 408, 429, 5xx) are retried with backoff; what storage refuses
(403: the URL ran out, or does not allow this) raises `TransferError` at once.

This module ships in both distributions, byte for byte (clients/blobs.py and mlserver/blobs.py;
tests/unit checks they are the same), so that each installs alone with only `requests`.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

BLOCK_BYTES = 8 * 1024 * 1024  # a block, and the most one plain PUT or GET carries
THREADS = 4
API_VERSION = "2023-11-03"  # a Blob service version every current Azure region and Azurite accept
TIMEOUT = (10, 120)  # connect, and between bytes
Source = bytes | bytearray | memoryview | str | Path
Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


class TransferError(Exception):
    """Storage refused a transfer, or kept failing it; the message is one sentence."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def pinned_session(url: str, pool: int = THREADS + 2, retry: Retry | None = None) -> requests.Session:
    """A session with the environment's proxy and CA settings for `url` read once, never ~/.netrc
    (requests would read both on every request, and a matching netrc entry - a `default` one matches
    every host - would replace the Authorization header), retrying as `retry` says (by default as
    suits storage: passing faults, every method, since every transfer here may be repeated)."""
    session = requests.Session()
    settings = session.merge_environment_settings(url, {}, None, None, None)
    session.trust_env = False
    session.proxies.update(settings["proxies"])
    session.verify = settings["verify"]
    retry = retry or Retry(total=4, connect=4, read=2, status=4, other=0, allowed_methods=None,
                           status_forcelist=(408, 429, 500, 502, 503, 504), backoff_factor=0.5, backoff_max=10,
                           raise_on_status=False, respect_retry_after_header=True)
    adapter = HTTPAdapter(max_retries=retry, pool_connections=2, pool_maxsize=pool)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _with(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


def _check(response: requests.Response, what: str) -> requests.Response:
    if response.status_code < 300:
        return response
    code = response.headers.get("x-ms-error-code") or response.reason or ""
    hint = " (the URL has run out, or does not allow this)" if response.status_code in (401, 403) else ""
    raise TransferError(f"storage refused the {what}: HTTP {response.status_code} {code}{hint}".rstrip(),
                        response.status_code)


def _send(session: requests.Session, method: str, url: str, what: str, **kwargs) -> requests.Response:
    headers = {"x-ms-version": API_VERSION, **kwargs.pop("headers", {})}
    try:
        response = session.request(method, url, headers=headers, timeout=TIMEOUT, **kwargs)
    except requests.RequestException as exc:
        raise TransferError(f"storage did not answer the {what} ({type(exc).__name__})") from None
    return _check(response, what)


class _Reader:
    """Reads ranges of a payload given as bytes or as a file path, from several threads at once."""

    def __init__(self, source: Source) -> None:
        if isinstance(source, (str, Path)):
            self.path, self.view, self.size = Path(source), None, os.path.getsize(source)
        else:
            self.path, self.view = None, memoryview(source).cast("B")
            self.size = len(self.view)

    def read(self, start: int, length: int) -> bytes:
        if self.view is not None:
            return bytes(self.view[start:start + length])
        with open(self.path, "rb") as file:
            file.seek(start)
            return file.read(length)


class _Tally:
    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.progress, self.done = total, progress, 0
        self.lock = threading.Lock()

    def add(self, count: int) -> None:
        if self.progress is None:
            return
        with self.lock:
            self.done += count
            self.progress(self.done, self.total)


def upload(url: str, source: Source, content_type: str = "application/octet-stream", *,
           session: requests.Session | None = None, threads: int = THREADS, block_bytes: int = BLOCK_BYTES,
           progress: Progress | None = None) -> int:
    """Write `source` (bytes, or a file's path) to the blob at `url`; returns the bytes written."""
    own = session is None
    session = session or pinned_session(url, threads + 2)
    reader = _Reader(source)
    tally = _Tally(reader.size, progress)
    try:
        if reader.size <= block_bytes:
            _send(session, "PUT", url, "upload", data=reader.read(0, reader.size),
                  headers={"x-ms-blob-type": "BlockBlob", "x-ms-blob-content-type": content_type})
            tally.add(reader.size)
            return reader.size
        starts = range(0, reader.size, block_bytes)
        ids = [base64.b64encode(f"block-{index:08d}".encode()).decode() for index in range(len(starts))]

        def put_block(index: int) -> None:
            start = starts[index]
            data = reader.read(start, min(block_bytes, reader.size - start))
            block = requests.utils.quote(ids[index], safe="")
            _send(session, "PUT", _with(url, f"comp=block&blockid={block}"), "upload", data=data)
            tally.add(len(data))

        with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="blob-up") as pool:
            for done in [pool.submit(put_block, index) for index in range(len(starts))]:
                done.result()
        listing = "".join(f"<Latest>{block_id}</Latest>" for block_id in ids)
        _send(session, "PUT", _with(url, "comp=blocklist"), "upload",
              data=f'<?xml version="1.0" encoding="utf-8"?><BlockList>{listing}</BlockList>'.encode(),
              headers={"x-ms-blob-content-type": content_type, "Content-Type": "application/xml"})
        return reader.size
    finally:
        if own:
            session.close()


def download(url: str, size: int | None = None, *, session: requests.Session | None = None,
             threads: int = THREADS, block_bytes: int = BLOCK_BYTES, progress: Progress | None = None,
             into: str | Path | None = None) -> bytes | bytearray | None:
    """The blob at `url`: its bytes (`size` known saves a request), or, `into` a file path, written
    there (nothing returned)."""
    own = session is None
    session = session or pinned_session(url, threads + 2)
    try:
        if size is None:
            size = int(_send(session, "HEAD", url, "download").headers.get("Content-Length", 0))
        tally = _Tally(size, progress)
        if size <= block_bytes:
            data = _send(session, "GET", url, "download").content
            tally.add(len(data))
            if into is None:
                return data
            Path(into).write_bytes(data)
            return None
        buffer = bytearray(size) if into is None else None
        if into is not None:
            with open(into, "wb") as file:
                file.truncate(size)

        def get_range(start: int) -> None:
            end = min(start + block_bytes, size) - 1
            data = _send(session, "GET", url, "download", headers={"Range": f"bytes={start}-{end}"}).content
            if len(data) != end - start + 1:
                raise TransferError(f"storage answered {len(data)} bytes for a range of {end - start + 1}")
            if buffer is not None:
                buffer[start:end + 1] = data
            else:
                with open(into, "r+b") as file:  # a handle per range: threads never share a position
                    file.seek(start)
                    file.write(data)
            tally.add(len(data))

        with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="blob-down") as pool:
            for done in [pool.submit(get_range, start) for start in range(0, size, block_bytes)]:
                done.result()
        return buffer
    finally:
        if own:
            session.close()


def etag(url: str, session: requests.Session) -> str | None:
    """The blob's current etag (None if it is not there)."""
    try:
        return _send(session, "HEAD", url, "look").headers.get("ETag")
    except TransferError as exc:
        if exc.status == 404:
            return None
        raise
