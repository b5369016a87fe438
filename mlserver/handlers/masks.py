"""Segmentation outputs shared by the handlers that make them: class maps as palette PNG masks at
the input's own size, and the `json` summary of the classes present."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from . import voc

PALETTE = voc.palette()


def palette_mask(classes: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A class map (uint8, one class per pixel) as a VOC-palette image resized to `size` (no blending)."""
    mask = Image.fromarray(classes.astype(np.uint8), "P").resize(size, Image.Resampling.NEAREST)
    mask.putpalette(PALETTE)
    return mask


def mask_summary(mask: Image.Image, label: Callable[[int], str]) -> dict:
    """The `json` output: the image's size and the classes present, largest first."""
    counts = np.bincount(np.asarray(mask).ravel())
    total = mask.width * mask.height
    present = sorted((i for i in range(len(counts)) if counts[i]), key=lambda i: -counts[i])
    return {"width": mask.width, "height": mask.height,
            "classes": [{"index": i, "label": label(i), "pixel_fraction": round(counts[i] / total, 6)}
                        for i in present]}


def png(image: Image.Image) -> bytes:
    """PNG bytes, without `optimize` (it would cost more CPU than it saves bytes here)."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=False)
    return buffer.getvalue()
