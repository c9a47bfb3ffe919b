"""`Idempotency-Key`: a retry gets the first submission's task; after a 503 the key is free again."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest

from broker.port import BrokerUnavailable
from tests.conftest import OTHER_KEY, Stack
from tests.images import png


async def _network(stack: Stack, tiny_models: dict[str, Path]) -> str:
    network = await stack.upload_network(tiny_models["brightness"], target_size="16x16")
    await stack.wait_task(network["task_id"])
    return f"/v0.7/networks/{network['id']}/inference"


def _body(shade: int) -> dict[str, Any]:
    return {"inputs": [{"image": {"source": base64.b64encode(png((shade, shade, shade))).decode()}}]}


async def _submit(stack: Stack, path: str, body: dict[str, Any], key: str, api_key: str | None = None) -> Any:
    headers = {**stack.headers(*([api_key] if api_key else [])), "Idempotency-Key": key}
    return await stack.client.post(path, json=body, headers=headers)


async def test_a_retried_submission_gets_the_same_task(stack: Stack, tiny_models: dict[str, Path]) -> None:
    path = await _network(stack, tiny_models)
    answers = await asyncio.gather(*(_submit(stack, path, _body(255), "retry-1") for _ in range(5)))
    assert {response.status for response in answers} == {200}
    task_ids = {(await response.json())["task_id"] for response in answers}
    assert len(task_ids) == 1
    assert (await stack.wait_task(task_ids.pop()))["status"] == "success"
    other = await _submit(stack, path, _body(255), "retry-2")
    assert (await other.json())["task_id"] not in task_ids


async def test_a_key_reused_for_another_request_is_a_conflict(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    path = await _network(stack, tiny_models)
    assert (await _submit(stack, path, _body(255), "k")).status == 200
    response = await _submit(stack, path, _body(0), "k")
    assert response.status == 409
    assert (await response.json())["field"] == "Idempotency-Key"


async def test_keys_belong_to_their_tenant(stack: Stack, tiny_models: dict[str, Path]) -> None:
    path = await _network(stack, tiny_models)
    mine = await (await _submit(stack, path, _body(255), "shared")).json()
    response = await _submit(stack, path, _body(255), "shared", api_key=OTHER_KEY)
    assert response.status == 404  # the network is not theirs: nothing leaks through the key either
    again = await (await _submit(stack, path, _body(255), "shared")).json()
    assert again == mine


async def test_the_retry_after_a_503_runs(
    stack: Stack, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = await _network(stack, tiny_models)
    publish = stack.broker.publish

    async def down(*args: Any, **kwargs: Any) -> None:
        raise BrokerUnavailable("broker stopped for the test")

    monkeypatch.setattr(stack.broker, "publish", down)
    failed = await _submit(stack, path, _body(255), "after-503")
    assert failed.status == 503 and failed.headers["Retry-After"]
    monkeypatch.setattr(stack.broker, "publish", publish)
    retried = await _submit(stack, path, _body(255), "after-503")
    assert retried.status == 200
    assert (await stack.wait_task((await retried.json())["task_id"]))["status"] == "success"


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\tinside"])
async def test_bad_keys_are_refused(stack: Stack, tiny_models: dict[str, Path], key: str) -> None:
    path = await _network(stack, tiny_models)
    response = await _submit(stack, path, _body(255), key)
    assert response.status == 400
    assert (await response.json())["field"] == "Idempotency-Key"
