"""The Clarifai `PostModelOutputs` surface through the real gateway and consumer, in one process."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.routes import clarifai
from tests.conftest import API_KEY, Stack
from tests.images import png

KEY = {"Authorization": f"Key {API_KEY}"}
WHITE = base64.b64encode(png((255, 255, 255))).decode()
BLACK = base64.b64encode(png((0, 0, 0))).decode()


async def _version(
    stack: Stack, folder: Path, *, target_size: str, labels: dict[str, Any], post: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    network = await stack.upload_network(folder, target_size=target_size)
    assert (await stack.wait_task(network["task_id"]))["status"] == "success"
    response = await stack.client.post(
        "/v0.7/recognition/specs/", json={"name": "spec", "outputs": [{"labels": labels}]}, headers=KEY
    )
    assert response.status == 201, await response.text()
    spec = await response.json()
    body = {"spec_id": spec["id"], "network_id": network["id"], "post_processings": [post]}
    response = await stack.client.post("/v0.7/recognition/versions/", json=body, headers=KEY)
    assert response.status == 201, await response.text()
    return spec, await response.json()


async def _classifier(stack: Stack, models: dict[str, Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    return await _version(
        stack,
        models["brightness"],
        target_size="16x16",
        labels={"roi": "NONE", "labels": [{"id": 0, "name": "dark"}, {"id": 1, "name": "bright"}]},
        post={"classification": {"output_tensor": "probabilities", "thresholds": [0.5, 0.5]}},
    )


async def _outputs(
    stack: Stack, path: str, body: dict[str, Any], *, status: int = 200, headers: dict[str, str] = KEY
) -> dict[str, Any]:
    response = await stack.client.post(path, json=body, headers=headers)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    answer: dict[str, Any] = await response.json()
    return answer


def _image(base64_or_url: str) -> dict[str, Any]:
    key = "url" if base64_or_url.startswith("http") else "base64"
    return {"data": {"image": {key: base64_or_url}}}


def _names(output: dict[str, Any]) -> list[str]:
    return [concept["name"] for concept in output["data"]["concepts"]]


@pytest.fixture
async def image_server() -> AsyncIterator[TestServer]:
    """Loopback images for URL inputs: the stack's consumer may fetch from 127.0.0.1 only."""

    async def white(_request: web.Request) -> web.Response:
        return web.Response(body=png((255, 255, 255)), content_type="image/png")

    app = web.Application()
    app.router.add_get("/white.png", white)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def test_concepts_cover_every_label_sorted_by_value(stack: Stack, tiny_models: dict[str, Path]) -> None:
    spec, version = await _classifier(stack, tiny_models)
    body = {"inputs": [{"id": "mine", **_image(WHITE)}, _image(BLACK)]}
    answer = await _outputs(stack, f"/v2/models/{spec['id']}/outputs", body)
    assert answer["status"] == {"code": 10000, "description": "Ok"}
    white, black = answer["outputs"]
    assert _names(white) == ["bright", "dark"] and _names(black) == ["dark", "bright"]
    assert white["data"]["concepts"][0] == {"id": "1", "name": "bright", "value": pytest.approx(1.0)}
    assert white["status"]["code"] == 10000
    assert white["input"] == {"id": "mine", "data": {"image": {}}}  # the base64 payload is not echoed
    assert black["input"]["id"] and black["input"]["id"] != "mine"
    assert white["model"] == {
        "id": str(spec["id"]),
        "name": "spec",
        "model_version": {"id": str(version["id"])},
    }
    assert datetime.fromisoformat(white["created_at"]).tzinfo is not None
    assert white["id"] != black["id"]


@pytest.mark.parametrize(
    ("config", "names"),
    [
        ({"min_value": 0.5}, ["bright"]),
        ({"max_concepts": 1}, ["bright"]),
        ({"select_concepts": [{"name": "dark"}]}, ["dark"]),
        ({"select_concepts": [{"id": "1", "value": 0.0}, {"name": "dark"}]}, ["bright", "dark"]),
        ({"select_concepts": [{"name": "dark"}], "min_value": 0.5}, []),
    ],
)
async def test_output_config_filters_concepts(
    stack: Stack, tiny_models: dict[str, Path], config: dict[str, Any], names: list[str]
) -> None:
    spec, _ = await _classifier(stack, tiny_models)
    body = {"inputs": [_image(WHITE)], "model": {"output_info": {"output_config": config}}}
    answer = await _outputs(stack, f"/v2/models/{spec['id']}/outputs", body)
    assert _names(answer["outputs"][0]) == names


