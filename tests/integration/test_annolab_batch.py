"""Annolab batch jobs through the real gateway and consumer: the seed's sample script, pacing, errors."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestServer

from broker.topology import BATCH, INFERENCE_BATCH
from gateway.auth import ensure_api_key
from schemas.annolab import CHUNK_SIZE, CHUNKS_AHEAD, BatchChunk
from schemas.messages import InferenceJob
from store.port import BATCH_JOBS, PREDICTIONS
from tests.conftest import API_KEY, OTHER_KEY, Stack
from tests.images import png
from tests.integration.test_recognition_flow import _classifier_version

# The sample script as the vendor's page (seed 002_9f892924015ea425) prints it, copied verbatim.
SEED_SAMPLE = Path(__file__).with_name("annolab_seed_sample.txt")
SEED_BASE_URL = "https://api.annolab.ai"
SAMPLE_KEY = "XXXXXXX-XXXXXXX-XXXXXXX-XXXXXXX"  # the script's own literal key, registered for the test

# The seed's sample script, indented again (the seed's text lost its indentation); otherwise verbatim, as
# `test_sample_script_is_the_seeds` checks. Only the base URL is substituted before running it.
SAMPLE_SCRIPT = """\
import requests
import time
ANNO_LAB_API_KEY = 'XXXXXXX-XXXXXXX-XXXXXXX-XXXXXXX'
inferenceBody = {
'groupName': 'Company Name',
'projectIdentifier': 'My Project',
'sourceIds': [4024, 5853],
'modelIdentifier': 'Staple + Classify Documents',
'outputLayerIdentifier': 'Gold Set'
}
headers = {
'Authorization': 'Api-Key '+ANNO_LAB_API_KEY,
}
url = 'https://api.annolab.ai/v1/infer/batch'
response = requests.post(url, headers=headers, json=inferenceBody)
print(response.json())
get_url = 'https://api.annolab.ai/v1/infer/batch/'+response.json()['inferenceJobId']
maximum_timeout_seconds = 1800
time_taken = 0
inference_is_finished = False
start_time = time.time()
while not inference_is_finished and time_taken < maximum_timeout_seconds:
    status_response = requests.get(get_url, headers=headers, json=inferenceBody).json()
    if status_response['status'] in ['Finished', 'Errored']:
        print("Inference Finished")
        print(status_response)
        inference_is_finished = True
    time_taken = time.time() - start_time
