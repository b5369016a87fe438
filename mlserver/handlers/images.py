"""Reading any image Pillow knows into RGB, with one clear sentence when a payload is not one."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .base import InputError

MAX_PIXELS = 64_000_000  # a 64-megapixel photo decodes in about 200 MB; beyond that, refuse


def read_rgb(payload: bytes, content_type: str, at_least: int | None = None) -> Image.Image:
    """The payload as an upright RGB image: any mode (L, LA, P, RGBA, CMYK, I;16 ...) is converted.

    With `at_least`, a JPEG may be decoded at a reduced scale (libjpeg's DCT scaling) as long as both
    sides stay at least that long: less work for a photo that will be shrunk anyway.
    """
    try:
        with Image.open(io.BytesIO(payload)) as image:  # reads the header only
            if image.width * image.height > MAX_PIXELS:
                raise InputError(f"the image is too large to decode ({image.width}x{image.height} pixels; "
                                 f"at most {MAX_PIXELS // 1_000_000} megapixels)")
            if at_least and image.format == "JPEG":
                image.draft(image.mode, (at_least, at_least))
            image = ImageOps.exif_transpose(image)  # phones store rotation in EXIF
            return _to_rgb(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        if isinstance(exc, Image.DecompressionBombError):
            raise InputError(f"the image is too large to decode (at most {MAX_PIXELS // 1_000_000} megapixels)") from None
        kind = content_type.split(";")[0].strip() or "unknown type"
        if isinstance(exc, UnidentifiedImageError):
            raise InputError(f"payload is not an image Pillow can read (got {len(payload)} bytes of {kind})") from None
        raise InputError(f"the image is damaged and cannot be decoded ({len(payload)} bytes of {kind})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels over white, as a viewer would show them (not their hidden colour).
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":
        # 16-bit and float greyscale: Pillow's own conversion clips them to white, so scale to 8 bits.
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            low, high = float(values.min()), float(values.max())
            values = (values - low) * (255 / (high - low) if high > low else 0.0)
        else:
            values = np.clip(values, 0, 65535) / 257
        return Image.fromarray(values.round().astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")
