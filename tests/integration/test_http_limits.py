"""Requests that aiohttp's HTTP parser refuses (over-long lines, too many headers) get JSON errors naming
the field.

Real bytes over a loopback socket, against the gateway as `percept serve` and `percept gateway` serve it
(`percept.compose.run_http`): the parser runs before any middleware, so a test client would not see this.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from broker.memory import MemoryBroker
from gateway.app import create_app
from gateway.auth import ensure_api_key
from gateway.context import GatewayConfig
from gateway.http_server import MAX_FIELD_BYTES, MAX_HEADERS, MAX_REQUEST_LINE_BYTES
from percept.compose import run_http
from store.factory import open_store

KEY = "limits-key-0123456789abcdef"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


@pytest.fixture
async def port(tmp_path: Path) -> AsyncIterator[int]:
    store = await open_store("", tmp_path)
    broker = MemoryBroker()
    await broker.start()
    await ensure_api_key(store, KEY)
    runner: web.AppRunner = await run_http(
        create_app(GatewayConfig(), store=store, broker=broker), "127.0.0.1", 0
    )
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()
        await broker.close()
        await store.close()


async def exchange(port: int, raw: bytes, *, after: bytes = b"") -> Answer:
    """`raw` on a new connection (once `after` is answered, if given); its answer, read until the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(30):
            if after:
                writer.write(after)
                _, headers = _head(await reader.readuntil(b"\r\n\r\n"))
                await reader.readexactly(int(headers["content-length"]))
            writer.write(raw)
            data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status, headers = _head(head)
    assert headers.get("content-type", "").startswith("application/json"), data[:500]
    return Answer(status, headers, json.loads(body))


def _head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, *lines = head.decode("latin-1").strip().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers


def request(target: str, *headers: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def still_serving(port: int) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as answer:
        assert answer.status == 200


def assert_error(answer: Answer, status: int, field: str, *words: str) -> None:
    assert answer.status == status, answer.body
    assert answer.body["field"] == field, answer.body
    assert answer.body["code"] and answer.body["error"] == answer.body["detail"]
    for word in words:
        assert word in answer.body["detail"], answer.body


async def test_a_20_kb_header_line_names_the_header(port: int) -> None:
    answer = await exchange(port, request("/v0.7/tasks/1/", "X-Api-Key: " + "k" * 20_000))
    assert_error(answer, 431, "headers.X-Api-Key", f"{MAX_FIELD_BYTES} bytes")
    await still_serving(port)


async def test_a_long_header_under_the_clarifai_prefix_answers_in_clarifai_shape(port: int) -> None:
    answer = await exchange(port, request("/v2/models/digits/outputs", "Authorization: Key " + "k" * 20_000))
    assert answer.status == 431
    assert answer.body["status"]["code"] == 90400
    assert answer.body["status"]["details"].startswith("headers.Authorization: ")
    await still_serving(port)


async def test_over_200_headers_name_the_headers(port: int) -> None:
    answer = await exchange(port, request("/v0.7/tasks/1/", *(f"X-Filler-{i}: v" for i in range(210))))
    assert_error(answer, 431, "headers", f"more than {MAX_HEADERS} header fields")
    await still_serving(port)


async def test_a_20_kb_url_reaches_the_api(port: int) -> None:
    """Under the request line limit: the API answers it, here a JSON 404 naming the path."""
    answer = await exchange(port, request("/" + "a" * 20_000, f"X-API-KEY: {KEY}"))
    assert_error(answer, 404, "path")
    await still_serving(port)


async def test_a_url_over_the_limit_names_the_request_line(port: int) -> None:
    answer = await exchange(port, request("/v0.7/tasks/?task_ids=" + "1" * (MAX_REQUEST_LINE_BYTES + 10)))
    assert_error(answer, 414, "request line", f"{MAX_REQUEST_LINE_BYTES} bytes")
    await still_serving(port)


async def test_the_largest_task_listing_fits_the_request_line(port: int) -> None:
    """1,000 task ids (the listing's most) of 12 digits, `task_ids=` repeated as the official client does."""
    query = "&".join(f"task_ids={100_000_000_000 + i}" for i in range(1000))
    url = f"http://127.0.0.1:{port}/v0.7/tasks/?{query}&wait=0"
    assert len(url) > 20_000
    async with aiohttp.ClientSession() as session, session.get(url, headers={"X-API-KEY": KEY}) as answer:
        assert answer.status == 200, await answer.text()
        assert (await answer.json())["count"] == 1000


async def test_a_refusal_after_a_good_request_on_one_connection(port: int) -> None:
    """Keep-alive: the refused request, not the earlier one, is named."""
    good = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answer = await exchange(port, request("/v0.7/tasks/1/", "X-Long: " + "z" * 9000), after=good)
    assert_error(answer, 431, "headers.X-Long")
    await still_serving(port)