"""


def _headers(key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Api-Key {key}"}


async def _post(stack: Stack, path: str, *, status: int = 201, key: str = API_KEY, **kwargs: Any) -> Any:
    response = await stack.client.post(path, headers=_headers(key), **kwargs)
    assert response.status == status, await response.text()
    return await response.json()


async def _get(stack: Stack, path: str, *, status: int = 200, key: str = API_KEY) -> Any:
    response = await stack.client.get(path, headers=_headers(key))
    assert response.status == status, await response.text()
    return await response.json()


async def _upload(stack: Stack, project_id: int, image: bytes) -> int:
    form = FormData()
    form.add_field("file", image, filename="image.png", content_type="image/png")
    source: dict[str, Any] = await _post(stack, f"/v1/projects/{project_id}/sources", data=form)
    return int(source["id"])


@pytest.fixture
async def images() -> AsyncIterator[TestServer]:
    """A loopback image server (the only outbound address the stack allows) for URL sources."""

    async def white(_request: web.Request) -> web.Response:
        return web.Response(body=png((255, 255, 255)), content_type="image/png")

    app = web.Application()
    app.router.add_get("/white.png", white)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


def test_sample_script_is_the_seeds() -> None:
    seed = SEED_SAMPLE.read_text()
    assert [line.strip() for line in SAMPLE_SCRIPT.splitlines()] == seed.strip().splitlines()


async def test_sample_script_runs_unchanged(stack: Stack, tiny_models: dict[str, Path]) -> None:
    tenant = await ensure_api_key(stack.store, API_KEY)
    await ensure_api_key(stack.store, SAMPLE_KEY, owner=tenant)
    spec, _ = await _classifier_version(stack, tiny_models)
    response = await stack.client.patch(
        f"/v0.7/recognition/specs/{spec['id']}/",
        json={"name": "Staple + Classify Documents"},
        headers=stack.headers(),
    )
    assert response.status == 200, await response.text()
    project = await _post(stack, "/v1/projects", json={"name": "My Project"})
    # Source ids come from a store counter: advance it so that the script's literal ids exist.
    sources: dict[int, bytes] = {4024: png((255, 255, 255)), 5853: png((0, 0, 0))}
    for source_id, image in sources.items():
        while int(await stack.store.next_id("sources")) < source_id - 1:
            pass
        assert await _upload(stack, project["id"], image) == source_id

    script = SAMPLE_SCRIPT.replace(SEED_BASE_URL, str(stack.client.make_url("")).rstrip("/"))
    namespace: dict[str, Any] = {}
    printed = io.StringIO()

    def run() -> None:
        with contextlib.redirect_stdout(printed):
            exec(script, namespace)  # the seed's own script, run as a user would

    await asyncio.to_thread(run)

    created = namespace["response"].json()
    assert created["status"] == "Queued" and created["inferenceJobId"].isdigit()
    assert created["projectName"] == "My Project" and created["outputLayerName"] == "Gold Set"
    assert created["sourceIds"] == [4024, 5853]
    final = namespace["status_response"]
    assert final["status"] == "Finished", final
    assert final["progress"] == {"done": 2, "failed": 0, "total": 2}
    assert "Inference Finished" in printed.getvalue()

    for source_id, label in ((4024, "bright"), (5853, "dark")):
        page = await _get(stack, f"/v1/projects/{project['id']}/sources/{source_id}/predictions")
        assert page["count"] == 1
        prediction = page["results"][0]
        assert prediction["ok"] and prediction["inferenceJobId"] == created["inferenceJobId"]
        predicted = prediction["result"]["outputs"][0]["labels"]["predicted"]
        assert [p["label_name"] for p in predicted] == [label]
    layer = await _get(stack, f"/v1/projects/{project['id']}/layers/Gold Set/predictions?limit=1")
    assert layer["count"] == 2 and len(layer["results"]) == 1 and layer["next"]
    # The job is a task too: its end is where webhooks and long polls see it.
    task = await stack.wait_task(created["inferenceJobId"])
    assert task["status"] == "success" and task["data"]["done"] == 2


async def test_a_large_job_is_dispatched_in_chunks(
    stack: Stack, tiny_models: dict[str, Path], images: TestServer
) -> None:
    spec, _ = await _classifier_version(stack, tiny_models)
    project = await _post(stack, "/v1/projects", json={"name": "Large"})
    white = png((255, 255, 255))
    source_ids = [await _upload(stack, project["id"], white) for _ in range(4 * CHUNK_SIZE + 7)]
    by_url = await _post(
        stack, f"/v1/projects/{project['id']}/sources", json={"url": str(images.make_url("/white.png"))}
    )
    missing = await _post(
        stack, f"/v1/projects/{project['id']}/sources", json={"url": str(images.make_url("/missing.png"))}
    )
    source_ids += [by_url["id"], missing["id"]]
    listed = await _get(stack, f"/v1/projects/{project['id']}/sources?offset=10&limit=5")
    assert listed["count"] == len(source_ids)
    assert [s["id"] for s in listed["results"]] == source_ids[10:15]

    # Watch what the stack publishes: no chunk before its turn, never more outstanding than the window.
    job_ids: list[str] = []
    statuses: set[str] = set()
    dispatched = 0
    most_outstanding = 0
    publish = stack.broker.publish

    owner = await ensure_api_key(stack.store, API_KEY)

    async def completed() -> int:
        where = {"job_id": job_ids[0]}
        return (await stack.store.find(PREDICTIONS, owners=[owner], where=where, limit=0)).count

    async def watching(queue: str, body: bytes, **kwargs: Any) -> None:
        nonlocal dispatched, most_outstanding
        if queue == BATCH.name:
            chunk = BatchChunk.model_validate_json(body).chunk
            assert await completed() >= (chunk - CHUNKS_AHEAD + 1) * CHUNK_SIZE
        elif queue == INFERENCE_BATCH.name and InferenceJob.model_validate_json(body).task_id.startswith(
            f"{job_ids[0]}."
        ):
            dispatched += 1
            most_outstanding = max(most_outstanding, dispatched - await completed())
            doc = await stack.store.get(BATCH_JOBS, job_ids[0], owners=[owner])
            assert doc is not None
            statuses.add(doc.status.value)
        await publish(queue, body, **kwargs)

    receiver: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await receiver.put(await request.json())
        return web.Response(status=204)

    hooks_app = web.Application()
    hooks_app.router.add_post("/hook", hook)
    hooks = TestServer(hooks_app, host="127.0.0.1")
    await hooks.start_server()
    stack.broker.publish = watching  # type: ignore[method-assign]
    try:
        body = {
            "groupName": "Company Name",
            "projectIdentifier": "Large",
            "modelIdentifier": spec["id"],
            "sourceIds": source_ids,
            "outputLayerIdentifier": "Predictions",
            "callbackUrl": str(hooks.make_url("/hook")),
        }
        # The job id is set before the gateway publishes, by reading the counter the job will take next.
        job_ids.append(str(int(await stack.store.next_id("tasks")) + 1))
        created = await _post(stack, "/v1/infer/batch", status=200, json=body)
        assert created["inferenceJobId"] == job_ids[0] and created["status"] == "Queued"
        task = await stack.wait_task(job_ids[0])
        delivered = await asyncio.wait_for(receiver.get(), 30)
    finally:
        stack.broker.publish = publish  # type: ignore[method-assign]
        await hooks.close()

    assert task["status"] == "success"
    assert delivered["type"] == "task.succeeded" and delivered["data"]["id"] == job_ids[0]
    total = len(source_ids)
    assert dispatched == total and 0 < most_outstanding <= CHUNK_SIZE * CHUNKS_AHEAD
    assert statuses == {"Running"}
    final = await _get(stack, f"/v1/infer/batch/{job_ids[0]}")
    assert final["status"] == "Finished"
    assert final["progress"] == {"done": total - 1, "failed": 1, "total": total}
    failed = await _get(stack, f"/v1/projects/{project['id']}/sources/{missing['id']}/predictions")
    assert not failed["results"][0]["ok"] and "404" in failed["results"][0]["error"]
    layer = await _get(stack, f"/v1/projects/Large/layers/{created['outputLayerId']}/predictions")
    assert layer["count"] == total


async def test_errors_name_the_field(stack: Stack, tiny_models: dict[str, Path]) -> None:
    spec, version = await _classifier_version(stack, tiny_models)
    project = await _post(stack, "/v1/projects", json={"name": "Mine"})
    other = await _post(stack, "/v1/projects", json={"name": "Other"})
    source = await _upload(stack, project["id"], png((255, 255, 255)))
    foreign = await _upload(stack, other["id"], png((255, 255, 255)))
    base = {
        "groupName": "g",
        "projectIdentifier": "Mine",
        "modelIdentifier": "brightness",
        "sourceIds": [source],
        "outputLayerIdentifier": "Layer",
    }

    async def refused(status: int, field: str, key: str = API_KEY, **changes: Any) -> None:
        body = {k: v for k, v in {**base, **changes}.items() if v is not None}
        error = await _post(stack, "/v1/infer/batch", status=status, key=key, json=body)
        assert error["field"] == field, error

    await refused(404, "projectIdentifier", projectIdentifier="Nope")
    await refused(404, "projectIdentifier", key=OTHER_KEY)  # another tenant's project is unknown
    await refused(404, "modelIdentifier", modelIdentifier="No Such Model")
    await refused(404, "sourceIds", sourceIds=[source, foreign])
    await refused(404, "sourceIds", sourceIds=[999999])
    await refused(400, "sourceIds", sourceIds=[])
    await refused(400, "groupName", groupName=None)
    await refused(404, "outputLayerIdentifier", outputLayerIdentifier=424242)

    # A spec by id or by name, or a version by id; X-API-KEY works as well as Api-Key.
    for model in (spec["id"], "brightness", str(version["id"])):
        response = await stack.client.post(
            "/v1/infer/batch", headers=stack.headers(), json={**base, "modelIdentifier": model}
        )
        assert response.status == 200, await response.text()
        job = await response.json()
        assert (await stack.wait_task(job["inferenceJobId"]))["status"] == "success"
    await _get(stack, f"/v1/infer/batch/{job['inferenceJobId']}", status=404, key=OTHER_KEY)
    unauthenticated = await stack.client.get(f"/v1/infer/batch/{job['inferenceJobId']}")
    assert unauthenticated.status == 401
    wrong = await stack.client.get("/v1/projects", headers=_headers("not-a-key"))
    assert wrong.status == 401 and (await wrong.json())["field"] == "Authorization"

    conflict = await _post(stack, "/v1/projects", status=409, json={"name": "Mine"})
    assert conflict["field"] == "name"
    digits = await _post(stack, "/v1/projects", status=400, json={"name": "123"})
    assert digits["field"] == "name"
    bad_url = await _post(stack, f"/v1/projects/{project['id']}/sources", status=400, json={"url": "ftp://x"})
    assert bad_url["field"] == "url"
    form = FormData()
    form.add_field("file", b"not an image", filename="x.txt")
    not_image = await _post(stack, f"/v1/projects/{project['id']}/sources", status=400, data=form)
    assert not_image["field"] == "file"
    listed = await _get(stack, "/v1/projects")
    assert [p["name"] for p in listed["results"]] == ["Mine", "Other"]
