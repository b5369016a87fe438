"""Gives the calling thread its Python name at the OS level too ("mls:fetch", "mls:upload_0", ...),
so `top -H`, `ps -L` and /proc show where a worker's CPU goes. Linux only; elsewhere it does nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

PR_SET_NAME = 15
PREFIX = "mls:"


def name_os_thread() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        name = (PREFIX + threading.current_thread().name).encode()[:15]  # the kernel keeps 15 bytes
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
    except (OSError, AttributeError):  # no libc to be found: the names are a convenience
        pass
