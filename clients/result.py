"""A finished task's output: the bytes the worker returned and their content type."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Result:
    task_id: str
    content: bytes
    content_type: str

    @property
    def media_type(self) -> str:
        """The content type without parameters (`application/json; charset=utf-8` -> `application/json`)."""
        return self.content_type.split(";")[0].strip().lower()

    @property
    def is_json(self) -> bool:
        return self.media_type == "application/json" or self.media_type.endswith("+json")

    def json(self):
        return json.loads(self.content)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_bytes(self.content)
        return path
