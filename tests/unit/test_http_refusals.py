"""aiohttp's parser exceptions, as both its parsers raise them, become errors naming the field and limit."""

from __future__ import annotations

import pytest
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong

from gateway.errors import HeadersTooLarge, InvalidInput, UriTooLong
from gateway.refusals import ParserLimits, refusal

LIMITS = ParserLimits(request_line=32768, field=8190, headers=128)
LONG_KEY = b"k" * 20_000


def _head(target: bytes, *headers: bytes) -> bytes:
    return b"\r\n".join([b"GET " + target + b" HTTP/1.1", b"Host: x", *headers]) + b"\r\n"


@pytest.mark.parametrize(
    "quoted",
    [b"k" * 100 + b"...", b"X-Api-Key: " + b"k" * 89 + b"..."],
    ids=["c-parser-quotes-the-value", "python-parser-quotes-the-line"],
)
def test_a_long_header_is_named(quoted: bytes) -> None:
    head = _head(b"/v0.7/tasks/", b"X-Api-Key: " + LONG_KEY)
    answer = refusal(LineTooLong(quoted, 8190), head, LIMITS)
    assert isinstance(answer.error, HeadersTooLarge) and answer.error.status == 431
    assert answer.error.field == "headers.X-Api-Key"
    assert "8190 bytes" in answer.error.reason
    assert answer.path == "/v0.7/tasks/"


def test_the_header_is_named_from_the_line_even_when_the_parser_quotes_garbage() -> None:
    # aiohttp 3.14's C parser glues the previous header's name onto a long name it quotes ("HostX-...").
    head = _head(b"/", b"X-" + b"n" * 20_000 + b": v")
    answer = refusal(LineTooLong(b"HostX-" + b"n" * 94 + b"...", 8190), head, LIMITS)
    assert answer.error.field == "headers"
    assert "header name (X-nnn" in answer.error.reason


def test_without_the_line_in_view_the_python_parser_quote_still_names_it() -> None:
    answer = refusal(LineTooLong(b"Authorization: Key " + b"k" * 81 + b"...", 8190), b"", LIMITS)
    assert answer.error.field == "headers.Authorization"
    assert answer.path == ""


def test_without_anything_to_go_on_the_headers_are_at_fault() -> None:
    answer = refusal(LineTooLong(b"k" * 100 + b"...", 8190), b"k" * 5000, LIMITS)
    assert isinstance(answer.error, HeadersTooLarge) and answer.error.field == "headers"


def test_an_earlier_request_on_the_connection_is_not_blamed() -> None:
    earlier = _head(b"/v0.7/tasks/1/") + b"\r\n"
    head = earlier + _head(b"/v2/models/digits/outputs", b"X-Long: " + b"z" * 9000)
    answer = refusal(LineTooLong(b"z" * 100 + b"...", 8190), head, LIMITS)
    assert answer.error.field == "headers.X-Long"
    assert answer.path == "/v2/models/digits/outputs"  # so the answer takes Clarifai's shape


@pytest.mark.parametrize(
    ("quoted", "path"),
    [
        (bytearray(b"/v2/models/" + b"a" * 89 + b"..."), "/v2/models/" + "a" * 89),
        (b"GET /v0.7/tasks/?task_ids=" + b"1" * 74 + b"...", "/v0.7/tasks/"),
        (b"http://host/v2/x?" + b"a" * 83 + b"...", "/v2/x"),
    ],
    ids=["c-parser-quotes-the-url", "python-parser-quotes-the-line", "absolute-form"],
)
def test_a_long_request_line_is_414_with_its_path(quoted: bytes, path: str) -> None:
    answer = refusal(LineTooLong(quoted, 32768), quoted, LIMITS)
    assert isinstance(answer.error, UriTooLong) and answer.error.status == 414
    assert answer.error.field == "request line"
    assert "32768 bytes" in answer.error.reason
    assert answer.path == path


def test_too_many_headers() -> None:
    head = _head(b"/v2/models/x/outputs", *(b"X-H%d: v" % i for i in range(200)))
    answer = refusal(BadHttpMessage("Too many headers received"), head, LIMITS)
    assert isinstance(answer.error, HeadersTooLarge)
    assert answer.error.field == "headers" and "128" in answer.error.reason
    assert answer.path == "/v2/models/x/outputs"


def test_other_malformed_requests_name_the_request() -> None:
    answer = refusal(BadHttpMethod(b"\x16\x03\x01".decode("latin-1")), b"\x16\x03\x01 hello", LIMITS)
    assert isinstance(answer.error, InvalidInput) and answer.error.status == 400
    assert answer.error.field == "request" and answer.error.reason.startswith("malformed HTTP request")


def test_equal_limits_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match="must differ"):
        ParserLimits(request_line=8190, field=8190, headers=128)
