"""Request bodies: JSON or multipart (read part by part, never decoding images), anything else 415."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import content_disposition_filename, parse_content_disposition

from gateway.context import CONFIG
from gateway.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from gateway.unflatten import unflatten


@dataclass
class Body:
    """`fields` nested as the client meant them; `files` holds multipart parts that came with a filename."""

    fields: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    text_pairs: list[tuple[str, Any]] = field(default_factory=list)

    def with_files(self) -> dict[str, Any]:
        """Fields with file parts in place: inference images come as a part `inputs[0]image.source`."""
        if not self.files:
            return self.fields
        return unflatten([*self.text_pairs, *self.files.items()])


def _text_value(raw: bytes, content_type: str | None, name: str) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("form fields must be UTF-8 text", field=name) from None
    if content_type and content_type.startswith("application/json"):
        # The official client labels `False` (a Python repr) as JSON: keep the text when it is not JSON.
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


@functools.lru_cache(maxsize=512)
def _names(disposition: str | None) -> tuple[str | None, str | None]:
    """A part's (name, filename) from its Content-Disposition: what BodyPartReader.name and .filename give.

    aiohttp parses the header again for each of the two, at about 100 us a parse (it rebuilds an escaping
    pattern on every call); clients repeat the same headers request after request, hence the cache.
    """
    _, params = parse_content_disposition(disposition)
    return content_disposition_filename(params, "name"), content_disposition_filename(params, "filename")


async def _read_part(part: BodyPartReader, budget: int) -> bytes:
    """The part's bytes, refusing to hold more than `budget` (the multipart reader has no size cap)."""
    chunks = bytearray()
    while chunk := await part.read_chunk(256 * 1024):
        chunks += chunk
        if len(chunks) > budget:
            raise PayloadTooLarge(f"request body is larger than the limit of {budget} bytes", field="body")
    return bytes(chunks)


async def _read_multipart(request: web.Request) -> Body:
    try:
        return await _read_parts(request)
    except ValueError as error:
        # aiohttp's reader: a Content-Type without a boundary, or a part it cannot frame.
        raise InvalidInput(f"malformed multipart body ({error})", field="Content-Type") from None
    except HttpProcessingError as error:
        # A part's headers that do not parse (control characters in a name, over-long lines, ...).
        raise InvalidInput(f"malformed multipart part headers ({error.message})", field="body") from None


async def _read_parts(request: web.Request) -> Body:
    reader = await request.multipart()
    pairs: list[tuple[str, Any]] = []
    files: dict[str, bytes] = {}
    budget = request.app[CONFIG].max_request_bytes
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            raise InvalidInput("nested multipart bodies are not supported", field="body")
        name, filename = _names(part.headers.get(hdrs.CONTENT_DISPOSITION))
        if not name:
            raise InvalidInput("every multipart part needs a name", field="body")
        raw = await _read_part(part, budget)
        budget -= len(raw)
        if filename is not None:
            files[name] = raw
        else:
            pairs.append((name, _text_value(raw, part.headers.get("Content-Type"), name)))
    return Body(fields=unflatten(pairs), files=files, text_pairs=pairs)


async def read_body(request: web.Request, *, allow_empty: bool = False) -> Body:
    if not request.body_exists:
        # No body at all may mean "all defaults"; an empty body declared as JSON is malformed JSON.
        if allow_empty and request.content_type != "application/json":
            return Body(fields={})
        raise InvalidInput("request body is empty; send JSON or multipart/form-data", field="body")
    content_type = request.content_type
    if content_type == "application/json":
        try:
            parsed = json.loads(await request.read())
        except (ValueError, RecursionError) as error:
            # ValueError covers bad JSON, bad UTF-8 and integers past Python's digit limit; RecursionError
            # nesting deeper than the parser's stack.
            raise InvalidInput(f"not valid JSON ({error})", field="body") from None
        if not isinstance(parsed, dict):
            raise InvalidInput("must be a JSON object", field="body")
        return Body(fields=parsed)
    if content_type == "multipart/form-data":
        return await _read_multipart(request)
    raise UnsupportedMediaType(
        f"content type {content_type!r} is not supported; send application/json or multipart/form-data",
        field="Content-Type",
    )
