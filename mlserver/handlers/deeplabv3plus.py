"""`deeplabv3plus`: Pascal VOC semantic segmentation with keras-hub's DeepLabV3ImageSegmenter.

--weights: a keras-hub preset name (default `deeplab_v3_plus_resnet50_pascalvoc`, downloaded by
keras-hub), a local preset directory, a `.keras` or `.weights.h5` file, or `none` (random weights,
built from the ResNet50 DeepLabV3+ configuration). --option input_size=N: the square side the model
sees (a multiple of 32; default 512). The image is scaled to fit it, keeping its aspect ratio, and
the mask is mapped back to the image's own width and height.
params.output: `mask` (default; image/png, palette, pixel = VOC class 0-20), `overlay` (image/png,
the input blended with the class colours) or `json` ({"width", "height", "classes": [...]}).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import keras_runtime, voc
from .base import BadOption, InputError, WeightsUnavailable, load_failure
from .images import read_rgb
from .keras_runtime import KerasHandler
from .masks import mask_summary, palette_mask, png

OUTPUTS = ("mask", "overlay", "json")
OVERLAY_ALPHA = 0.5


@dataclass
class Scene:
    image: Image.Image  # the input, RGB, at its own size
    canvas: np.ndarray  # side x side x 3 uint8: the image scaled to fit, padded at the right and bottom
    fitted: tuple[int, int]  # the scaled image's width and height inside the canvas
    output: str


class DeepLabV3Plus(KerasHandler):
    name = "deeplabv3plus"
    default_weights = "deeplab_v3_plus_resnet50_pascalvoc"

    def input_shape(self) -> tuple[int, int, int]:
        return self.side, self.side, 3

    def build(self):
        model, converter = self._model()
        self.scale, self.offset = _rescaling(converter)
        self.side = self._side(converter)
        return model

    def _model(self):
        import keras
        import keras_hub

        weights = self.weights or self.default_weights
        if weights.lower() in ("none", "random"):
            return _from_config(keras_hub), None
        path = keras_runtime.local_weights(weights)
        if path is not None and path.is_file():
            if path.suffix == ".keras":
                return keras.saving.load_model(path), None
            model = _from_config(keras_hub)
            model.load_weights(path)
            return model, None
        if path is None and keras_runtime.looks_like_path(weights):
            raise WeightsUnavailable(f"no weights file or preset directory at {weights}")
        try:  # a preset name, or a local preset directory
            model = keras_hub.models.DeepLabV3ImageSegmenter.from_preset(str(path or weights))
        except Exception as exc:  # noqa: BLE001 - keras-hub and kagglehub raise many kinds for a failed download
            raise load_failure(f"cannot load the keras-hub preset {weights}", exc) from None
        converter = getattr(model.preprocessor, "image_converter", None) if model.preprocessor else None
        return model, converter

    def _side(self, converter) -> int:
        default = 512
        if converter is not None and getattr(converter, "image_size", None):
            default = int(converter.image_size[0])
        raw = self.options.get("input_size", default)
        try:
            side = int(raw)
        except (TypeError, ValueError):
            side = 0
        if not (64 <= side <= 2048 and side % 32 == 0):
            raise BadOption(f"--option input_size must be a multiple of 32 from 64 to 2048 (got {raw})")
        return side

    def decode(self, payload: bytes, content_type: str, params: dict) -> Scene:
        output = params.get("output", "mask")
        if output not in OUTPUTS:
            raise InputError(f"params.output must be one of {', '.join(OUTPUTS)}")
        image = read_rgb(payload, content_type)
        ratio = self.side / max(image.size)
        fitted = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
        canvas = np.zeros((self.side, self.side, 3), np.uint8)
        canvas[: fitted[1], : fitted[0]] = np.asarray(image.resize(fitted, Image.Resampling.BILINEAR))
        return Scene(image, canvas, fitted, output)

    def predict(self, inputs: list[Scene]) -> list[np.ndarray]:
        batch = np.stack([item.canvas for item in inputs]).astype(np.float32) * self.scale + self.offset
        classes = np.asarray(self.model.predict_on_batch(batch)).argmax(axis=-1).astype(np.uint8)
        return [found[: item.fitted[1], : item.fitted[0]] for found, item in zip(classes, inputs)]

    def encode(self, output: np.ndarray, item: Scene) -> tuple[bytes, str]:
        mask = palette_mask(output, item.image.size)
        if item.output == "json":
            return json.dumps(mask_summary(mask, voc.LABELS.__getitem__)).encode(), "application/json"
        if item.output == "overlay":
            blended = Image.blend(item.image, mask.convert("RGB"), OVERLAY_ALPHA)
            # Background (class 0) keeps the input's own pixels rather than being darkened.
            mask = Image.composite(blended, item.image, Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255))
        return png(mask), "image/png"


def _from_config(keras_hub):
    """DeepLabV3+ with a ResNet50 (v1) encoder and 21 classes: the preset's architecture, random weights."""
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3], stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
        use_pre_activation=False)
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder, spatial_pyramid_pooling_key="P5", upsampling_size=8, dilation_rates=[6, 12, 18],
        low_level_feature_key="P2", projection_filters=48)
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=len(voc.LABELS))


def _rescaling(converter) -> tuple[np.ndarray | float, np.ndarray | float]:
    """The preset's own pixel scaling when it has one, else [0, 255] -> [0, 1]."""
    scale = getattr(converter, "scale", None)
    offset = getattr(converter, "offset", None)
    scale = 1 / 255 if scale is None else np.asarray(scale, np.float32)
    return scale, 0.0 if offset is None else np.asarray(offset, np.float32)
