"""`saved`: serve a model someone saved - Keras `.keras`, legacy `.h5`, or a TensorFlow SavedModel.

    python -m mlserver --handler saved --model cifar10 --weights path/to/model.keras \
        [--labels labels.txt] [--input-size 32x32] [--scale unit|symmetric|imagenet|none]

What the path is decides how it loads. The input's height, width and channels come from the
model's input shape (`--input-size` overrides, and is needed only where the model leaves them
open); any image Pillow reads is converted to the model's 1 or 3 channels and resized to fit.
What the model returns for one image decides the output:
- a vector: classification JSON like resnet50's, softmax applied only if the outputs are not
  already probabilities, labels from --labels (one per line) or the index as text;
- an H x W x C map: segmentation like deeplabv3plus (`mask` PNG at the input's own size, or a `json`
  summary), the class of a pixel being the argmax over C (C = 1: a 0.5 threshold);
- anything else (several outputs, other shapes): {"outputs": [...]}, the raw arrays as JSON, at
  most 1 MiB a task.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import classification
from .base import BadOption, InputError, WeightsUnavailable, load_failure
from .images import read_rgb
from .keras_runtime import KerasHandler
from .masks import mask_summary, palette_mask, png

log = logging.getLogger("mlserver")

SCALES = ("unit", "symmetric", "imagenet", "none")
SEGMENT_OUTPUTS = ("mask", "json")
MAX_RAW_JSON = 1024 * 1024


@dataclass
class Item:
    image: Image.Image  # the input at its own size, in the model's colour mode
    pixels: np.ndarray  # height x width x channels, float32, scaled as the model expects
    top_k: int  # for a classifier's output
    output: str  # for a segmenter's: "mask" or "json"


class SavedModel(KerasHandler):
    """TensorFlow started and out-of-memory retryable as for every Keras handler (KerasHandler.load);
    `self.model` is a runner, `run(batch) -> [output arrays]`, whatever the saved format."""

    name = "saved"
    weights_hint = "give --weights the path of a .keras or .h5 file or a SavedModel directory"

    def build(self):
        path = self._path()
        run, shape = _load(path)
        self.height, self.width, self.channels = self._input_geometry(shape)
        self.scale = self.options.get("scale", "unit")
        if self.scale not in SCALES:
            raise BadOption(f"--scale must be one of {', '.join(SCALES)} (got {self.scale})")
        if self.scale == "imagenet" and self.channels != 3:
            raise BadOption("--scale imagenet needs a model that takes 3 channels")
        self.labels = _labels(self.options.get("labels"))
        self.one_at_a_time = shape[0] is not None and shape[0] < self.batch_size
        if self.one_at_a_time:
            log.info("the model takes batches of %s: running one image at a time", shape[0])
        self.weights_label = path.name
        return run

    def input_shape(self) -> tuple[int, int, int]:
        return self.height, self.width, self.channels

    def warm_up(self) -> None:
        self.model(np.zeros((1, *self.input_shape()), np.float32))  # the batch size is learnt on the way

    def _path(self) -> Path:
        if not self.weights or self.weights.lower() == "none":
            raise BadOption("--weights must name the saved model: a .keras or .h5 file, or a SavedModel directory")
        path = Path(self.weights).expanduser()
        if not path.exists():
            raise WeightsUnavailable(f"no saved model at {self.weights}")
        return path

    def _input_geometry(self, shape: tuple) -> tuple[int, int, int]:
        if len(shape) != 4:
            raise BadOption(f"the model's input shape {_shape_text(shape)} is not a batch of images "
                            "(batch, height, width, channels)")
        height, width, channels = shape[1], shape[2], shape[3]
        size = self.options.get("input_size")
        if size:
            match = re.fullmatch(r"(\d+)(?:x(\d+))?", str(size))
            if not match:
                raise BadOption(f"--input-size must be WIDTHxHEIGHT or one number (got {size})")
            width, height = int(match.group(1)), int(match.group(2) or match.group(1))
        if not height or not width:
            raise BadOption(f"the model's input shape {_shape_text(shape)} leaves the image size open: "
                            "give it with --input-size WIDTHxHEIGHT")
        channels = channels or 3
        if channels not in (1, 3):
            raise BadOption(f"the model takes {channels} channels per pixel; the saved handler serves 1 or 3")
        return height, width, channels

    def decode(self, payload: bytes, content_type: str, params: dict) -> Item:
        # Which kind of output the model gives is known only once it ran: check both kinds' params now.
        top_k = classification.top_k(params)
        output = params.get("output", "mask")
        if output not in SEGMENT_OUTPUTS:
            raise InputError(f"params.output must be one of {', '.join(SEGMENT_OUTPUTS)}")
        image = read_rgb(payload, content_type)
        if self.channels == 1:
            image = image.convert("L")
        fitted = np.asarray(image.resize((self.width, self.height), Image.Resampling.BILINEAR), np.float32)
        return Item(image, self._scaled(fitted.reshape(self.height, self.width, self.channels)), top_k, output)

    def _scaled(self, pixels: np.ndarray) -> np.ndarray:
        if self.scale == "unit":
            return pixels / 255.0
        if self.scale == "symmetric":
            return pixels / 127.5 - 1.0
        if self.scale == "imagenet":
            from keras.applications import imagenet_utils

            return imagenet_utils.preprocess_input(pixels.copy(), mode="caffe")
        return pixels

    def predict(self, inputs: list[Item]) -> list[list[np.ndarray]]:
        batch = np.stack([item.pixels for item in inputs])
        if self.one_at_a_time or len(inputs) == 1:
            return [self._outputs(self.model(batch[i:i + 1]), 0) for i in range(len(inputs))]
        try:
            outputs = self.model(batch)
        except Exception:
            # Maybe the model cannot take a batch this size: if each image alone works, stay that way.
            singles = [self._outputs(self.model(batch[i:i + 1]), 0) for i in range(len(inputs))]
            self.one_at_a_time = True
            log.info("the model failed on a batch of %d but not on single images: running one image at a time",
                     len(inputs))
            return singles
        return [self._outputs(outputs, i) for i in range(len(inputs))]

    @staticmethod
    def _outputs(outputs: list[np.ndarray], index: int) -> list[np.ndarray]:
        return [np.asarray(output[index]) for output in outputs]

    def encode(self, output: list[np.ndarray], item: Item) -> tuple[bytes, str]:
        if len(output) == 1 and output[0].ndim == 1:
            return self._classification(output[0], item.top_k)
        if len(output) == 1 and output[0].ndim == 3:
            return self._segmentation(output[0], item)
        return _raw(output)

    def _classification(self, scores: np.ndarray, top_k: int) -> tuple[bytes, str]:
        scores = scores.astype(np.float64)
        if not _are_probabilities(scores):
            scores = np.exp(scores - scores.max())
            scores /= scores.sum()
        return classification.answer(self.served_as or self.name, self.weights_label, scores, top_k, self._label)

    def _segmentation(self, scores: np.ndarray, item: Item) -> tuple[bytes, str]:
        classes = (scores[..., 0] > 0.5) if scores.shape[-1] == 1 else scores.argmax(axis=-1)
        mask = palette_mask(classes, item.image.size)
        if item.output == "json":
            return json.dumps(mask_summary(mask, self._label)).encode(), "application/json"
        return png(mask), "image/png"

    def _label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else str(index)


def _load(path: Path):
    """(run, input shape): `run(batch) -> [output arrays]` for a .keras/.h5 file or a SavedModel directory."""
    import keras

    try:
        if path.is_file() and path.suffix in (".keras", ".h5", ".hdf5"):
            model = keras.saving.load_model(path, compile=False)
            if len(model.inputs) != 1:
                raise BadOption(f"the model takes {len(model.inputs)} inputs; the saved handler serves one image input")
            return _keras_runner(model), tuple(model.inputs[0].shape)
        if path.is_dir() and (path / "saved_model.pb").is_file():
            return _savedmodel_runner(path)
    except (BadOption, WeightsUnavailable):
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file raises anything from h5py, zipfile or protobuf
        raise load_failure(f"cannot load the model at {path}", exc) from None
    raise BadOption(f"{path} is not a .keras or .h5 file or a TensorFlow SavedModel directory")


def _keras_runner(model):
    def run(batch: np.ndarray) -> list[np.ndarray]:
        outputs = model.predict_on_batch(batch)
        if isinstance(outputs, dict):
            return [np.asarray(outputs[k]) for k in sorted(outputs)]
        if isinstance(outputs, (list, tuple)):
            return [np.asarray(o) for o in outputs]
        return [np.asarray(outputs)]

    return run


def _savedmodel_runner(path: Path):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise BadOption(f"the SavedModel at {path} has no serving_default signature")
    _, inputs = signature.structured_input_signature
    if len(inputs) != 1:
        raise BadOption(f"the SavedModel takes {len(inputs)} inputs; the saved handler serves one image input")
    (name, spec), = inputs.items()

    def run(batch: np.ndarray) -> list[np.ndarray]:
        outputs = signature(**{name: tf.constant(batch, dtype=spec.dtype)})
        return [outputs[k].numpy() for k in sorted(outputs)]

    run.keep_alive = loaded  # the signature needs the loaded object to stay referenced
    return run, tuple(spec.shape.as_list())


def _labels(path: str | None) -> list[str]:
    if not path:
        return []
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadOption(f"cannot read the labels file {path} ({type(exc).__name__})") from None
    return [line.strip() for line in lines if line.strip()]


def _are_probabilities(scores: np.ndarray) -> bool:
    return bool(scores.size) and scores.min() >= 0 and scores.max() <= 1 and abs(scores.sum() - 1) < 1e-3


def _raw(outputs: list[np.ndarray]) -> tuple[bytes, str]:
    body = json.dumps({"outputs": [output.tolist() for output in outputs]}).encode()
    if len(body) > MAX_RAW_JSON:
        raise InputError(f"the model's output is {len(body)} bytes as JSON, over the limit of {MAX_RAW_JSON}; "
                         "serve it with a handler of your own")
    return body, "application/json"


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
