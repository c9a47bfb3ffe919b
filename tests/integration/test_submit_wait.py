"""Inference with `?wait=SECONDS`: one request answers with the finished task, as a submission plus a long
poll would, through the real gateway and consumer in one process."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest

from broker.topology import INFERENCE
from tests.conftest import Stack
from tests.images import png
from tests.integration.test_recognition_flow import _classifier_version

WHITE = base64.b64encode(png((255, 255, 255))).decode()
BLACK = base64.b64encode(png((0, 0, 0))).decode()


def _labels(task: dict[str, Any]) -> list[str]:
    return [p["label_name"] for p in task["data"]["outputs"][0]["labels"]["predicted"]]


async def _post(stack: Stack, path: str, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = await stack.client.post(path, json=body, headers={**stack.headers(), **headers})
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def test_a_submission_that_waits_answers_with_the_finished_task(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    spec, version = await _classifier_version(stack, tiny_models)
    path = f"/v0.7/recognition/versions/{version['id']}/inference?wait=30"
    # In a row: each result comes in well under the wait, so none was announced before its wait was watched.
    for image, label in [(WHITE, "bright"), (BLACK, "dark")] * 5:
        answer = await asyncio.wait_for(_post(stack, path, {"inputs": [{"image": {"source": image}}]}), 10)
        task = answer["task"]
        assert task["id"] == answer["task_id"] and task["status"] == "success", answer
        assert _labels(task) == [label]
        polled = await stack.wait_task(answer["task_id"])
        assert polled == task  # exactly what GET /v0.7/tasks/{id}/ shows

    # The other inference doors take it too; several inputs answer once every one has.
    spec_path = f"/v0.7/recognition/specs/{spec['id']}/inference?wait=30"
    inputs = [{"image": {"source": WHITE}}, {"image": {"source": BLACK}}]
    answer = await asyncio.wait_for(_post(stack, spec_path, {"inputs": inputs}), 10)
    assert answer["task"]["status"] == "success" and answer["task"]["subtasks"], answer


async def test_without_a_wait_the_answer_is_the_task_id_alone(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    _, version = await _classifier_version(stack, tiny_models)
    path = f"/v0.7/recognition/versions/{version['id']}/inference"
    answer = await _post(stack, path, {"inputs": [{"image": {"source": WHITE}}]})
    assert list(answer) == ["task_id"]


async def test_a_retried_submission_that_waits_answers_with_the_first_ones_task(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    _, version = await _classifier_version(stack, tiny_models)
    path = f"/v0.7/recognition/versions/{version['id']}/inference?wait=30"
    body = {"inputs": [{"image": {"source": WHITE}}]}
    first = await _post(stack, path, body, **{"Idempotency-Key": "retry-1"})
    again = await asyncio.wait_for(_post(stack, path, body, **{"Idempotency-Key": "retry-1"}), 10)
    assert again == first and first["task"]["status"] == "success"


@pytest.mark.parametrize("wait", ["soon", "-1", "60.5", "nan", ""])
async def test_a_bad_wait_is_a_400_naming_it_and_nothing_is_queued(
    stack: Stack, tiny_models: dict[str, Path], wait: str
) -> None:
    _, version = await _classifier_version(stack, tiny_models)
    published = []
    publish = stack.broker.publish

    async def watching(queue: str, body: bytes, **kwargs: Any) -> None:
        published.append(queue)
        await publish(queue, body, **kwargs)

    stack.broker.publish = watching  # type: ignore[method-assign]
    try:
        response = await stack.client.post(
            f"/v0.7/recognition/versions/{version['id']}/inference?wait={wait}",
            json={"inputs": [{"image": {"source": WHITE}}]},
            headers=stack.headers(),
        )
    finally:
        stack.broker.publish = publish  # type: ignore[method-assign]
    assert response.status == 400, await response.text()
    assert (await response.json())["field"] == "wait"
    assert INFERENCE.name not in published
