"""aiohttp's HTTP-parser refusals as Percept errors: which line was too long, or what was malformed. Pure.

The parser refuses a request before any middleware runs, and its exception carries only the limit and a
100-byte prefix of what overflowed: the URL, a header's name, or a header's value without its name. The
bytes of the request head received so far give the rest: the header's name, and the path, which picks the
error's shape (Clarifai's under /v2/).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong

from gateway.errors import ApiError, HeadersTooLarge, InvalidInput, UriTooLong

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 9110 token: method and header names
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") (\S+) HTTP/\d\.\d")
# A header line, possibly cut short before its colon (the parser stops in the middle of a long name).
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb")(?::|$)")
_LONGEST_NAMED = 64  # longer header names are themselves the problem: shown shortened in the reason


@dataclass(frozen=True)
class ParserLimits:
    """aiohttp's `max_line_size`, `max_field_size` and `max_headers`, as the server was given them."""

    request_line: int
    field: int
    headers: int

    def __post_init__(self) -> None:
        # LineTooLong tells the request line from a header only by the limit it quotes.
        if self.request_line == self.field:
            raise ValueError("the request line and header field limits must differ")


@dataclass(frozen=True)
class Refusal:
    error: ApiError
    path: str  # the refused request's path where the head shows it, else ""


def refusal(error: HttpProcessingError, head: bytes, limits: ParserLimits) -> Refusal:
    """The answer to a request the parser refused with `error`; `head` is the connection's latest bytes."""
    lines = [line.removesuffix(b"\r") for line in head.split(b"\n")]
    start = _last_request_line(lines)
    path = _path(lines[start]) if start is not None else ""
    if isinstance(error, LineTooLong):
        prefix, limit = _line_too_long(error)
        if limit == limits.request_line:
            return Refusal(
                UriTooLong(f"longer than {limit} bytes; send long data in the body", field="request line"),
                _path(prefix) or path,
            )
        return Refusal(_header_too_long(lines[start or 0 :], prefix, limits.field), path)
    if isinstance(error, BadHttpMessage) and "too many headers" in error.message.lower():
        return Refusal(HeadersTooLarge(f"more than {limits.headers} header fields", field="headers"), path)
    reason = error.message or type(error).__name__
    return Refusal(InvalidInput(f"malformed HTTP request: {_shortened(reason)}", field="request"), path)


def _line_too_long(error: LineTooLong) -> tuple[bytes, int | None]:
    line, limit = (*error.args, b"", None)[:2]
    prefix = bytes(line).removesuffix(b"...") if isinstance(line, bytes | bytearray) else b""
    return prefix, limit if isinstance(limit, int) else None


def _header_too_long(lines: list[bytes], prefix: bytes, limit: int) -> ApiError:
    name = next(
        (match.group(1) for line in lines if len(line) > limit and (match := _HEADER_LINE.match(line))),
        None,
    )
    if name is None and (match := re.match(rb"(" + _TOKEN + rb"):", prefix)):
        name = match.group(1)  # the pure-Python parser quotes the whole line, name first
    if name is None:
        return HeadersTooLarge(f"a header field is longer than {limit} bytes", field="headers")
    text = name.decode("latin-1")
    if len(text) > _LONGEST_NAMED:
        return HeadersTooLarge(
            f"a header name ({text[:_LONGEST_NAMED]}…) is longer than {limit} bytes", field="headers"
        )
    return HeadersTooLarge(f"longer than {limit} bytes", field=f"headers.{text}")


def _last_request_line(lines: list[bytes]) -> int | None:
    for index in range(len(lines) - 1, -1, -1):
        if _REQUEST_LINE.fullmatch(lines[index]):
            return index
    return None


def _path(line: bytes) -> str:
    """The path of a request line, or of a request target on its own (what the C parser quotes)."""
    match = _REQUEST_LINE.match(line) or re.match(_TOKEN + rb" (\S+)", line)
    target = match.group(match.lastindex or 0) if match else line.split(b" ", 1)[0]
    text = target.decode("latin-1")
    if "://" in text:
        return urlsplit(text).path
    return text.split("?", 1)[0] if text.startswith("/") else ""


def _shortened(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
