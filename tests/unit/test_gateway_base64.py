"""The gateway's fast base64 path changes nothing but speed: clean base64 decodes as the whitespace-tolerant
validating path does, and what it refuses goes to that path."""

from __future__ import annotations

import base64
import binascii

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import images
from gateway.errors import InvalidInput, PayloadTooLarge
from schemas.common import Base64Text
from schemas.inference import ImageInput
from schemas.messages import JobImage


def _reference(text: str) -> bytes | None:
    """The decoding before the fast path: None where it refused the text."""
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def _decoded(text: str) -> bytes | None:
    try:
        return images._decode_base64(text, "field")
    except InvalidInput:
        return None


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="AQgw/+=z9 \n\t-_.é", max_size=14))
def test_base64_accepts_and_decodes_exactly_as_before(text: str) -> None:
    assert _decoded(text) == _reference(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_base64_of_any_bytes_round_trips(data: bytes) -> None:
    encoded = base64.b64encode(data).decode()
    assert _decoded(encoded) == data
    assert _decoded(" ".join([encoded[:5], encoded[5:]])) == data


def _job_json(data: bytes) -> str:
    return JobImage(data=data).model_dump_json()


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="AQgw/+=z9 \n\t-_.é", max_size=14))
def test_clean_base64_kept_as_sent_gives_the_job_json_of_decoding_it(text: str) -> None:
    reference = _reference(text)
    try:
        inline = images._from_base64(text, "field")
    except InvalidInput:
        assert reference is None
        return
    assert reference is not None
    assert (inline.size, inline.head) == (len(reference), reference[:12])
    assert _job_json(inline.payload) == _job_json(reference)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_b64encode_output_is_kept_as_sent(data: bytes) -> None:
    encoded = base64.b64encode(data).decode()
    inline = images._from_base64(encoded, "field")
    if data:
        assert isinstance(inline.payload, Base64Text)
        assert inline.payload == encoded.encode()
    assert (inline.size, inline.head) == (len(data), data[:12])
    assert _job_json(inline.payload) == _job_json(data)


def test_spare_bits_set_go_through_the_decoding_path() -> None:
    # "QR==" decodes (leniently) to b"A", whose canonical encoding is "QQ==": the job carries the latter.
    inline = images._from_base64("QR==", "field")
    assert not isinstance(inline.payload, Base64Text)
    assert _job_json(inline.payload) == _job_json(b"A")


def test_a_jpeg_sent_as_base64_is_checked_without_decoding_and_carried_as_sent() -> None:
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
    encoded = base64.b64encode(jpeg).decode()
    image = images.job_image(ImageInput(source=encoded), field="f", max_bytes=len(jpeg))
    assert isinstance(image.data, Base64Text)
    assert JobImage.model_validate_json(image.model_dump_json()).data == jpeg
    with pytest.raises(PayloadTooLarge):
        images.job_image(ImageInput(source=encoded), field="f", max_bytes=len(jpeg) - 1)
    with pytest.raises(InvalidInput, match="not a supported image format"):
        images.job_image(
            ImageInput(source=base64.b64encode(b"GIF" + jpeg).decode()), field="f", max_bytes=10**6
        )
