"""The gateway's fast base64 path changes nothing but speed: clean base64 decodes as the whitespace-tolerant
validating path does, and what it refuses goes to that path."""

from __future__ import annotations

import base64
import binascii

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import images
from gateway.errors import InvalidInput


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
