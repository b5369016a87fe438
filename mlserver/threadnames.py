"""Gives the calling thread its Python name at the OS level too ("mls:fetch", "mls:report_0", ...),
so `top -H`, `ps -L` and /proc show where a worker's CPU goes. Linux only; elsewhere it does nothing."""

from __future__ import annotations

import ctypes
import sys
import threading

PR_SET_NAME = 15
PREFIX = "mls:"


def _find_prctl():
    if not sys.platform.startswith("linux"):
        return None
    for library in (None, "libc.so.6"):  # the process's own symbols first (glibc or musl), then glibc by name
        try:
            prctl = ctypes.CDLL(library, use_errno=True).prctl
        except (OSError, AttributeError):
            continue
        prctl.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        return prctl
    return None


_PRCTL = _find_prctl()


def name_os_thread() -> None:
    """Never raises: it runs first thing in every worker thread, and names are only a convenience."""
    if _PRCTL is None:
        return
    try:
        name = (PREFIX + threading.current_thread().name)[:15].encode("ascii", "replace")  # the kernel keeps 15 bytes
        _PRCTL(PR_SET_NAME, name, 0, 0, 0)
    except Exception:  # noqa: BLE001 - see the docstring
        pass
