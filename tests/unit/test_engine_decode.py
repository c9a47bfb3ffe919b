"""decode_image: formats, orientation, transparency, modes, and refusals."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.decode import decode_image
from engine.errors import ImageError

RNG = np.random.default_rng(7)
PIXELS = RNG.integers(0, 256, size=(6, 10, 3), dtype=np.uint8)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "WEBP"])
def test_lossless_formats_round_trip(fmt: str) -> None:
    options = {"lossless": True} if fmt == "WEBP" else {}
    decoded = decode_image(encode(Image.fromarray(PIXELS), fmt, **options))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, PIXELS)


def test_jpeg_decodes_close_to_source() -> None:
    smooth = np.broadcast_to(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (16, 32, 3)).copy()
    decoded = decode_image(encode(Image.fromarray(smooth), "JPEG", quality=95))
    assert decoded.shape == (16, 32, 3)
    assert np.abs(decoded.astype(int) - smooth).mean() < 3


def test_exif_orientation_is_applied() -> None:
    image = Image.fromarray(PIXELS)  # 10 wide, 6 high
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turned 90° clockwise
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes(), quality=100))
    assert decoded.shape == (10, 6, 3)


def test_exif_orientation_moves_pixels_like_pillow_transpose() -> None:
    exif = Image.Exif()
    exif[0x0112] = 3  # upside down
    data = encode(Image.fromarray(PIXELS), "PNG", exif=exif.tobytes())
    np.testing.assert_array_equal(decode_image(data), PIXELS[::-1, ::-1])


def test_alpha_is_composited_on_white() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque
    rgba[0, 1] = (10, 20, 30, 0)  # transparent
    rgba[1, 0] = (0, 0, 0, 128)  # half black over white
    decoded = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert tuple(decoded[0, 0]) == (10, 20, 30)
    assert tuple(decoded[0, 1]) == (255, 255, 255)
    assert all(126 <= value <= 128 for value in decoded[1, 0])


def test_gif_transparency_becomes_white_and_first_frame_is_used() -> None:
    first = Image.new("P", (4, 4), 1)
    first.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    first.putpixel((0, 0), 0)
    second = first.copy()
    second.paste(2, (0, 0, 4, 4))
    data = encode(first, "GIF", save_all=True, append_images=[second], transparency=0, duration=10)
    with Image.open(io.BytesIO(data)) as check:
        assert getattr(check, "n_frames", 1) == 2
    decoded = decode_image(data)
    assert tuple(decoded[0, 0]) == (255, 255, 255)
    assert tuple(decoded[1, 1]) == (255, 0, 0)


def test_animated_webp_gives_first_frame() -> None:
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((200, 0, 0), (0, 200, 0))]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert tuple(decode_image(data)[2, 2]) == (200, 0, 0)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [("L", 77, (77, 77, 77)), ("1", 1, (255, 255, 255)), ("CMYK", (0, 0, 0, 0), (255, 255, 255))],
)
def test_other_modes_become_rgb(mode: str, value: object, expected: tuple[int, int, int]) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    decoded = decode_image(encode(Image.new(mode, (3, 2), value), fmt, quality=100))  # type: ignore[arg-type]
    assert decoded.shape == (2, 3, 3)
    assert np.abs(decoded[0, 0].astype(int) - expected).max() <= 1


def test_sixteen_bit_grey_keeps_the_high_byte() -> None:
    wide = np.array([[0, 256 * 100 + 99, 65535]], dtype=np.uint16)
    decoded = decode_image(encode(Image.fromarray(wide), "PNG"))
    assert decoded[0, :, 0].tolist() == [0, 100, 255]
    assert (decoded[..., 0] == decoded[..., 2]).all()


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))


def test_too_many_pixels_is_refused_from_the_header() -> None:
    # 49 M pixels claimed by a few bytes: refused before any decoding (which would report truncation).
    with pytest.raises(ImageError, match="too large: 7000x7000"):
        decode_image(png_header_only(7000, 7000))


def test_pixel_limit_is_configurable() -> None:
    data = encode(Image.fromarray(PIXELS), "PNG")
    with pytest.raises(ImageError, match="limit is 59 pixels"):
        decode_image(data, max_pixels=59)
    assert decode_image(data, max_pixels=60).shape == (6, 10, 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, this is text", "not an image"),
        (encode(Image.fromarray(PIXELS), "TIFF"), "not an image"),
        (encode(Image.fromarray(PIXELS), "PNG")[:60], "truncated or corrupt"),
        (encode(Image.fromarray(PIXELS), "JPEG")[:200], "truncated or corrupt"),
    ],
    ids=["empty", "text", "tiff", "truncated-png", "truncated-jpeg"],
)
def test_unusable_bytes_raise_image_error(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        decode_image(data)
