"""The request images: 640x480 JPEGs made from photos that ship inside scikit-image, the same every run.

Real photos rather than noise, so that file sizes and JPEG decoding cost look like users' uploads.
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps

WIDTH, HEIGHT = 640, 480
QUALITY = 90
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def sample_jpegs() -> list[bytes]:
    """Eight distinct JPEGs: each photo resized to 640x480, and its mirror image."""
    from skimage import data

    images = []
    for name in PHOTOS:
        photo = Image.fromarray(getattr(data, name)()).resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
        images += [_jpeg(photo), _jpeg(ImageOps.mirror(photo))]
    return images


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=QUALITY)
    return buffer.getvalue()
