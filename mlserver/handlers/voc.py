"""Pascal VOC: the 21 class names and the standard colour palette of its segmentation masks."""

from __future__ import annotations

LABELS = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
          "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def palette() -> list[int]:
    """The 256-entry VOC palette, flat [r, g, b, ...]: the bits of each index spread over r, g and b."""
    flat = []
    for index in range(256):
        red = green = blue = 0
        code = index
        for shift in range(7, -1, -1):
            red |= (code & 1) << shift
            green |= ((code >> 1) & 1) << shift
            blue |= ((code >> 2) & 1) << shift
            code >>= 3
        flat += [red, green, blue]
    return flat
