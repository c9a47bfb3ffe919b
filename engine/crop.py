"""Cutting the region a request asks for (a bbox or a polygon) out of the decoded image."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from engine.errors import ImageError
from schemas.common import BBox, Point

# The uniform colour that replaces pixels outside a polygon; white, like FILL's padding.
BACKGROUND = 255


@dataclass(frozen=True)
class Window:
    """A rectangle in original-image pixels, right and bottom exclusive."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top


def crop_window(width: int, height: int, *, bbox: BBox | None, polygon: Sequence[Point] | None) -> Window:
    """The pixels a bbox or a polygon's bounding box covers: every pixel it touches, at least one."""
    if bbox is not None and polygon is not None:
        raise ImageError("give either a bbox or a polygon to crop the image, not both")
    if polygon is not None:
        if len(polygon) < 3:
            raise ImageError("a polygon needs at least 3 points")
        xs = [point.x for point in polygon]
        ys = [point.y for point in polygon]
        xmin, ymin, xmax, ymax = min(xs), min(ys), max(xs), max(ys)
    elif bbox is not None:
        xmin, ymin, xmax, ymax = bbox.xmin, bbox.ymin, bbox.xmax, bbox.ymax
    else:
        return Window(0, 0, width, height)
    window = Window(
        left=max(0, math.floor(xmin * width)),
        top=max(0, math.floor(ymin * height)),
        right=min(width, math.ceil(xmax * width)),
        bottom=min(height, math.ceil(ymax * height)),
    )
    if window.width <= 0 or window.height <= 0:
        raise ImageError("the crop region is empty: it needs a positive width and height")
    return window


def crop(
    image: np.ndarray, window: Window, *, polygon: Sequence[Point] | None, uniform_background: bool
) -> Image.Image:
    """The window's pixels; with `uniform_background`, those outside the polygon become white."""
    region = Image.fromarray(image[window.top : window.bottom, window.left : window.right])
    if polygon is None or not uniform_background:
        return region
    height, width = image.shape[:2]
    outline = [(p.x * width - window.left, p.y * height - window.top) for p in polygon]
    mask = Image.new("L", region.size, 0)
    ImageDraw.Draw(mask).polygon(outline, fill=255)
    background = Image.new(region.mode, region.size, (BACKGROUND,) * len(region.getbands()))
    return Image.composite(region, background, mask)
