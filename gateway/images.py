"""Image sources to job payloads, without decoding: formats are recognised from their first bytes only."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from gateway.errors import InvalidInput, PayloadTooLarge
from schemas.common import Base64Text
from schemas.inference import ImageInput
from schemas.messages import JobImage

_DATA_URI = re.compile(r"^data:image/([\w.+*-]+);(base64|binary),", re.IGNORECASE)
SUPPORTED = "JPEG, PNG, GIF, BMP, WebP"
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_SNIFFED_BYTES = 12  # enough for every signature sniff_format reads
_SNIFFED_CHARS = _SNIFFED_BYTES // 3 * 4


@dataclass(frozen=True)
class _Inline:
    """An image carried by the request: `payload` for the job (bytes, or Base64Text as the client sent it),
    with its decoded size and first bytes."""

    payload: bytes
    size: int
    head: bytes


def sniff_format(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data.startswith(b"BM"):
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _decode_base64(text: str, field: str) -> bytes:
    try:
        # Fast path: clean base64 (no whitespace) decoded by binascii's strict mode, which accepts a subset of
        # what the path below does, at half its cost (b64decode's `validate` runs a regex over the text).
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            "not a URL (http/https), a data URI (data:image/*;base64,...) or base64 image bytes", field=field
        ) from None


def _canonical_base64(text: str) -> Base64Text | None:
    """`text` kept as it is when it is canonical base64 (what b64encode gives: no whitespace, padded, zero
    spare bits), checked without decoding it; None sends it to the decoding path. A clean 127 KB text took
    about 0.1 ms to check here against 0.3 ms to decode and 0.17 ms to encode again for the job."""
    if not text or len(text) % 4 or not text.isascii():
        return None
    raw = text.encode("ascii")
    padding = len(raw) - len(raw.rstrip(b"="))
    if padding > 2 or raw[: len(raw) - padding].translate(None, _ALPHABET):
        return None
    # Only the last group can carry spare bits that b64encode would have written as zeros.
    tail = raw[-4:]
    try:
        if binascii.b2a_base64(binascii.a2b_base64(tail, strict_mode=True), newline=False) != tail:
            return None
    except binascii.Error:
        return None
    return Base64Text(raw)


def _from_base64(text: str, field: str) -> _Inline:
    encoded = _canonical_base64(text)
    if encoded is None:
        data = _decode_base64(text, field)
        return _Inline(data, len(data), data[:_SNIFFED_BYTES])
    padding = len(encoded) - len(encoded.rstrip(b"="))
    head = binascii.a2b_base64(encoded[:_SNIFFED_CHARS], strict_mode=True)
    return _Inline(encoded, len(encoded) // 4 * 3 - padding, head)


def _of_bytes(data: bytes) -> _Inline:
    return _Inline(data, len(data), data[:_SNIFFED_BYTES])


def _inline(source: str | bytes, field: str) -> _Inline | None:
    """The image carried by the request, or None when the source is a URL for the consumer to fetch."""
    if isinstance(source, bytes):
        return _of_bytes(source)
    text = source.strip()
    # Only the scheme is lowered: lowering a whole 127 KB base64 text cost 2% of the gateway (perf).
    if text[:8].lower().startswith(("http://", "https://")):
        return None
    match = _DATA_URI.match(text)
    if match:
        payload = text[match.end() :]
        if match.group(2).lower() == "binary":
            return _of_bytes(payload.encode("latin-1", errors="strict"))
        return _from_base64(payload, field)
    return _from_base64(text, field)


def job_image(image: ImageInput, *, field: str, max_bytes: int) -> JobImage:
    source_field = f"{field}.source"
    inline = _inline(image.source, source_field)
    common = {
        "bbox": image.bbox,
        "polygon": image.polygon,
        "crop_uniform_background": image.crop_uniform_background,
    }
    if inline is None:
        assert isinstance(image.source, str)
        return JobImage(url=image.source.strip(), **common)
    if not inline.size:
        raise InvalidInput("image is empty", field=source_field)
    if inline.size > max_bytes:
        raise PayloadTooLarge(f"image is {inline.size} bytes; the limit is {max_bytes}", field=source_field)
    if sniff_format(inline.head) is None:
        raise InvalidInput(f"not a supported image format ({SUPPORTED})", field=source_field)
    return JobImage(data=inline.payload, **common)
