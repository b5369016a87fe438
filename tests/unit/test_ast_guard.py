"""tests/support/ast_guard.py: with it, a thread formatting tracebacks while another parses breaks
nothing. Without it, on CPython 3.11.7 (CI's), the same loop fails on its first parse with
"SystemError: AST constructor recursion depth mismatch"."""

from __future__ import annotations

import ast
import gc
import sys
import threading
import traceback

from tests.support import ast_guard

SOURCE = open(ast.__file__).read()


def parse_while_another_thread_formats_tracebacks(parses: int) -> SystemError | None:
    stop = threading.Event()

    def format_tracebacks() -> None:
        while not stop.is_set():
            try:
                {}["missing"]
            except KeyError:
                traceback.format_exc()

    def busy(phase, info) -> None:  # Python code in every collection: the GIL changes hands mid-parse
        sum(range(200))

    switch = sys.getswitchinterval()
    gc.callbacks.append(busy)
    sys.setswitchinterval(1e-6)
    other = threading.Thread(target=format_tracebacks, daemon=True)
    other.start()
    try:
        for _ in range(parses):
            ast.parse(SOURCE)
    except SystemError as exc:
        return exc
    finally:
        stop.set()
        other.join()
        sys.setswitchinterval(switch)
        gc.callbacks.remove(busy)
    return None


def test_with_the_guard_parsing_beside_traceback_formatting_never_fails():
    assert ast.parse is ast_guard._guarded_parse  # tests/conftest.py installed it
    assert parse_while_another_thread_formats_tracebacks(40) is None

