"""Small images made on the spot for the page tests (nothing downloaded, nothing shipped)."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

VOC_CLASSES = {"background": (0, (0, 0, 0)), "cat": (8, (64, 0, 0)), "person": (15, (192, 128, 128))}


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def picture(width: int = 320, height: int = 200) -> bytes:
    """A colourful picture: a gradient sky, a sun, hills (no VOC colours, so it is no mask)."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        draw.line([(0, y), (width, y)], fill=(90 + y * 100 // height, 150 + y * 60 // height, 235))
    draw.ellipse([width * 0.7, height * 0.12, width * 0.7 + 48, height * 0.12 + 48], fill=(255, 205, 70))
    draw.polygon([(0, height), (0, height * 0.65), (width * 0.35, height * 0.45), (width * 0.7, height * 0.7),
                  (width, height * 0.55), (width, height)], fill=(70, 140, 80))
    return png(image)


def voc_mask(width: int = 120, height: int = 80) -> bytes:
    """A mask as deeplabv3plus returns it (a palette PNG, pixel = VOC class): a cat left, a person top right."""
    image = Image.new("P", (width, height), VOC_CLASSES["background"][0])
    palette = [0] * 768
    for index, colour in VOC_CLASSES.values():
        palette[3 * index:3 * index + 3] = colour
    image.putpalette(palette)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, width // 3 - 1, height - 1], fill=VOC_CLASSES["cat"][0])  # a third of the pixels
    draw.rectangle([width * 2 // 3, 0, width - 1, height // 2 - 1], fill=VOC_CLASSES["person"][0])  # a sixth
    return png(image)
