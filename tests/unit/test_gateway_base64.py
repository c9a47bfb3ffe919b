"""Base64 by pybase64 changes nothing but speed: every text is accepted, refused and decoded exactly as the
standard library's validating decoder does it (whitespace-tolerant where the gateway is), and job messages
carry the same base64 as before."""

from __future__ import annotations

import base64
import binascii

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import images
from gateway.errors import InvalidInput, PayloadTooLarge
from schemas.common import b64decode_strict
from schemas.inference import ImageInput
from schemas.messages import JobImage

# Characters of base64 and a few that are not, whitespace, '=' in odd places (which pybase64 alone refuses).
TEXTS = st.text(alphabet="AQgw/+=z9 \n\t-_.é", max_size=14)


def _reference(text: str) -> bytes | None:
    """The standard library's answer: None where it refuses the text."""
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
@given(TEXTS)
def test_the_gateway_accepts_and_decodes_exactly_as_the_standard_library(text: str) -> None:
    assert _decoded(text) == _reference(text)


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="AQgw/+=z9-_.é", max_size=14))
def test_strict_decoding_accepts_and_decodes_exactly_as_the_standard_library(text: str) -> None:
    try:
        expected: bytes | None = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        expected = None
    try:
        got: bytes | None = b64decode_strict(text)
    except (binascii.Error, ValueError):
        got = None
    assert got == expected


def test_padding_after_a_complete_group_is_accepted_as_before() -> None:
    # pybase64 refuses it, the standard library takes it: the fallback keeps the old answer.
    assert b64decode_strict("QUJD=") == b"ABC"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_base64_of_any_bytes_round_trips_and_jobs_carry_the_same_text(data: bytes) -> None:
    encoded = base64.b64encode(data).decode()
    assert _decoded(encoded) == data
    assert _decoded(" ".join([encoded[:5], encoded[5:]])) == data
    job = JobImage(data=data)
    assert job.model_dump(mode="json")["data"] == encoded
    assert JobImage.model_validate_json(job.model_dump_json()).data == data


def test_a_jpeg_sent_as_base64_is_checked_by_its_first_bytes_and_its_size() -> None:
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
    encoded = base64.b64encode(jpeg).decode()
    image = images.job_image(ImageInput(source=encoded), field="f", max_bytes=len(jpeg))
    assert image.data == jpeg
    with pytest.raises(PayloadTooLarge):
        images.job_image(ImageInput(source=encoded), field="f", max_bytes=len(jpeg) - 1)
    with pytest.raises(InvalidInput, match="not a supported image format"):
        images.job_image(
            ImageInput(source=base64.b64encode(b"GIF" + jpeg).decode()), field="f", max_bytes=10**6
        )
