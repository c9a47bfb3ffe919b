"""Pure pieces of the gateway: DRF-style multipart keys, image sources, validation errors."""

from __future__ import annotations

import base64

import pytest
from aiohttp import BodyPartReader
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import ValidationError

from gateway.bodies import _names
from gateway.errors import InvalidInput, PayloadTooLarge, from_validation_error
from gateway.images import job_image, sniff_format
from gateway.unflatten import unflatten
from schemas.inference import ImageInput, InferenceRequest
from schemas.messages import JobImage
from tests.images import png


def test_unflatten_follows_the_official_client() -> None:
    pairs = [
        ("inputs[0]image.bbox.xmin", "0.1"),
        ("inputs[0]image.polygon[0]x", "0.2"),
        ("inputs[0]image.polygon[1]x", "0.3"),
        ("show_discarded", "True"),
    ]
    assert unflatten(pairs) == {
        "inputs": [{"image": {"bbox": {"xmin": "0.1"}, "polygon": [{"x": "0.2"}, {"x": "0.3"}]}}],
        "show_discarded": "True",
    }


@pytest.mark.parametrize(
    "pairs",
    [[("a[1]", "x")], [("a", "x"), ("a.b", "y")], [("a", "1"), ("a", "2")], [("[0]a", "x")], [("a..b", "x")]],
)
def test_unflatten_rejects_ambiguous_keys(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(InvalidInput):
        unflatten(pairs)


@given(st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), st.text(max_size=5), max_size=5))
def test_unflatten_keeps_flat_fields(fields: dict[str, str]) -> None:
    assert unflatten(list(fields.items())) == fields


def _carried(image: JobImage) -> bytes | None:
    """The image bytes a consumer reads from the job (clean base64 is carried as the client sent it)."""
    return JobImage.model_validate_json(image.model_dump_json()).data


def test_sources_become_bytes_or_urls_without_decoding() -> None:
    image = png((1, 2, 3))
    encoded = base64.b64encode(image).decode()
    assert _carried(job_image(ImageInput(source=encoded), field="f", max_bytes=10**6)) == image
    uri = "data:image/png;base64," + encoded
    assert _carried(job_image(ImageInput(source=uri), field="f", max_bytes=10**6)) == image
    assert job_image(ImageInput(source=image), field="f", max_bytes=10**6).data == image
    assert job_image(ImageInput(source=" http://x/y.jpg"), field="f", max_bytes=10**6).url == "http://x/y.jpg"
    with pytest.raises(PayloadTooLarge):
        job_image(ImageInput(source=image), field="f", max_bytes=10)
    with pytest.raises(InvalidInput, match="supported image"):
        job_image(ImageInput(source=b"GIF00 nope"), field="f", max_bytes=10**6)


def test_sniffing_knows_the_supported_formats() -> None:
    assert sniff_format(png((0, 0, 0))) == "png"
    assert sniff_format(b"\xff\xd8\xff\xe0rest") == "jpeg"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_format(b"%PDF-1.4") is None


def test_validation_errors_name_the_field_in_client_terms() -> None:
    with pytest.raises(ValidationError) as caught:
        InferenceRequest.model_validate({"inputs": [{"image": {"source": "x", "bbox": {"xmin": 2}}}]})
    error = from_validation_error(caught.value)
    assert error.field == "inputs[0].image.bbox.xmin"
    assert error.status == 400


@pytest.mark.parametrize(
    "disposition",
    [
        'form-data; name="inputs[0]image.source"; filename="photo.jpg"',
        'form-data; name="show_discarded"',
        "form-data; name=max_predictions",
        'form-data; name="a\\"b"; filename="c\\\\d.png"',
        "form-data; name=\"x\"; filename*=UTF-8''caf%C3%A9.jpg",
        'form-data; filename="only-a-file.jpg"',
        "form-data",
        None,
    ],
)
def test_part_names_are_those_aiohttp_gives(disposition: str | None) -> None:
    # The gateway parses Content-Disposition once (cached) instead of through BodyPartReader's properties.
    headers = CIMultiDictProxy(
        CIMultiDict({} if disposition is None else {"Content-Disposition": disposition})
    )
    part = BodyPartReader(b"--x", headers, None)  # type: ignore[arg-type]  # no content: only headers are read
    assert _names(disposition) == (part.name, part.filename)
