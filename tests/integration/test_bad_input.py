"""Every malformed request gets a 4xx JSON error naming the field and the reason."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest

from gateway.context import CONFIG
from tests.conftest import Stack
from tests.images import png


async def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert body["error"]
    return body


async def _spec(stack: Stack, labels: int = 2) -> dict[str, Any]:
    outputs = [{"labels": {"labels": [{"id": i, "name": f"l{i}"} for i in range(labels)]}}]
    response = await stack.client.post(
        "/v0.7/recognition/specs/", json={"name": "s", "outputs": outputs}, headers=stack.headers()
    )
    body: dict[str, Any] = await response.json()
    return body


async def test_missing_and_wrong_keys_are_401(stack: Stack) -> None:
    body = await _error(await stack.client.get("/v0.7/networks/"), 401)
    assert body["field"] == "X-API-KEY"
    await _error(await stack.client.get("/v0.7/networks/", headers={"X-API-KEY": "nope"}), 401)


async def test_unknown_ids_and_routes_are_404(stack: Stack) -> None:
    for path in (
        "/v0.7/networks/999/",
        "/v0.7/recognition/specs/999/",
        "/v0.7/recognition/versions/abc/",
        "/v0.7/tasks/12345/",
        "/v0.7/recognition/public/nope/",
        "/v0.7/nothing/",
    ):
        await _error(await stack.client.get(path, headers=stack.headers()), 404)


async def test_unsupported_content_type_is_415(stack: Stack) -> None:
    response = await stack.client.post(
        "/v0.7/recognition/specs/", data="name=x", headers={**stack.headers(), "Content-Type": "text/plain"}
    )
    await _error(response, 415)


async def test_malformed_json_and_wrong_types(stack: Stack) -> None:
    response = await stack.client.post(
        "/v0.7/recognition/specs/", data="{", headers={**stack.headers(), "Content-Type": "application/json"}
    )
    await _error(response, 400)
    response = await stack.client.post(
        "/v0.7/recognition/specs/", json={"name": "x", "outputs": "no"}, headers=stack.headers()
    )
    body = await _error(response, 400)
    assert body["field"] == "outputs"
    response = await stack.client.post(
        "/v0.7/recognition/specs/", json={"name": "x", "outputs": [], "bogus": 1}, headers=stack.headers()
    )
    body = await _error(response, 400)
    assert "outputs" in body["error"] and "bogus" in body["error"]


async def test_version_thresholds_must_match_labels(stack: Stack, tiny_models: dict[str, Path]) -> None:
    network = await stack.upload_network(tiny_models["brightness"], target_size="16x16")
    await stack.wait_task(network["task_id"])
    spec = await _spec(stack, labels=2)
    body = {
        "spec_id": spec["id"],
        "network_id": network["id"],
        "post_processings": [{"classification": {"output_tensor": "probabilities", "thresholds": [0.5]}}],
    }
    error = await _error(
        await stack.client.post("/v0.7/recognition/versions/", json=body, headers=stack.headers()), 400
    )
    assert error["field"] == "post_processings[0].classification.thresholds"
    body["post_processings"] = [{"classification": {"output_tensor": "nope", "thresholds": [0.5, 0.5]}}]
    error = await _error(
        await stack.client.post("/v0.7/recognition/versions/", json=body, headers=stack.headers()), 400
    )
    assert error["field"] == "post_processings[0].classification.output_tensor"
    assert "probabilities" in error["error"]
    body["post_processings"] = []
    await _error(
        await stack.client.post("/v0.7/recognition/versions/", json=body, headers=stack.headers()), 400
    )
    body["spec_id"] = 4242
    error = await _error(
        await stack.client.post("/v0.7/recognition/versions/", json=body, headers=stack.headers()), 400
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"inputs": []}, "inputs"),
        ({}, "inputs"),
        ({"inputs": [{"image": {"source": "not base64 !!"}}]}, "inputs[0].image.source"),
        (
            {"inputs": [{"image": {"source": base64.b64encode(b"plain text, not an image").decode()}}]},
            "inputs[0].image.source",
        ),
        ({"inputs": [{"image": {"source": ""}}]}, "inputs[0].image.source"),
        (
            {
                "inputs": [
                    {"image": {"source": "x", "bbox": {"xmin": 0.5, "ymin": 0, "xmax": 0.2, "ymax": 1}}}
                ]
            },
            "inputs[0].image.bbox",
        ),
        ({"inputs": [{"image": {"source": "x"}}], "max_predictions": "many"}, "max_predictions"),
    ],
)
async def test_bad_inference_inputs(
    stack: Stack, tiny_models: dict[str, Path], body: dict[str, Any], field: str
) -> None:
    network = await stack.upload_network(tiny_models["brightness"], target_size="16x16")
    await stack.wait_task(network["task_id"])
    response = await stack.client.post(
        f"/v0.7/networks/{network['id']}/inference", json=body, headers=stack.headers()
    )
    error = await _error(response, 400)
    assert error["field"] == field, error


async def test_network_upload_needs_a_graph_and_valid_preprocessing(stack: Stack) -> None:
    from aiohttp import FormData

    form = FormData()
    form.add_field("name", "n")
    form.add_field("framework", "tensorflow-1.x")
    form.add_field("preprocessing.inputs[0]tensor_name", "image")
    form.add_field("preprocessing.inputs[0]image.target_size", "224x")
    form.add_field("variables.index", b"x", filename="variables.index")
    error = await _error(await stack.client.post("/v0.7/networks/", data=form, headers=stack.headers()), 400)
    assert error["field"] == "preprocessing.inputs[0].image.target_size"


async def test_broken_network_fails_its_deployment_task(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"not a protobuf")
    network = await stack.upload_network(folder, target_size="16x16")
    task = await stack.wait_task(network["task_id"])
    assert task["status"] == "error" and task["error"]
    response = await stack.client.post(
        f"/v0.7/networks/{network['id']}/inference",
        json={"inputs": [{"image": {"source": base64.b64encode(png((0, 0, 0))).decode()}}]},
        headers=stack.headers(),
    )
    error = await _error(response, 400)
    assert "deployment" in error["error"]


async def test_wrong_input_tensor_name_fails_deployment(stack: Stack, tiny_models: dict[str, Path]) -> None:
    network = await stack.upload_network(
        tiny_models["brightness"], target_size="16x16", extra={"preprocessing.inputs[0]tensor_name": "pixels"}
    )
    task = await stack.wait_task(network["task_id"])
    assert task["status"] == "error" and "pixels" in task["error"]


async def test_oversized_multipart_is_413_and_wrong_method_405(stack: Stack) -> None:
    from aiohttp import FormData

    limit = stack.client.app[CONFIG].max_request_bytes  # type: ignore[index]
    form = FormData()
    big = io.BytesIO(b"\xff\xd8\xff" + b"0" * (limit + 1))
    form.add_field("inputs[0]image.source", big, filename="big.jpg", content_type="image/jpeg")
    response = await stack.client.post("/v0.7/recognition/specs/", data=form, headers=stack.headers())
    error = await _error(response, 413)
    assert error["field"] == "body"
    error = await _error(await stack.client.delete("/v0.7/tasks/", headers=stack.headers()), 405)
    assert error["field"] == "method"
