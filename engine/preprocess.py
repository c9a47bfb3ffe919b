"""One decoded image to one network input example, and network boxes back to the original image."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.crop import Window, crop, crop_window
from engine.errors import ModelError
from engine.resize import Placement, resize
from schemas.common import BBox, Point
from schemas.networks import ColorChannels, DimensionOrder, ImagePreprocessing

# Axis permutation from height x width x channels to each dimension order (batch dimension left out).
_AXES = {
    DimensionOrder.NHWC: (0, 1, 2),
    DimensionOrder.NWHC: (1, 0, 2),
    DimensionOrder.NCHW: (2, 0, 1),
    DimensionOrder.NCWH: (2, 1, 0),
}

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ImageMeta:
    """What maps a box on the network input back to the original image."""

    original_width: int
    original_height: int
    window: Window  # the crop taken from the original image, in its pixels
    placement: Placement  # where that crop, resized, sits in the network input


def decode_min_side(
    spec: ImagePreprocessing, *, bbox: BBox | None = None, polygon: list[Point] | None = None
) -> int:
    """How small a JPEG may be decoded (see decode_image) while the region the network sees keeps at least the
    network input's resolution. Against a full decode, the network input then differs by about one grey level
    on average (tests/unit/test_engine_decode_draft.py holds it to its stated tolerance)."""
    width, height = spec.size()
    target = max(width, height or width)
    if polygon:
        xs, ys = [point.x for point in polygon], [point.y for point in polygon]
        fraction = min(max(xs) - min(xs), max(ys) - min(ys))
    elif bbox is not None:
        fraction = min(bbox.xmax - bbox.xmin, bbox.ymax - bbox.ymin)
    else:
        fraction = 1.0
    return math.ceil(target / max(fraction, 1e-3))


def preprocess(
    image: np.ndarray,
    spec: ImagePreprocessing,
    *,
    bbox: BBox | None = None,
    polygon: list[Point] | None = None,
    crop_uniform_background: bool = False,
    mean: np.ndarray | None = None,
) -> tuple[np.ndarray, ImageMeta]:
    """One float32 example (no batch dimension) in `spec.dimension_order`, and its `ImageMeta`.

    `image` is `H x W x 3` uint8 RGB. A bbox crops to the pixels it touches; a polygon crops to its bounding
    box, and with `crop_uniform_background` the pixels outside the polygon become white. `mean` has shape
    `(C,)` or `(H, W, C)` of the network input, channels in the network's order.
    """
    height, width = image.shape[:2]
    window = crop_window(width, height, bbox=bbox, polygon=polygon)
    region = crop(image, window, polygon=polygon, uniform_background=crop_uniform_background)
    if spec.color_channels is ColorChannels.L:
        # Before resizing: one channel is a third of the work, and white padding stays white.
        region = region.convert("L")
    resized, placement = resize(region, spec)
    pixels = _scaled_pixels(resized, spec)
    if mean is not None:
        pixels = _minus_mean(pixels, mean)
    example = np.ascontiguousarray(pixels.transpose(_AXES[spec.dimension_order]), dtype=np.float32)
    return example, ImageMeta(width, height, window, placement)


def _scaled_pixels(image: Image.Image, spec: ImagePreprocessing) -> np.ndarray:
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if spec.color_channels is ColorChannels.BGR:
        pixels = pixels[:, :, ::-1]
    return pixels / np.float32(255.0) * np.float32(spec.pixel_scaling)


def _minus_mean(pixels: np.ndarray, mean: np.ndarray) -> np.ndarray:
    height, width, channels = pixels.shape
    if mean.shape not in ((channels,), (height, width, channels)):
        raise ModelError(
            f"the mean file has shape {mean.shape}, but this network input needs ({channels},) "
            f"or ({height}, {width}, {channels}) (height, width, channels in the network's colour order)"
        )
    return pixels - mean.astype(np.float32)


def map_box_to_original(box: Box, meta: ImageMeta) -> Box:
    """A box (xmin, ymin, xmax, ymax) normalized on the network input, normalized on the original image.

    Network-input coordinates are those of the image the network sees, x along its width and y along its
    height, whatever the dimension order. The result is clipped to [0, 1].
    """
    xmin, ymin, xmax, ymax = (float(value) for value in map_boxes_to_original(np.asarray([box]), meta)[0])
    return xmin, ymin, xmax, ymax


def map_boxes_to_original(boxes: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """`map_box_to_original` for an `[N, 4]` array of boxes at once (float64; NaN stays NaN)."""
    place, window = meta.placement, meta.window
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    # Network input -> resized crop -> crop pixels -> original pixels, per axis.
    x_scale = window.width / place.resized_width
    y_scale = window.height / place.resized_height
    xs = window.left + (boxes[:, 0::2] * place.input_width - place.offset_x) * x_scale
    ys = window.top + (boxes[:, 1::2] * place.input_height - place.offset_y) * y_scale
    mapped = np.empty_like(boxes)
    mapped[:, 0::2] = xs / meta.original_width
    mapped[:, 1::2] = ys / meta.original_height
    clipped: np.ndarray = np.clip(mapped, 0.0, 1.0)
    return clipped


def group_by_shape(examples: Sequence[np.ndarray]) -> list[list[int]]:
    """Indices of `examples` grouped by shape, groups in order of first appearance, so each can be a batch."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(example.shape, []).append(index)
    return list(groups.values())
