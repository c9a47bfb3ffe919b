"""The HTTP calls the benchmark makes: deploy a model through the v0.7 API, and submit → result."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import aiohttp

from bench.models import BenchModel, network_parts

LONG_POLL_S = 30
# Fixed, so each request body is built once and the load generator spends its CPU sending, not encoding.
BOUNDARY = "percept-bench-7f3a9c1e5b2d4f60a8"


class Form(str, Enum):
    JSON = "json"  # {"inputs": [{"image": {"source": "data:image/jpeg;base64,..."}}]}
    MULTIPART = "multipart"  # the JPEG as the file part `inputs[0]image.source`, as the official client sends


@dataclass(frozen=True)
class Body:
    data: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()  # any others the protocol needs, e.g. KServe's header length


class RequestFailed(Exception):
    """A call answered other than expected; the message says which call and what came back."""


def inference_bodies(jpegs: list[bytes], form: Form) -> list[Body]:
    if form is Form.JSON:
        return [
            Body(
                json.dumps(
                    {
                        "inputs": [
                            {"image": {"source": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()}}
                        ]
                    }
                ).encode(),
                "application/json",
            )
            for jpeg in jpegs
        ]
    return [multipart_body(jpeg, "inputs[0]image.source") for jpeg in jpegs]


def multipart_body(jpeg: bytes, field: str) -> Body:
    """One JPEG as the file part `field` of a multipart/form-data body."""
    assert BOUNDARY.encode() not in jpeg
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="image.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return Body(head + jpeg + f"\r\n--{BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}")


class Percept:
    def __init__(self, session: aiohttp.ClientSession, url: str, key: str) -> None:
        self._session = session
        self._url = url + "/v0.7"
        self._headers = {"X-API-KEY": key}

    async def _call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        async with self._session.request(
            method, self._url + path, headers={**self._headers, **(headers or {})}, **kwargs
        ) as response:
            if not 200 <= response.status < 300:
                raise RequestFailed(f"{method} {path}: {response.status} {(await response.text())[:300]}")
            answer: dict[str, Any] = await response.json()
            return answer

    async def finished(self, task_id: str) -> dict[str, Any]:
        """The task once it is no longer pending, long-polling: the result is seen the moment it is stored."""
        while True:
            task = await self._call("GET", f"/tasks/{task_id}/", params={"wait": str(LONG_POLL_S)})
            if task["status"] != "pending":
                return task

    async def _post_inference(self, version_id: str, body: Body, **params: str) -> dict[str, Any]:
        path = f"/recognition/versions/{version_id}/inference"
        headers = {"Content-Type": body.content_type}
        return await self._call("POST", path, data=body.data, headers=headers, params=params)

    async def submit(self, version_id: str, body: Body) -> str:
        """Submit one image to a version; its task id."""
        return str((await self._post_inference(version_id, body))["task_id"])

    async def infer(self, version_id: str, body: Body) -> dict[str, Any]:
        """Submit one image to a version and return the finished task."""
        return await self.finished(await self.submit(version_id, body))

    async def infer_waiting(self, version_id: str, body: Body) -> dict[str, Any]:
        """Submit one image with `?wait=`: the answer holds the finished task, one request in all."""
        task: dict[str, Any] = (await self._post_inference(version_id, body, wait=str(LONG_POLL_S)))["task"]
        return task if task["status"] != "pending" else await self.finished(task["id"])

    async def infer_waiting_ok(self, version_id: str, body: Body) -> None:
        """`infer_waiting`, raising RequestFailed unless the task succeeded."""
        _succeeded(await self.infer_waiting(version_id, body))

    async def infer_ok(self, version_id: str, body: Body) -> None:
        """`infer`, raising RequestFailed unless the task succeeded: the load generator's view of Percept."""
        _succeeded(await self.infer(version_id, body))

    async def deploy(self, model: BenchModel, folder: Path) -> str:
        """Upload the SavedModel as a network, wait until a consumer loaded it; create spec and version."""
        form = aiohttp.FormData(model.network_fields())
        for name, data in network_parts(folder).items():
            form.add_field(name, data, filename=name, content_type="application/octet-stream")
        network = await self._call("POST", "/networks/", data=form)
        deployed = await self.finished(network["task_id"])
        if deployed["status"] != "success":
            raise RequestFailed(f"deploying {model.key} failed: {deployed['error']}")
        spec = await self._call("POST", "/recognition/specs/", json=model.spec_body())
        version = await self._call(
            "POST",
            "/recognition/versions/",
            json={
                "spec_id": spec["id"],
                "network_id": network["id"],
                "post_processings": model.post_processings(),
            },
        )
        return str(version["id"])


def _succeeded(task: dict[str, Any]) -> None:
    if task["status"] != "success":
        raise RequestFailed(f"task {task['id']} {task['status']}: {task['error']}")
