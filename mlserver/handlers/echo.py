"""`echo`: returns each payload unchanged, for tests and benchmarks of everything but the model.

params: `sleep_ms` sleeps that long per batch (simulated compute; the longest in the batch wins);
`steps` splits that sleep into so many steps and reports progress after each ("step 2 of 5");
`fail` fails that task with that message, as a retryable failure if `retryable` is true. It imports
no TensorFlow, so it starts in a moment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .base import Handler, InputError, TaskError

MAX_SLEEP_MS = 3_600_000


@dataclass
class EchoInput:
    payload: bytes
    content_type: str
    sleep_ms: float
    fail: str | None
    retryable: bool
    steps: int = 0


class Echo(Handler):
    name = "echo"

    def device(self) -> str:
        return "none (echo runs no model)"

    def decode(self, payload: bytes, content_type: str, params: dict) -> EchoInput:
        sleep_ms = params.get("sleep_ms", 0)
        if isinstance(sleep_ms, bool) or not isinstance(sleep_ms, (int, float)) or not 0 <= sleep_ms <= MAX_SLEEP_MS:
            raise InputError(f"params.sleep_ms must be a number of milliseconds from 0 to {MAX_SLEEP_MS}")
        fail = params.get("fail")
        if fail is not None and not (isinstance(fail, str) and fail.strip()):
            raise InputError("params.fail must be a non-empty message")
        retryable = params.get("retryable", False)
        if not isinstance(retryable, bool):
            raise InputError("params.retryable must be true or false")
        steps = params.get("steps", 0)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= 1000:
            raise InputError("params.steps must be a whole number from 0 to 1000")
        return EchoInput(payload, content_type, float(sleep_ms), fail, retryable, steps)

    def predict(self, inputs: list[EchoInput]) -> list[bytes]:
        steps = max(item.steps for item in inputs)
        if steps:
            for step in range(1, steps + 1):
                time.sleep(max(item.sleep_ms for item in inputs) / 1000 / steps)
                for item in inputs:
                    if item.steps:
                        self.report_progress(item, min(step, item.steps) / item.steps,
                                             f"step {min(step, item.steps)} of {item.steps}")
        else:
            time.sleep(max(item.sleep_ms for item in inputs) / 1000)
        # Failing here, not in decode, makes a `fail` task break its whole batch the way a poison
        # input breaks a real model, so the worker's one-by-one fallback is exercised too.
        for item in inputs:
            if item.fail:
                raise TaskError(item.fail, retryable=item.retryable)
        return [item.payload for item in inputs]

    def encode(self, output: bytes, item: EchoInput) -> tuple[bytes, str]:
        return output, item.content_type
