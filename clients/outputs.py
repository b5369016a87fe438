"""Where `predict` and `result` put each result: a file named from the input, or stdout for JSON."""

from __future__ import annotations

import os
from pathlib import Path

from .payload import extension_for
from .result import Result


class Outputs:
    """`--out` is a file for a single input, a directory for several (or when it is one already).

    Without `--out`, JSON results go to stdout and anything else to a file in the current directory.
    Names are `<input stem>.<model><extension of the result's type>`: cat.jpg -> cat.resnet50.json.
    """

    def __init__(self, out: str | None, count: int, model: str) -> None:
        self.model = model
        self.file = self.directory = None
        if out is None:
            pass
        elif count > 1 or out.endswith(("/", os.sep)) or Path(out).is_dir():
            self.directory = Path(out)
        else:
            self.file = Path(out)
        self.used: set[Path] = set()

    def target(self, source: str, result: Result, printable: bool) -> Path | None:
        """The path to write this result to, or None to print it (a printable JSON result with no --out)."""
        if self.file is not None:
            return self.file
        if self.directory is None and printable:
            return None
        path = (self.directory or Path.cwd()) / f"{Path(source).stem}.{self.model}{extension_for(result.content_type)}"
        if path in self.used:  # two inputs with one stem (a/cat.png, b/cat.png): keep both results
            path = path.with_name(f"{Path(source).stem}.{self.model}.{result.task_id[:8]}{path.suffix}")
        self.used.add(path)
        return path

    def write(self, path: Path, result: Result) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return result.save(path)
