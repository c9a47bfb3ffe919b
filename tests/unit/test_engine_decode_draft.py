"""JPEG decoding in the DCT domain (Pillow's draft): a stated tolerance against a full decode.

The tolerance, on 0..255 network inputs: mean absolute difference <= 2 grey levels, 99th percentile <= 16.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image

from engine.decode import decode_image
from engine.preprocess import decode_min_side, preprocess
from schemas.common import BBox
from schemas.networks import ImagePreprocessing


def jpeg(name: str, size: tuple[int, int] = (640, 480)) -> bytes:
    photo = (
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize(size, Image.Resampling.LANCZOS)
    )
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea"])
@pytest.mark.parametrize("resize_type", ["SQUASH", "CROP", "FILL"])
@pytest.mark.parametrize("bbox", [None, BBox(xmin=0.25, ymin=0.25, xmax=0.75, ymax=0.75)])
def test_scaled_decoding_stays_within_tolerance(photo: str, resize_type: str, bbox: BBox | None) -> None:
    data = jpeg(photo)
    spec = ImagePreprocessing(target_size="224x224", resize_type=resize_type, pixel_scaling=255)
    full, full_meta = preprocess(decode_image(data), spec, bbox=bbox)
    scaled_image = decode_image(data, min_side=decode_min_side(spec, bbox=bbox))
    scaled, scaled_meta = preprocess(scaled_image, spec, bbox=bbox)
    difference = np.abs(full - scaled)
    assert float(difference.mean()) <= 2.0
    assert float(np.percentile(difference, 99)) <= 16.0
    # Normalized geometry is what callers use, and a uniform scale leaves it unchanged.
    assert scaled_meta.placement == full_meta.placement


def test_the_scale_is_chosen_from_the_target_and_the_crop() -> None:
    data = jpeg("astronaut")
    spec = ImagePreprocessing(target_size="224x224", resize_type="SQUASH")
    assert decode_image(data, min_side=decode_min_side(spec)).shape == (240, 320, 3)
    small = ImagePreprocessing(target_size="56x56", resize_type="SQUASH")
    assert decode_image(data, min_side=decode_min_side(small)).shape == (60, 80, 3)
    # A small crop needs the full resolution: the region the network sees must not lose detail.
    crop = BBox(xmin=0.4, ymin=0.4, xmax=0.6, ymax=0.6)
    assert decode_image(data, min_side=decode_min_side(spec, bbox=crop)).shape == (480, 640, 3)


def test_other_formats_ignore_the_hint() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (10, 20, 30)).save(buffer, format="PNG")
    assert decode_image(buffer.getvalue(), min_side=8).shape == (480, 640, 3)