async def test_detection_answers_regions(stack: Stack, tiny_models: dict[str, Path]) -> None:
    spec, _ = await _version(
        stack,
        tiny_models["boxes"],
        target_size="32x32",
        labels={"roi": "BBOX", "labels": [{"id": 7, "name": "thing"}]},
        post={
            "detection": {
                "thresholds": [0.5],
                "nms_threshold": 0.5,
                "direct_output": {"boxes_tensor": "boxes", "scores_tensor": "scores"},
            }
        },
    )
    white = base64.b64encode(png((255, 255, 255), size=(64, 64))).decode()
    path = f"/v2/models/{spec['id']}/outputs"
    regions = (await _outputs(stack, path, {"inputs": [_image(white)]}))["outputs"][0]["data"]["regions"]
    assert [region["value"] for region in regions] == [pytest.approx(1.0), pytest.approx(0.8)]
    first = regions[0]
    box = {"top_row": 0.1, "left_col": 0.1, "bottom_row": 0.5, "right_col": 0.5}
    assert first["region_info"]["bounding_box"] == pytest.approx(box)
    assert first["data"]["concepts"] == [{"id": "7", "name": "thing", "value": pytest.approx(1.0)}]
    assert len({region["id"] for region in regions}) == 2

    body = {"inputs": [_image(white)], "model": {"output_info": {"output_config": {"min_value": 0.9}}}}
    regions = (await _outputs(stack, path, body))["outputs"][0]["data"]["regions"]
    assert [region["value"] for region in regions] == [pytest.approx(1.0)]


async def test_failed_inputs_give_mixed_status(stack: Stack, tiny_models: dict[str, Path]) -> None:
    spec, _ = await _classifier(stack, tiny_models)
    truncated = base64.b64encode(png((1, 2, 3))[:40]).decode()  # passes the gateway, fails decoding
    broken = [
        _image("!!not base64!!"),
        _image(truncated),
        _image(base64.b64encode(b"plain text").decode()),
        {"data": {}},
    ]
    path = f"/v2/models/{spec['id']}/outputs"
    answer = await _outputs(stack, path, {"inputs": [_image(WHITE), *broken]})
    assert answer["status"]["code"] == 10010
    statuses = [output["status"] for output in answer["outputs"]]
    assert [s["code"] for s in statuses] == [10000, 30002, 30002, 30002, 30002]
    assert "inputs[1].data.image.base64" in statuses[1]["details"]
    assert statuses[2]["details"] and "supported image format" in statuses[3]["details"]
    assert "exactly one of url and base64" in statuses[4]["details"]
    assert all("data" not in output for output in answer["outputs"][1:])

    answer = await _outputs(stack, path, {"inputs": broken}, status=400)
    assert answer["status"]["code"] == 10020


async def test_request_limits_are_bad_requests(stack: Stack, tiny_models: dict[str, Path]) -> None:
    spec, _ = await _classifier(stack, tiny_models)
    path = f"/v2/models/{spec['id']}/outputs"
    answer = await _outputs(stack, path, {"inputs": [_image(WHITE)] * 129}, status=400)
    assert answer["status"]["code"] == 90400 and "128" in answer["status"]["details"]
    assert answer["outputs"] == []
    answer = await _outputs(stack, path, {"inputs": []}, status=400)
    assert answer["status"]["code"] == 90400 and "inputs" in answer["status"]["details"]
    response = await stack.client.post(path, data="{", headers=KEY)
    assert response.status == 400 and (await response.json())["status"]["code"] == 90400
    config = {"model": {"output_info": {"output_config": {"min_value": 2}}}}
    answer = await _outputs(stack, path, {"inputs": [_image(WHITE)], **config}, status=400)
    assert "min_value" in answer["status"]["details"]


async def test_unknown_models_and_versions(stack: Stack, tiny_models: dict[str, Path]) -> None:
    spec, version = await _classifier(stack, tiny_models)
    other, _ = await _classifier(stack, tiny_models)
    body = {"inputs": [_image(WHITE)]}
    for path in (
        "/v2/models/nope/outputs",
        "/v2/models/999/outputs",
        f"/v2/models/{spec['id']}/versions/999/outputs",
        f"/v2/models/{other['id']}/versions/{version['id']}/outputs",  # a version of another model
    ):
        answer = await _outputs(stack, path, body, status=404)
        assert answer["status"]["code"] == 21200, path


