"""One `ast.parse` at a time in the test process: a guard against a CPython 3.11 bug.

CPython 3.11 keeps the counter that checks AST conversion's recursion depth in per-interpreter
state, shared by every thread. When one thread's `ast.parse` lets go of the GIL mid-conversion (a
garbage collection runs Python code) and another thread parses meanwhile, the first one fails with
"SystemError: AST constructor recursion depth mismatch". In the test process the main thread
parses whenever pytest rewrites a module imported lazily (hypothesis's and schemathesis's are), and
other threads parse whenever they format a traceback (3.11 locates the carets with `ast`): a server
thread printing an error (devstack/localserver.py no longer lets them), pytest's hook for an
exception in a thread, a log record with exc_info. One CI run failed that way.

`install()` wraps `ast.parse` in a re-entrant lock. Parsing is rare and short here, so nothing
waits for long; the lock is taken before the GIL is let go, so no two conversions overlap.
"""

from __future__ import annotations

import ast
import threading

_lock = threading.RLock()
_parse = ast.parse


def _guarded_parse(*args, **kwargs):
    with _lock:
        return _parse(*args, **kwargs)


def install() -> None:
    ast.parse = _guarded_parse
