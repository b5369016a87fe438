"""Test handlers for the reliability suite, loaded by the real worker as `tests.reliability.handlers:Class`."""

from __future__ import annotations

import itertools
import os
import signal
import threading

from mlserver.handlers.echo import Echo, EchoInput

POISON = b"poison"


class CountingEcho(Echo):
    """Echo whose every result is stamped with who made it; each execution is appended to $RELIABILITY_LEDGER.

    The stamp makes two executions of one task tell apart in the stored result, and the ledger counts how
    often each task ran.
    """

    _counter = itertools.count(1)
    _lock = threading.Lock()

    def encode(self, output: bytes, item: EchoInput) -> tuple[bytes, str]:
        with self._lock:
            stamp = f"{os.getpid()}-{next(self._counter)}"
            with open(os.environ["RELIABILITY_LEDGER"], "a") as ledger:
                ledger.write(f"{output.decode()} {stamp}\n")
        return output + b"|" + stamp.encode(), "text/plain"


class Poison(Echo):
    """Echo that kills its own process when a batch holds the payload b"poison" (a model that segfaults)."""

    def predict(self, inputs: list[EchoInput]) -> list[bytes]:
        if any(item.payload == POISON for item in inputs):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().predict(inputs)
