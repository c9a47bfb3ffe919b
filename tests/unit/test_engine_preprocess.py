"""preprocess: resize types against plain Pillow, colour, scaling, mean, dimension orders, box mapping."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from engine.errors import ImageError, ModelError
from engine.preprocess import ImageMeta, group_by_shape, map_box_to_original, preprocess
from schemas.common import BBox, Point
from schemas.networks import ImagePreprocessing

BILINEAR = Image.Resampling.BILINEAR


def smooth_image(height: int, width: int) -> np.ndarray:
    """Gradients: small shifts change pixels a little, so independent implementations can be compared."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1), 127 + 100 * np.sin(x / 7 + y / 9)]
    return np.stack(channels, axis=2).round().astype(np.uint8)


def spec(**fields: object) -> ImagePreprocessing:
    return ImagePreprocessing.model_validate({"pixel_scaling": 255.0, **fields})


def pillow_reference(image: np.ndarray, resize_type: str, width: int, height: int) -> np.ndarray:
    """The resize types written the obvious way with Pillow (floor centring)."""
    source = Image.fromarray(image)
    if resize_type == "SQUASH":
        return np.asarray(source.resize((width, height), BILINEAR), dtype=np.float32)
    fit = max if resize_type == "CROP" else min
    scale = fit(width / source.width, height / source.height)
    size = (round(source.width * scale), round(source.height * scale))
    scaled = source.resize(size, BILINEAR)
    if resize_type == "CROP":
        left, top = (size[0] - width) // 2, (size[1] - height) // 2
        return np.asarray(scaled.crop((left, top, left + width, top + height)), dtype=np.float32)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(scaled, ((width - size[0]) // 2, (height - size[1]) // 2))
    return np.asarray(canvas, dtype=np.float32)


SHAPES = [(30, 50), (50, 30), (17, 93), (100, 100), (7, 9)]
TARGETS = [(20, 20), (16, 24), (40, 30), (31, 17), (64, 48)]


@pytest.mark.parametrize("resize_type", ["SQUASH", "CROP", "FILL"])
@pytest.mark.parametrize(("height", "width"), SHAPES)
@pytest.mark.parametrize(("target_width", "target_height"), TARGETS)
def test_resize_types_match_pillow(
    resize_type: str, height: int, width: int, target_width: int, target_height: int
) -> None:
    image = smooth_image(height, width)
    example, _ = preprocess(
        image, spec(resize_type=resize_type, target_size=f"{target_width}x{target_height}")
    )
    assert example.dtype == np.float32
    assert example.shape == (target_height, target_width, 3)
    np.testing.assert_array_equal(example, pillow_reference(image, resize_type, target_width, target_height))


@pytest.mark.parametrize(("height", "width"), SHAPES)
def test_crop_and_fill_agree_with_pillow_imageops(height: int, width: int) -> None:
    # ImageOps cuts before resizing (fit) and rounds its centring (pad): near, not equal.
    image = smooth_image(height, width)
    crop, _ = preprocess(image, spec(resize_type="CROP", target_size="40x30"))
    fit = np.asarray(ImageOps.fit(Image.fromarray(image), (40, 30), BILINEAR), dtype=np.float32)
    assert np.abs(crop - fit).mean() < 6
    fill, _ = preprocess(image, spec(resize_type="FILL", target_size="40x30"))
    pad = ImageOps.pad(Image.fromarray(image), (40, 30), BILINEAR, color=(255, 255, 255))
    assert (fill == 255).mean() == pytest.approx((np.asarray(pad) == 255).mean(), abs=0.05)


def test_squash_with_single_size_is_square() -> None:
    example, _ = preprocess(smooth_image(30, 50), spec(resize_type="SQUASH", target_size="12"))
    assert example.shape == (12, 12, 3)


@pytest.mark.parametrize(
    ("height", "width", "expected"), [(30, 50, (15, 25)), (50, 30, (25, 15)), (8, 8, (25, 25))]
)
def test_network_resize_scales_the_larger_side(height: int, width: int, expected: tuple[int, int]) -> None:
    example, _ = preprocess(smooth_image(height, width), spec(resize_type="NETWORK", target_size="25"))
    assert example.shape == (*expected, 3)


def test_colour_channels() -> None:
    image = smooth_image(20, 30)
    rgb, _ = preprocess(image, spec(target_size="10x8"))
    bgr, _ = preprocess(image, spec(target_size="10x8", color_channels="BGR"))
    grey, _ = preprocess(image, spec(target_size="10x8", color_channels="L"))
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])
    luma = Image.fromarray(image).convert("L").resize((10, 8), BILINEAR)
    assert grey.shape == (8, 10, 1)
    np.testing.assert_array_equal(grey[:, :, 0], np.asarray(luma, dtype=np.float32))


