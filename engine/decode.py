"""Bytes to an RGB pixel array, refusing anything that is not a plain still image of sane size."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import ImageError

# Only these decoders run: Pillow would otherwise also try formats such as EPS, which shells out.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")

_WHITE = (255, 255, 255, 255)
_ORIENTATION = 0x0112  # the EXIF tag


def decode_image(data: bytes, *, max_pixels: int = 40_000_000, min_side: int | None = None) -> np.ndarray:
    """Decode `data` to an `H x W x 3` uint8 RGB array, upright as its EXIF orientation says.

    Animated images give their first frame; transparency is composited on white. With `min_side`, a JPEG is
    decoded at the smallest of 1/1, 1/2, 1/4, 1/8 scale whose sides both stay >= `min_side` (scaling in the
    DCT domain: several times faster, and the caller resizes down anyway). Callers work in normalized
    coordinates, which a uniform scale leaves unchanged.
    """
    if not data:
        raise ImageError("the image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            # The header is enough to know the size: refuse bombs before decoding a single pixel.
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"the image is too large: {width}x{height} pixels, the limit is {max_pixels} pixels"
                )
            if min_side is not None and image.format == "JPEG":
                # draft() keeps each side >= the size asked; square, so EXIF rotations cannot break it.
                image.draft("RGB", (min_side, min_side))
            image.load()
            # exif_transpose copies the image even when nothing turns: only call it when something does.
            turned = image.getexif().get(_ORIENTATION, 1) not in (1, None)
            return _to_rgb(ImageOps.exif_transpose(image) if turned else image)
    except UnidentifiedImageError:
        raise ImageError(
            "the data is not an image in a supported format (" + ", ".join(FORMATS) + ")"
        ) from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"the image is too large: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        # Pillow reports truncated and corrupt streams with these (SyntaxError for broken headers).
        raise ImageError(f"the image data is truncated or corrupt: {error}") from None


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: Pillow's convert() clips at 255 instead of scaling, so keep the high byte ourselves.
        wide = np.asarray(image, dtype=np.uint32)
        grey = np.clip(wide >> 8, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        background = Image.new("RGBA", image.size, _WHITE)
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)