async def test_keys(stack: Stack, tiny_models: dict[str, Path]) -> None:
    spec, _ = await _classifier(stack, tiny_models)
    path = f"/v2/models/{spec['id']}/outputs"
    body = {"inputs": [_image(WHITE)]}
    for headers in ({}, {"Authorization": "Key nope"}, {"Authorization": f"Bearer {API_KEY}"}):
        answer = await _outputs(stack, path, body, status=401, headers=headers)
        assert answer["status"]["code"] == 11008
    for headers in ({"Authorization": f"key {API_KEY}"}, stack.headers()):
        assert (await _outputs(stack, path, body, headers=headers))["status"]["code"] == 10000
    # JSON whatever the Content-Type, as `curl -d` sends it.
    response = await stack.client.post(
        path, data=json.dumps(body), headers={**KEY, "Content-Type": "text/plain"}
    )
    assert response.status == 200, await response.text()
    # The Deepomatic surface takes the same header, and keeps its own error shape.
    assert (await stack.client.get("/v0.7/networks/", headers=KEY)).status == 200
    refused = await stack.client.get("/v0.7/networks/", headers={"Authorization": "Key nope"})
    assert refused.status == 401 and (await refused.json())["field"] == "Authorization"


async def test_url_inputs_and_every_path_form(
    stack: Stack, tiny_models: dict[str, Path], image_server: TestServer
) -> None:
    spec, version = await _classifier(stack, tiny_models)
    url = str(image_server.make_url("/white.png"))
    missing = str(image_server.make_url("/nope.png"))
    body = {"inputs": [_image(url), _image(missing)]}
    for path in (
        f"/v2/models/{spec['id']}/versions/{version['id']}/outputs",
        f"/v2/users/me/apps/main/models/{spec['id']}/outputs",
        f"/v2/users/me/apps/main/models/{spec['id']}/versions/{version['id']}/outputs/",
    ):
        answer = await _outputs(stack, path, body)
        found, failed = answer["outputs"]
        assert answer["status"]["code"] == 10010, path
        assert _names(found) == ["bright", "dark"]
        assert found["input"]["data"] == {"image": {"url": url}}
        assert failed["status"]["code"] == 30002 and "404" in failed["status"]["details"]


async def test_inputs_unfinished_at_the_deadline_say_try_again(
    stack: Stack, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, _ = await _classifier(stack, tiny_models)
    release = asyncio.Event()

    async def slow(_request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(body=png((255, 255, 255)), content_type="image/png")

    app = web.Application()
    app.router.add_get("/slow.png", slow)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    monkeypatch.setattr(clarifai, "DEADLINE_S", 0.2)
    try:
        body = {"inputs": [_image(str(server.make_url("/slow.png")))]}
        answer = await _outputs(stack, f"/v2/models/{spec['id']}/outputs", body, status=503)
        assert answer["status"]["code"] == 10020
        assert answer["outputs"][0]["status"]["code"] == 10030
    finally:
        release.set()
        await server.close()


async def test_official_client_json_channel(
    stack: Stack, tiny_models: dict[str, Path], image_server: TestServer
) -> None:
    pytest.importorskip("clarifai_grpc")
    from clarifai_grpc.channel.clarifai_channel import ClarifaiChannel
    from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
    from clarifai_grpc.grpc.api.status import status_code_pb2

    spec, _ = await _classifier(stack, tiny_models)
    channel = ClarifaiChannel.get_json_channel(base_url=str(stack.client.make_url("")).rstrip("/"))
    stub = service_pb2_grpc.V2Stub(channel)
    url = str(image_server.make_url("/white.png"))
    black = png((0, 0, 0))
    inputs = [
        resources_pb2.Input(
            data=resources_pb2.Data(
                image=resources_pb2.Image(url=url) if i % 2 else resources_pb2.Image(base64=black)
            )
        )
        for i in range(128)
    ]
    config = resources_pb2.OutputConfig(max_concepts=1, min_value=0.5)
    request = service_pb2.PostModelOutputsRequest(
        model_id=str(spec["id"]),
        inputs=inputs,
        model=resources_pb2.Model(output_info=resources_pb2.OutputInfo(output_config=config)),
    )
    # The client is synchronous (requests): in a thread, so that the in-process server keeps serving.
    response = await asyncio.to_thread(
        stub.PostModelOutputs, request, metadata=(("authorization", f"Key {API_KEY}"),)
    )
    assert response.status.code == status_code_pb2.SUCCESS, response.status
    assert len(response.outputs) == 128
    names = [[concept.name for concept in output.data.concepts] for output in response.outputs]
    assert names == [["bright"] if i % 2 else ["dark"] for i in range(128)]
    assert all(output.created_at.seconds > 0 for output in response.outputs)

    refused = await asyncio.to_thread(
        stub.PostModelOutputs, request, metadata=(("authorization", "Key nope"),)
    )
    assert refused.status.code == status_code_pb2.CONN_KEY_INVALID
