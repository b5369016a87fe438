"""Turning what the caller hands us into bytes, and naming content types both ways."""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path

OCTET_STREAM = "application/octet-stream"

# mimetypes reads the system's tables, which differ between machines; these few we pin.
EXTENSIONS = {"application/json": ".json", "image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp",
              "image/gif": ".gif", "image/bmp": ".bmp", "image/tiff": ".tif", "text/plain": ".txt",
              "text/csv": ".csv", "application/octet-stream": ".bin"}
TYPES = {extension: kind for kind, extension in EXTENSIONS.items()} | {".jpeg": "image/jpeg", ".tiff": "image/tiff"}


def guess_content_type(name: str | os.PathLike) -> str:
    suffix = Path(name).suffix.lower()
    return TYPES.get(suffix) or mimetypes.guess_type(str(name))[0] or OCTET_STREAM


def extension_for(content_type: str) -> str:
    kind = content_type.split(";")[0].strip().lower()
    return EXTENSIONS.get(kind) or mimetypes.guess_extension(kind) or ".bin"


def payload_size(data_or_path) -> int | None:
    """The payload's bytes without reading it: for bytes and paths (None for a file object)."""
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        return memoryview(data_or_path).nbytes
    if isinstance(data_or_path, (str, os.PathLike)):
        return os.path.getsize(data_or_path)
    return None


def guess_for(data_or_path) -> str:
    """The content type a payload's file name suggests (octet-stream for bytes)."""
    if isinstance(data_or_path, (str, os.PathLike)):
        return guess_content_type(data_or_path)
    return OCTET_STREAM


def read_payload(data_or_path) -> tuple[bytes, str]:
    """(bytes, guessed content type) from bytes, a path (str or PathLike) or a binary file object.

    Files are read whole: a submit may be retried, and a stream cannot be sent twice.
    """
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        return bytes(data_or_path), OCTET_STREAM
    if isinstance(data_or_path, (str, os.PathLike)):
        return Path(data_or_path).read_bytes(), guess_content_type(data_or_path)
    if hasattr(data_or_path, "read"):
        name = getattr(data_or_path, "name", "")
        return data_or_path.read(), guess_content_type(name) if isinstance(name, str) and name else OCTET_STREAM
    raise TypeError("data_or_path must be bytes, a path or a binary file object")
