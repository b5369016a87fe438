"""`resnet50`: ImageNet classification with keras.applications.ResNet50.

--weights: `imagenet` (default; Keras downloads and caches the file), a local `.weights.h5`, `.h5`
or `.keras` file, or `none` (random weights, for tests). params: `top_k` (1-20, default 5).
Output: application/json {"model", "weights", "predictions": [{"label", "index", "score"}, ...]}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import classification, keras_runtime
from .base import WeightsUnavailable, load_failure
from .images import read_rgb
from .keras_runtime import KerasHandler

SIZE = 224
CLASSES_FILE = Path(__file__).resolve().parent.parent / "imagenet_classes.json"


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, shipped with mlserver (never downloaded)."""
    index = json.loads(CLASSES_FILE.read_text())
    return [index[str(i)][1] for i in range(len(index))]


@dataclass
class Picture:
    pixels: np.ndarray  # SIZE x SIZE x 3, uint8 RGB
    top_k: int


class ResNet50(KerasHandler):
    name = "resnet50"
    default_weights = "imagenet"

    def input_shape(self) -> tuple[int, int, int]:
        return SIZE, SIZE, 3

    def build(self):
        import keras

        self.labels = imagenet_labels()
        self.preprocess = keras.applications.resnet50.preprocess_input
        return self._model(keras)

    def _model(self, keras):
        weights = self.weights or "imagenet"
        if weights.lower() in ("none", "random"):
            return keras.applications.ResNet50(weights=None)
        if weights == "imagenet":
            try:
                return keras.applications.ResNet50(weights="imagenet")
            except Exception as exc:  # noqa: BLE001 - Keras raises a bare Exception for a failed download
                raise load_failure("cannot download the ImageNet weights for resnet50", exc) from None
        path = keras_runtime.local_weights(weights)
        if path is None or not path.is_file():
            raise WeightsUnavailable(f"no weights file at {weights}")
        if path.suffix == ".keras":
            return keras.saving.load_model(path)
        model = keras.applications.ResNet50(weights=None)
        model.load_weights(path)
        return model

    def decode(self, payload: bytes, content_type: str, params: dict) -> Picture:
        top_k = classification.top_k(params)
        image = read_rgb(payload, content_type, at_least=SIZE).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        return Picture(np.asarray(image, dtype=np.uint8), top_k)

    def predict(self, inputs: list[Picture]) -> list[np.ndarray]:
        batch = self.preprocess(np.stack([item.pixels for item in inputs]).astype(np.float32))
        return list(np.asarray(self.model.predict_on_batch(batch)))

    def encode(self, output: np.ndarray, item: Picture) -> tuple[bytes, str]:
        return classification.answer(self.name, self._weights_label(), output, item.top_k, self.labels.__getitem__)

    def _weights_label(self) -> str:
        # A local path would tell clients about the worker's file system: the file name is enough.
        weights = self.weights or "imagenet"
        return Path(weights).name if keras_runtime.looks_like_path(weights) else weights

