"""Decoding payloads into RGB: every Pillow mode, transparency, and one sentence for what cannot be read."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mlserver.handlers.base import InputError
from mlserver.handlers.images import read_rgb

from .conftest import image_bytes


@pytest.mark.parametrize("mode, fmt", [("RGB", "JPEG"), ("L", "PNG"), ("LA", "PNG"), ("P", "GIF"), ("RGBA", "PNG"),
                                       ("CMYK", "JPEG"), ("I;16", "PNG"), ("1", "PNG"), ("RGB", "WEBP")])
def test_every_mode_becomes_rgb_at_its_own_size(mode, fmt):
    image = read_rgb(image_bytes(mode, (37, 23), fmt), "image/whatever")
    assert image.mode == "RGB" and image.size == (37, 23)


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    ramp = Image.fromarray(np.linspace(0, 65535, 64 * 8).astype(np.uint16).reshape(8, 64))
    buffer = io.BytesIO()
    ramp.save(buffer, "PNG")
    pixels = np.asarray(read_rgb(buffer.getvalue(), "image/png"))
    assert pixels[0, 0, 0] == 0 and pixels[-1, -1, 0] == 255 and 100 < pixels[4, 32, 0] < 160


def test_transparent_pixels_read_as_white():
    buffer = io.BytesIO()
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(buffer, "PNG")
    assert read_rgb(buffer.getvalue(), "image/png").getpixel((0, 0)) == (255, 255, 255)


def test_a_large_jpeg_may_be_decoded_smaller_but_never_below_the_size_asked():
    image = read_rgb(image_bytes("RGB", (1600, 1200), "JPEG"), "image/jpeg", at_least=224)
    assert min(image.size) >= 224 and image.size[0] < 1600


@pytest.mark.parametrize("payload, kind, message", [
    (b"this is not an image", "text/plain; charset=utf-8",
     "payload is not an image Pillow can read (got 20 bytes of text/plain)"),
    (image_bytes("RGB", (64, 64))[:60], "image/png", "the image is damaged and cannot be decoded (60 bytes of image/png)"),
])
def test_what_cannot_be_read_is_one_sentence(payload, kind, message):
    with pytest.raises(InputError) as caught:
        read_rgb(payload, kind)
    assert str(caught.value) == message


def test_an_image_too_large_to_decode_is_refused_from_its_header():
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, "PNG")  # 81 megapixels in a few kilobytes
    with pytest.raises(InputError, match=r"too large to decode \(9000x9000 pixels; at most 64 megapixels\)"):
        read_rgb(buffer.getvalue(), "image/png")
