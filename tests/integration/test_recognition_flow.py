"""The Deepomatic flow through the real gateway and consumer, in one process: upload, spec, version, infer."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestServer

from tests.conftest import OTHER_KEY, Stack
from tests.images import png


async def _deployed(stack: Stack, folder: Path, *, target_size: str) -> dict[str, Any]:
    network = await stack.upload_network(folder, target_size=target_size)
    task = await stack.wait_task(network["task_id"])
    assert task["status"] == "success", task
    return network


async def _classifier_version(
    stack: Stack, tiny_models: dict[str, Path], model: str = "brightness"
) -> tuple[dict[str, Any], dict[str, Any]]:
    network = await _deployed(stack, tiny_models[model], target_size="16x16")
    spec_body = {
        "name": "brightness",
        "outputs": [
            {"labels": {"roi": "NONE", "labels": [{"id": 0, "name": "dark"}, {"id": 1, "name": "bright"}]}}
        ],
    }
    response = await stack.client.post("/v0.7/recognition/specs/", json=spec_body, headers=stack.headers())
    assert response.status == 201, await response.text()
    spec = await response.json()
    version_body = {
        "spec_id": spec["id"],
        "network_id": network["id"],
        "post_processings": [
            {"classification": {"output_tensor": "probabilities", "thresholds": [0.5, 0.5]}}
        ],
    }
    response = await stack.client.post(
        "/v0.7/recognition/versions/", json=version_body, headers=stack.headers()
    )
    assert response.status == 201, await response.text()
    return spec, await response.json()


async def _infer(stack: Stack, path: str, body: dict[str, Any] | FormData) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, FormData) else {"json": body}
    response = await stack.client.post(path, headers=stack.headers(), **kwargs)
    assert response.status == 200, await response.text()
    task_id = (await response.json())["task_id"]
    assert isinstance(task_id, str)
    return await stack.wait_task(task_id)


async def test_classification_end_to_end(stack: Stack, tiny_models: dict[str, Path]) -> None:
    spec, version = await _classifier_version(stack, tiny_models)
    response = await stack.client.get(f"/v0.7/recognition/specs/{spec['id']}/", headers=stack.headers())
    assert (await response.json())["current_version_id"] == version["id"]
    assert version["spec_name"] == "brightness" and version["network_name"] == "net"

    white = base64.b64encode(png((255, 255, 255))).decode()
    task = await _infer(
        stack,
        f"/v0.7/recognition/versions/{version['id']}/inference",
        {"inputs": [{"image": {"source": white}}]},
    )
    assert task["status"] == "success", task
    predicted = task["data"]["outputs"][0]["labels"]["predicted"]
    assert [p["label_name"] for p in predicted] == ["bright"]
    assert predicted[0]["score"] > 0.99 and isinstance(predicted[0]["score"], float)
    assert "roi" not in predicted[0]
    assert task["data"]["outputs"][0]["labels"]["discarded"] == []

    # Multipart binary, as the official client sends file objects, with show_discarded as a Python repr.
    form = FormData()
    form.add_field("show_discarded", "True")
    form.add_field("inputs[0]image.source", png((0, 0, 0)), filename="inputs[0]image.source")
    task = await _infer(stack, f"/v0.7/recognition/specs/{spec['id']}/inference", form)
    labels = task["data"]["outputs"][0]["labels"]
    assert [p["label_name"] for p in labels["predicted"]] == ["dark"]
    assert [p["label_name"] for p in labels["discarded"]] == ["bright"]

    data_uri = "data:image/png;base64," + base64.b64encode(png((250, 250, 250))).decode()
    task = await _infer(
        stack,
        f"/v0.7/recognition/versions/{version['id']}/inference",
        {
            "inputs": [
                {"image": {"source": data_uri, "bbox": {"xmin": 0.1, "ymin": 0.1, "xmax": 0.5, "ymax": 0.5}}}
            ]
        },
    )
    assert task["data"]["outputs"][0]["labels"]["predicted"][0]["label_name"] == "bright"


async def test_network_inference_returns_raw_tensors(stack: Stack, tiny_models: dict[str, Path]) -> None:
    network = await _deployed(stack, tiny_models["brightness"], target_size="16x16")
    white = base64.b64encode(png((255, 255, 255))).decode()
    task = await _infer(
        stack,
        f"/v0.7/networks/{network['id']}/inference",
        {"inputs": [{"image": {"source": white}}], "output_layers": ["mean"]},
    )
    tensors = task["data"]["tensors"]
    assert [t["name"] for t in tensors] == ["mean"]
    assert tensors[0]["shape"] == [1]
    assert tensors[0]["data"][0] == pytest.approx(1.0)


async def test_detection_applies_thresholds_and_nms(stack: Stack, tiny_models: dict[str, Path]) -> None:
    network = await _deployed(stack, tiny_models["boxes"], target_size="32x32")
    spec_body = {
        "name": "boxes",
        "outputs": [{"labels": {"roi": "BBOX", "labels": [{"id": 7, "name": "thing"}]}}],
    }
    spec = await (
        await stack.client.post("/v0.7/recognition/specs/", json=spec_body, headers=stack.headers())
    ).json()
    post = {
        "detection": {
            "thresholds": [0.5],
            "nms_threshold": 0.5,
            "direct_output": {"boxes_tensor": "boxes", "scores_tensor": "scores"},
        }
    }
    response = await stack.client.post(
        "/v0.7/recognition/versions/",
        json={"spec_id": spec["id"], "network_id": network["id"], "post_processings": [post]},
        headers=stack.headers(),
    )
    assert response.status == 201, await response.text()
    version = await response.json()
    white = base64.b64encode(png((255, 255, 255), size=(64, 64))).decode()
    task = await _infer(
        stack,
        f"/v0.7/recognition/versions/{version['id']}/inference",
        {"inputs": [{"image": {"source": white}}]},
    )
    predicted = task["data"]["outputs"][0]["labels"]["predicted"]
    assert [p["label_id"] for p in predicted] == [7, 7]
    assert predicted[0]["score"] == pytest.approx(1.0)
    assert predicted[1]["score"] == pytest.approx(0.8)
    assert predicted[0]["roi"]["bbox"] == pytest.approx({"xmin": 0.1, "ymin": 0.1, "xmax": 0.5, "ymax": 0.5})


async def test_url_inputs_are_fetched_by_the_consumer(stack: Stack, tiny_models: dict[str, Path]) -> None:
    _, version = await _classifier_version(stack, tiny_models)

    async def image(_request: web.Request) -> web.Response:
        return web.Response(body=png((255, 255, 255)), content_type="image/png")

    app = web.Application()
    app.router.add_get("/white.png", image)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        path = f"/v0.7/recognition/versions/{version['id']}/inference"
        task = await _infer(
            stack, path, {"inputs": [{"image": {"source": str(server.make_url("/white.png"))}}]}
        )
        assert task["status"] == "success", task
        missing = await _infer(
            stack, path, {"inputs": [{"image": {"source": str(server.make_url("/nope.png"))}}]}
        )
        assert missing["status"] == "error" and "404" in missing["error"]
        # Only 127.0.0.1 is allowed in this stack: other loopback forms are refused before connecting.
        for refused in (
            "http://127.0.0.2:9/x.png",
            "http://[::1]:9/x.png",
            "http://[::ffff:127.0.0.3]:9/x.png",
        ):
            task = await _infer(stack, path, {"inputs": [{"image": {"source": refused}}]})
            assert task["status"] == "error" and "not allowed" in task["error"], task
    finally:
        await server.close()


async def test_undecodable_image_ends_the_task_in_error(stack: Stack, tiny_models: dict[str, Path]) -> None:
    _, version = await _classifier_version(stack, tiny_models)
    truncated = base64.b64encode(png((1, 2, 3))[:40]).decode()
    task = await _infer(
        stack,
        f"/v0.7/recognition/versions/{version['id']}/inference",
        {"inputs": [{"image": {"source": truncated}}]},
    )
    assert task["status"] == "error" and task["error"]


async def test_tenants_do_not_see_each_other(stack: Stack, tiny_models: dict[str, Path]) -> None:
    spec, version = await _classifier_version(stack, tiny_models)
    for path in (f"/v0.7/recognition/specs/{spec['id']}/", f"/v0.7/recognition/versions/{version['id']}/"):
        response = await stack.client.get(path, headers=stack.headers(OTHER_KEY))
        assert response.status == 404
        assert "error" in await response.json()
    listing = await (
        await stack.client.get("/v0.7/recognition/specs/", headers=stack.headers(OTHER_KEY))
    ).json()
    assert listing["count"] == 0


async def test_delete_network_cascades_to_versions(stack: Stack, tiny_models: dict[str, Path]) -> None:
    _, version = await _classifier_version(stack, tiny_models)
    response = await stack.client.delete(f"/v0.7/networks/{version['network_id']}/", headers=stack.headers())
    assert response.status == 204
    response = await stack.client.get(f"/v0.7/recognition/versions/{version['id']}/", headers=stack.headers())
    assert response.status == 404


async def test_task_list_pages_keep_repeated_ids(stack: Stack, tiny_models: dict[str, Path]) -> None:
    _, version = await _classifier_version(stack, tiny_models)
    white = base64.b64encode(png((255, 255, 255))).decode()
    ids = []
    for _ in range(3):
        response = await stack.client.post(
            f"/v0.7/recognition/versions/{version['id']}/inference",
            json={"inputs": [{"image": {"source": white}}]},
            headers=stack.headers(),
        )
        ids.append((await response.json())["task_id"])
    query = "&".join(f"task_ids={task_id}" for task_id in ids)
    page = await (await stack.client.get(f"/v0.7/tasks/?{query}&limit=2", headers=stack.headers())).json()
    assert page["count"] == 3 and [t["id"] for t in page["results"]] == ids[:2]
    assert page["next"].startswith("http") and page["next"].count("task_ids=") == 3
    assert page["prev"] is None and page["previous"] is None


async def test_mean_file_is_subtracted(stack: Stack, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    import io as _io

    import numpy as np

    folder = tmp_path / "with-mean"
    shutil.copytree(tiny_models["brightness"], folder)
    buffer = _io.BytesIO()
    np.save(buffer, np.array([0.5, 0.5, 0.5], dtype=np.float32))
    (folder / "mean.npy").write_bytes(buffer.getvalue())
    network = await stack.upload_network(
        folder, target_size="16x16", extra={"preprocessing.inputs[0]image.mean_file": "mean.npy"}
    )
    assert (await stack.wait_task(network["task_id"]))["status"] == "success"
    white = base64.b64encode(png((255, 255, 255))).decode()
    task = await _infer(
        stack,
        f"/v0.7/networks/{network['id']}/inference",
        {"inputs": [{"image": {"source": white}}], "output_layers": ["mean"]},
    )
    assert task["data"]["tensors"][0]["data"][0] == pytest.approx(0.5)  # 1.0 minus the mean


async def test_network_uploaded_as_one_archive(
    stack: Stack, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    import tarfile

    from aiohttp import FormData

    archive = tmp_path / "brightness.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_models["brightness"], arcname="export/1")
    form = FormData()
    for key, value in {
        "name": "archived",
        "framework": "tensorflow-1.x",
        "preprocessing.inputs[0]tensor_name": "image",
        "preprocessing.inputs[0]image.target_size": "16x16",
        "preprocessing.inputs[0]image.pixel_scaling": "1.0",
    }.items():
        form.add_field(key, value)
    form.add_field(
        "model.tar.gz", archive.read_bytes(), filename="model.tar.gz", content_type="application/gzip"
    )
    response = await stack.client.post("/v0.7/networks/", data=form, headers=stack.headers())
    assert response.status == 201, await response.text()
    assert (await stack.wait_task((await response.json())["task_id"]))["status"] == "success"


async def test_network_resize_feeds_each_image_at_its_own_size(stack: Stack, tmp_path: Path) -> None:
    from tests.models import build_any_size_classifier

    folder = build_any_size_classifier(tmp_path / "any-size")
    network = await stack.upload_network(
        folder, target_size="32", extra={"preprocessing.inputs[0]image.resize_type": "NETWORK"}
    )
    assert (await stack.wait_task(network["task_id"]))["status"] == "success"
    path = f"/v0.7/networks/{network['id']}/inference"
    sizes = []
    for size in ((64, 32), (30, 60)):
        body = {"inputs": [{"image": {"source": base64.b64encode(png((255, 255, 255), size=size)).decode()}}]}
        task = await _infer(stack, path, {**body, "output_layers": ["size"]})
        sizes.append(task["data"]["tensors"][0]["data"])
    # The larger side becomes 32, the other keeps the aspect ratio: (height, width) as the network saw them.
    assert sizes == [[16.0, 32.0], [32.0, 16.0]]
