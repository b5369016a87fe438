"""The README's worker section and the Colab notebook say what the code does."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "mlserver" / "colab_worker.ipynb"


def worker_docs() -> str:
    """The README, whose "Run a worker" section documents the worker."""
    text = (ROOT / "README.md").read_text()
    assert "## Run a worker" in text
    return text


def python_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```python\n(.*?)```", text, re.S)]


def without_docstring(source: str) -> str:
    module = ast.parse(source)
    if module.body and isinstance(module.body[0], ast.Expr) and isinstance(module.body[0].value, ast.Constant):
        module.body = module.body[1:]
    return ast.unparse(module)


def test_the_notebook_is_valid_nbformat_4_and_holds_no_secret():
    notebook = json.loads(NOTEBOOK.read_text())
    assert notebook["nbformat"] == 4 and notebook["nbformat_minor"] >= 4
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    ids = [cell["id"] for cell in notebook["cells"]]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[a-zA-Z0-9-_]{1,64}", i) for i in ids)
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["metadata"], dict)
        assert all(isinstance(line, str) for line in cell["source"])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    text = "".join("".join(cell["source"]) for cell in notebook["cells"])
    assert 'userdata.get("BROKER_WORKER_KEY")' in text
    assert not re.search(r"BROKER_WORKER_KEY\s*=\s*['\"]", text)


def test_the_notebook_runs_the_commands_the_readme_gives():
    notebook = json.loads(NOTEBOOK.read_text())
    cells = ["".join(cell["source"]).strip() for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert cells == [block for block in python_blocks(worker_docs()) if block in cells]
    assert len(cells) == 5


def test_the_custom_handler_example_is_the_tested_one():
    example = next(block for block in python_blocks(worker_docs()) if "class Digits" in block)
    tested = (Path(__file__).parent / "digits.py").read_text()
    assert without_docstring(example) == without_docstring(tested)