def test_pixel_scaling_then_mean() -> None:
    image = smooth_image(8, 8)
    raw, _ = preprocess(image, spec(target_size="8x8"))
    scaled, _ = preprocess(image, spec(target_size="8x8", pixel_scaling=2.0))
    np.testing.assert_allclose(scaled, raw / 255 * 2, rtol=1e-6)
    mean = np.array([0.5, 1.0, 1.5])
    centred, _ = preprocess(image, spec(target_size="8x8", pixel_scaling=2.0), mean=mean)
    np.testing.assert_allclose(centred, raw / 255 * 2 - mean, rtol=1e-5, atol=1e-6)
    full_mean = np.full((8, 8, 3), 0.25)
    np.testing.assert_allclose(
        preprocess(image, spec(target_size="8x8", pixel_scaling=2.0), mean=full_mean)[0],
        raw / 255 * 2 - 0.25,
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("shape", [(1,), (4,), (8, 8, 1), (3, 8, 8)])
def test_mean_of_the_wrong_shape_is_a_model_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(ModelError, match=r"mean file has shape .* needs \(3,\) or \(8, 8, 3\)"):
        preprocess(smooth_image(8, 8), spec(target_size="8x8"), mean=np.zeros(shape))


@pytest.mark.parametrize(
    ("order", "axes"), [("NHWC", (0, 1, 2)), ("NWHC", (1, 0, 2)), ("NCHW", (2, 0, 1)), ("NCWH", (2, 1, 0))]
)
def test_dimension_orders(order: str, axes: tuple[int, int, int]) -> None:
    image = smooth_image(20, 30)
    hwc, _ = preprocess(image, spec(target_size="10x6"))
    ordered, _ = preprocess(image, spec(target_size="10x6", dimension_order=order))
    np.testing.assert_array_equal(ordered, hwc.transpose(axes))
    assert ordered.flags.c_contiguous


def test_bbox_crops_the_pixels_it_touches() -> None:
    image = smooth_image(40, 60)
    bbox = BBox(xmin=0.1, ymin=0.25, xmax=0.5, ymax=0.5)
    cropped, meta = preprocess(image, spec(target_size="24x10"), bbox=bbox)
    direct, _ = preprocess(image[10:20, 6:30], spec(target_size="24x10"))
    np.testing.assert_array_equal(cropped, direct)
    assert map_box_to_original((0.0, 0.0, 1.0, 1.0), meta) == pytest.approx((0.1, 0.25, 0.5, 0.5))


def test_polygon_crops_its_bounds_and_whitens_outside_on_request() -> None:
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    triangle = [Point(x=0.25, y=0.25), Point(x=0.75, y=0.25), Point(x=0.25, y=0.75)]
    plain, meta = preprocess(image, spec(target_size="20x20"), polygon=triangle)
    assert map_box_to_original((0.0, 0.0, 1.0, 1.0), meta) == pytest.approx((0.25, 0.25, 0.75, 0.75))
    assert plain.max() == 0
    masked, _ = preprocess(image, spec(target_size="20x20"), polygon=triangle, crop_uniform_background=True)
    assert masked[1, 1].tolist() == [0, 0, 0]  # inside, near the right angle
    assert masked[18, 18].tolist() == [255, 255, 255]  # outside, across the hypotenuse


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"bbox": BBox(xmin=0, ymin=0, xmax=1, ymax=1), "polygon": [Point(x=0, y=0)] * 3}, "not both"),
        ({"polygon": [Point(x=0.1, y=0.1), Point(x=0.5, y=0.1)]}, "at least 3 points"),
        ({"polygon": [Point(x=0.1, y=0.2), Point(x=0.5, y=0.2), Point(x=0.9, y=0.2)]}, "empty"),
    ],
)
def test_bad_crops_are_image_errors(kwargs: dict[str, object], reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        preprocess(smooth_image(10, 10), spec(target_size="4x4"), **kwargs)  # type: ignore[arg-type]


def test_group_by_shape_keeps_first_appearance_order() -> None:
    examples = [np.zeros((2, 3)), np.zeros((3, 2)), np.zeros((2, 3)), np.zeros(4), np.zeros((3, 2))]
    assert group_by_shape(examples) == [[0, 2], [1, 4], [3]]
    assert group_by_shape([]) == []


def find_red(example: np.ndarray) -> tuple[float, float, float, float]:
    """The red rectangle's box, normalized on an NHWC network input (edges at half intensity)."""
    mask = (example[:, :, 0] >= 127.5) & (example[:, :, 1] < 127.5)
    columns, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    height, width = mask.shape
    return columns[0] / width, rows[0] / height, (columns[-1] + 1) / width, (rows[-1] + 1) / height


def visible_fraction(resize_type: str, size: tuple[int, int], target: tuple[int, int]) -> tuple[float, float]:
    """Share of each axis of the (cropped) image that CROP keeps; 1 for the others."""
    if resize_type != "CROP":
        return 1.0, 1.0
    scale = max(target[0] / size[0], target[1] / size[1])
    return min(1.0, target[0] / (scale * size[0])), min(1.0, target[1] / (scale * size[1]))


@settings(max_examples=150, deadline=None)
@given(
    width=st.integers(12, 160),
    height=st.integers(12, 160),
    resize_type=st.sampled_from(["SQUASH", "CROP", "FILL", "NETWORK"]),
    target=st.tuples(st.integers(16, 80), st.integers(16, 80)),
    crop=st.one_of(st.none(), st.tuples(*[st.floats(0.0, 0.3)] * 2, *[st.floats(0.7, 1.0)] * 2)),
    rect=st.tuples(*[st.floats(0.05, 0.45)] * 4),
)
def test_box_round_trip_through_pixels(
    width: int,
    height: int,
    resize_type: str,
    target: tuple[int, int],
    crop: tuple[float, float, float, float] | None,
    rect: tuple[float, float, float, float],
) -> None:
    """Paint a red rectangle, find it in the network input, map it back: it lands where it was painted."""
    size = f"{target[0]}" if resize_type == "NETWORK" else f"{target[0]}x{target[1]}"
    bbox = None if crop is None else BBox(xmin=crop[0], ymin=crop[1], xmax=crop[2], ymax=crop[3])
    left, top, right, bottom = (0, 0, width, height)
    if crop is not None:
        left, top = int(np.floor(crop[0] * width)), int(np.floor(crop[1] * height))
        right, bottom = int(np.ceil(crop[2] * width)), int(np.ceil(crop[3] * height))
    if resize_type == "NETWORK":
        scale = target[0] / max(right - left, bottom - top)
        target = (round((right - left) * scale), round((bottom - top) * scale))
    shown_x, shown_y = visible_fraction(resize_type, (right - left, bottom - top), target)
    # The rectangle sits around the centre of the crop, inside what CROP keeps, in whole pixels.
    x0 = left + round((right - left) * (0.5 - rect[0] * shown_x))
    x1 = left + round((right - left) * (0.5 + rect[1] * shown_x))
    y0 = top + round((bottom - top) * (0.5 - rect[2] * shown_y))
    y1 = top + round((bottom - top) * (0.5 + rect[3] * shown_y))
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[y0:y1, x0:x1, 0] = 255
    example, meta = preprocess(image, spec(resize_type=resize_type, target_size=size), bbox=bbox)
    place = meta.placement
    # Detectable only if it spans a few network pixels.
    assume(
        min(
            (x1 - x0) * place.resized_width / (right - left),
            (y1 - y0) * place.resized_height / (bottom - top),
        )
        >= 3
    )
    mapped = map_box_to_original(find_red(example), meta)
    # Bilinear edges sit within about a network pixel; in original-image units:
    tolerance_x = 1.5 * (right - left) / place.resized_width / width
    tolerance_y = 1.5 * (bottom - top) / place.resized_height / height
    expected = (x0 / width, y0 / height, x1 / width, y1 / height)
    for value, want, tolerance in zip(mapped, expected, [tolerance_x, tolerance_y] * 2, strict=True):
        assert value == pytest.approx(want, abs=tolerance)


@settings(max_examples=100, deadline=None)
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    resize_type=st.sampled_from(["SQUASH", "CROP", "FILL"]),
    target=st.tuples(st.integers(1, 64), st.integers(1, 64)),
    box=st.tuples(*[st.floats(-0.5, 1.5, allow_nan=False)] * 4),
)
def test_mapped_boxes_stay_in_the_unit_square_and_keep_order(
    width: int, height: int, resize_type: str, target: tuple[int, int], box: tuple[float, float, float, float]
) -> None:
    _, meta = preprocess(
        np.zeros((height, width, 3), np.uint8),
        spec(resize_type=resize_type, target_size="{}x{}".format(*target)),
    )
    mapped = map_box_to_original(box, meta)
    assert all(0.0 <= value <= 1.0 and isinstance(value, float) for value in mapped)
    if box[0] <= box[2]:
        assert mapped[0] <= mapped[2]
    if box[1] <= box[3]:
        assert mapped[1] <= mapped[3]


def test_fill_padding_maps_outside_the_image() -> None:
    _, meta = preprocess(np.zeros((10, 20, 3), np.uint8), spec(resize_type="FILL", target_size="20x20"))
    assert isinstance(meta, ImageMeta)
    # The image occupies rows 5..15 of 20: the top padding maps to a zero-height strip at the top edge.
    assert map_box_to_original((0.0, 0.0, 1.0, 0.25), meta) == pytest.approx((0.0, 0.0, 1.0, 0.0))
    assert map_box_to_original((0.0, 0.25, 1.0, 0.75), meta) == pytest.approx((0.0, 0.0, 1.0, 1.0))
