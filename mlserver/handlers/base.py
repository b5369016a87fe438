"""The handler interface: what the worker needs from a model, and the errors it understands.

The worker drives a handler in three places, each on its own thread:
  decode(payload, content_type, params) -> input   the fetch side, while the model runs
  predict([input, ...]) -> [output, ...]           the model thread, one call per batch
  encode(output, input) -> (bytes, content_type)   the report threads, several at once
`decode` runs on several threads at once with `--decode-threads` above 1 (the default on a GPU),
and `encode` always may: keep both free of shared state.
`load()` runs once before the first task. Anything `decode` raises fails that task alone; a
`predict` that raises for a whole batch is retried one input at a time, so only the input that
breaks the model fails.
"""

from __future__ import annotations

from typing import Any


class TaskError(Exception):
    """An error about one task, worded for the client who sent it (one sentence)."""

    retryable = False

    def __init__(self, message: str, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class InputError(TaskError):
    """The payload or its params cannot be used; sending it again will not help."""


class WeightsUnavailable(RuntimeError):
    """The weights asked for cannot be had (no internet, no such file); the worker cannot start."""


class BadOption(ValueError):
    """A handler option (--option KEY=VALUE) is not usable; the worker cannot start."""


class Handler:
    """Subclass this to serve your own model: `python -m mlserver --handler yourmodule:YourHandler`."""

    #: `--weights` when the flag is not given.
    default_weights: str | None = None
    #: What to do when load() raises WeightsUnavailable (printed after the reason).
    weights_hint = "use --weights none for random weights, or --weights PATH for a local file"
    #: The model name clients submit to (--model), for outputs that name the model.
    served_as: str | None = None
    #: Exceptions that mean "try this task again later" (the broker requeues it while attempts remain).
    retryable_errors: tuple[type[BaseException], ...] = (MemoryError,)

    def __init__(self, weights: str | None = None, options: dict[str, str] | None = None,
                 batch_size: int = 1) -> None:
        self.weights = weights if weights is not None else self.default_weights
        self.options = dict(options or {})
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        return type(self).__name__

    def load(self) -> None:
        """Load the model once. Raise WeightsUnavailable when the weights cannot be had."""

    def device(self) -> str:
        """Where the model runs, for the start-up log."""
        return "cpu"

    def decode(self, payload: bytes, content_type: str, params: dict) -> Any:
        """Turn one task's payload into a model input; raise InputError when it cannot be used."""
        return payload

    def predict(self, inputs: list[Any]) -> list[Any]:
        """Run the model on a batch; return one output per input, in order."""
        raise NotImplementedError

    def encode(self, output: Any, item: Any) -> tuple[bytes, str]:
        """The result bytes of one output and their content type; `item` is what decode returned."""
        raise NotImplementedError

    def is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, TaskError):
            return exc.retryable
        return isinstance(exc, self.retryable_errors)

    def report_progress(self, item: Any, fraction: float, message: str = "") -> None:
        """Say how far the task of `item` (what decode returned) is, from predict: 0.0 to 1.0, and a
        few words. Its client sees it in the task's status (and a `progress` webhook, at most once a
        second). Cheap to call often: the worker sends it in the background, at most twice a second."""
        sink = getattr(self, "_progress_sink", None)
        if sink is not None:
            sink(item, min(1.0, max(0.0, float(fraction))), message)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, clipped: what a one-line error can quote of it."""
    return (str(exc).strip().splitlines() or [""])[0][:limit]


def failure_message(handler: Handler, exc: BaseException) -> str:
    """One sentence for the client: a TaskError's own words, else what broke, without a traceback."""
    if isinstance(exc, TaskError):
        return str(exc)
    detail = first_line(exc)
    return f"{handler.name} failed on this input ({type(exc).__name__}{': ' + detail if detail else ''})"


def load_failure(what: str, exc: BaseException) -> WeightsUnavailable:
    """The start-up error for weights or a model that failed to load: what, and the exception's first line."""
    return WeightsUnavailable(f"{what} ({type(exc).__name__}: {first_line(exc) or 'no details'})")
