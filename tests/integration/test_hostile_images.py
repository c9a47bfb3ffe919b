"""Hostile images: each is answered with a 4xx JSON error or ends its task in `error`, quickly, and none of
them makes the process balloon."""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import Stack
from tests.images import png

pytestmark = pytest.mark.slow


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size: a decompression bomb as far as any decoder can tell."""
    data = bytearray(png((0, 0, 0), size=(1, 1)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def many_frames_gif(frames: int) -> bytes:
    images = [Image.new("P", (4, 4), index % 256) for index in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=10)
    return buffer.getvalue()


async def _version(stack: Stack, tiny_models: dict[str, Path]) -> str:
    network = await stack.upload_network(tiny_models["brightness"], target_size="16x16")
    await stack.wait_task(network["task_id"])
    outputs = [{"labels": {"labels": [{"id": 0, "name": "dark"}, {"id": 1, "name": "bright"}]}}]
    spec = await (
        await stack.client.post(
            "/v0.7/recognition/specs/", json={"name": "s", "outputs": outputs}, headers=stack.headers()
        )
    ).json()
    body = {
        "spec_id": spec["id"],
        "network_id": network["id"],
        "post_processings": [
            {"classification": {"output_tensor": "probabilities", "thresholds": [0.5, 0.5]}}
        ],
    }
    version = await (
        await stack.client.post("/v0.7/recognition/versions/", json=body, headers=stack.headers())
    ).json()
    return f"/v0.7/recognition/versions/{version['id']}/inference"


async def _submit(stack: Stack, path: str, image: bytes) -> tuple[int, dict[str, Any]]:
    body = {"inputs": [{"image": {"source": base64.b64encode(image).decode()}}]}
    response = await stack.client.post(path, json=body, headers=stack.headers())
    answer: dict[str, Any] = await response.json()
    if response.status != 200:
        return response.status, answer
    return response.status, await stack.wait_task(answer["task_id"])


async def test_hostile_images_fail_fast_and_small(stack: Stack, tiny_models: dict[str, Path]) -> None:
    path = await _version(stack, tiny_models)
    jpeg_header = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
    cases = {
        "pixel bomb (png header claims 100000x100000)": png_claiming(100_000, 100_000),
        "pixel bomb (just over the cap)": png_claiming(8000, 5001),
        "truncated png": png((9, 9, 9))[:30],
        "jpeg header then garbage": jpeg_header + b"\x00" * 5000,
        "gif with 10,000 frames": many_frames_gif(10_000),
        "png with a corrupt body": png((1, 2, 3))[:40] + b"\x00" * 64 + png((1, 2, 3))[-12:],
    }
    before = _rss_mb()
    for name, image in cases.items():
        started = time.monotonic()
        status, task = await _submit(stack, path, image)
        elapsed = time.monotonic() - started
        assert elapsed < 2.0, (name, elapsed)
        if name.startswith("gif"):
            assert task["status"] == "success", (name, task)  # the first frame is a valid image
        else:
            assert status == 200 and task["status"] == "error" and task["error"], (name, task)
    assert _rss_mb() - before < 200


async def test_huge_bodies_are_refused_before_they_are_held(stack: Stack) -> None:
    limit = 8 * 1024 * 1024  # the stack's request limit
    before = _rss_mb()
    body = b'{"inputs": [{"image": {"source": "' + b"A" * (limit + 1024) + b'"}}]}'
    response = await stack.client.post(
        "/v0.7/recognition/specs/",
        data=io.BytesIO(body),
        headers={**stack.headers(), "Content-Type": "application/json"},
    )
    assert response.status == 413
    assert (await response.json())["field"] == "body"
    assert _rss_mb() - before < 200


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "image/jpeg", "application/x-www-form-urlencoded"]
)
async def test_wrong_content_types_are_415(stack: Stack, content_type: str) -> None:
    response = await stack.client.post(
        "/v0.7/recognition/specs/", data=b"x=1", headers={**stack.headers(), "Content-Type": content_type}
    )
    assert response.status == 415
    assert (await response.json())["field"] == "Content-Type"
