"""TensorFlow set-up shared by the Keras handlers: quiet logs, a polite GPU, the device in one line.

Imported only by handlers that need TensorFlow, so `echo` and the CLI's --help stay instant.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import Handler


def start_tensorflow() -> str:
    """Import TensorFlow with memory growth on every GPU; returns the device the model will use."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ info lines would bury the worker's own log
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # Without this TensorFlow takes the whole GPU at start, and a second worker (or a notebook) gets none.
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised by the user's own code: leave it as it is
            pass
    if not gpus:
        return f"CPU (TensorFlow {tf.__version__} sees no GPU)"
    details = tf.config.experimental.get_device_details(gpus[0])
    name = details.get("device_name", gpus[0].name)
    more = f", {len(gpus) - 1} more GPU(s) unused" if len(gpus) > 1 else ""
    return f"GPU:0 {name} (TensorFlow {tf.__version__}{more})"


def retryable_errors() -> tuple[type[BaseException], ...]:
    """Out of accelerator memory is a passing condition (another process may free it): retry the task."""
    import tensorflow as tf

    return (MemoryError, tf.errors.ResourceExhaustedError)


def local_weights(value: str) -> Path | None:
    """The local path `--weights` names, or None when it names no file or directory that exists."""
    path = Path(value).expanduser()
    return path if path.exists() else None


def looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith(".") or value.endswith((".h5", ".keras"))


class KerasHandler(Handler):
    """A handler around one Keras model: TensorFlow started politely, out of memory retryable,
    and the model traced for a full and a single-item batch before the first task arrives."""

    def load(self) -> None:
        self._device = start_tensorflow()
        self.retryable_errors = retryable_errors()
        self.model = self.build()
        self.warm_up()

    def build(self):
        """The Keras model, with self.weights loaded; raise WeightsUnavailable when they cannot be had."""
        raise NotImplementedError

    def warm_up(self) -> None:
        """Trace the model for the batch sizes it will see, so the first task does not pay for it."""
        for size in sorted({self.batch_size, 1}):
            self.model.predict_on_batch(np.zeros((size, *self.input_shape()), np.float32))

    def input_shape(self) -> tuple[int, int, int]:
        """One input's (height, width, channels), for the warm-up batch."""
        raise NotImplementedError

    def device(self) -> str:
        return self._device
