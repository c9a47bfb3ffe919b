"""Fitting an image to the network input as the resize type says, and recording where it landed."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from schemas.networks import ImagePreprocessing, ResizeType

# Padding colour of FILL, per DESIGN §6.
WHITE = 255


@dataclass(frozen=True)
class Placement:
    """Where the resized image sits in the network input, in network-input pixels.

    The resized image is `resized_width x resized_height`; its top-left corner is at (`offset_x`,
    `offset_y`) of the `input_width x input_height` network input: positive with FILL's padding,
    negative where CROP cut it away.
    """

    resized_width: int
    resized_height: int
    offset_x: int
    offset_y: int
    input_width: int
    input_height: int


def resize(image: Image.Image, spec: ImagePreprocessing) -> tuple[Image.Image, Placement]:
    """Resize `image` (mode RGB or L) with bilinear filtering per `spec.resize_type`."""
    width, height = image.size
    target_width, target_height = spec.size()
    if spec.resize_type is ResizeType.NETWORK:
        scale = target_width / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return _scaled(image, size), Placement(*size, 0, 0, *size)
    if target_height is None:
        target_height = target_width  # SQUASH with `N` means N x N
    if spec.resize_type is ResizeType.SQUASH:
        size = (target_width, target_height)
        return _scaled(image, size), Placement(*size, 0, 0, *size)
    if spec.resize_type is ResizeType.CROP:
        scale = max(target_width / width, target_height / height)
        size = (max(target_width, round(width * scale)), max(target_height, round(height * scale)))
        left, top = (size[0] - target_width) // 2, (size[1] - target_height) // 2
        cropped = _scaled(image, size).crop((left, top, left + target_width, top + target_height))
        return cropped, Placement(*size, -left, -top, target_width, target_height)
    # FILL, the only type left.
    scale = min(target_width / width, target_height / height)
    size = (
        min(target_width, max(1, round(width * scale))),
        min(target_height, max(1, round(height * scale))),
    )
    left, top = (target_width - size[0]) // 2, (target_height - size[1]) // 2
    canvas = Image.new(image.mode, (target_width, target_height), (WHITE,) * len(image.getbands()))
    canvas.paste(_scaled(image, size), (left, top))
    return canvas, Placement(*size, left, top, target_width, target_height)


def _scaled(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.BILINEAR)
