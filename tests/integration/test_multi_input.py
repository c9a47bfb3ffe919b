"""Several inputs in one Deepomatic inference: one task, one result per input in order, through the real
gateway and consumer in one process (SQLite store, in-process broker)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from consumers.inputs import ParentRef
from consumers.results import ResultWriter
from gateway.app import create_app
from gateway.context import GatewayConfig
from schemas.documents import TaskDoc, TaskKind, TaskOutcome, TaskStatus, subtask_id
from store.port import TASKS
from tests.conftest import OTHER_KEY, Stack
from tests.images import png
from tests.integration.test_recognition_flow import _classifier_version, _deployed
from tests.integration.test_webhooks import _get

WHITE = base64.b64encode(png((255, 255, 255))).decode()
BLACK = base64.b64encode(png((0, 0, 0))).decode()
TRUNCATED = base64.b64encode(png((1, 2, 3))[:40]).decode()


def _inputs(*sources: str) -> list[dict[str, Any]]:
    return [{"image": {"source": source}} for source in sources]


async def _submit(stack: Stack, path: str, body: dict[str, Any] | FormData) -> str:
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, FormData) else {"json": body}
    response = await stack.client.post(path, headers=stack.headers(), **kwargs)
    assert response.status == 200, await response.text()
    task_id: str = (await response.json())["task_id"]
    return task_id


def _labels(task: dict[str, Any]) -> list[str]:
    return [
        result["outputs"][0]["labels"]["predicted"][0]["label_name"] if "outputs" in result else "error"
        for result in task["data"]["results"]
    ]


async def test_each_input_gets_its_result_in_input_order(stack: Stack, tiny_models: dict[str, Path]) -> None:
    _, version = await _classifier_version(stack, tiny_models)
    # More inputs than one consumer batch (8), in an order a sort by anything but position would break.
    colours = [WHITE if n % 3 else BLACK for n in range(21)]
    task_id = await _submit(
        stack, f"/v0.7/recognition/versions/{version['id']}/inference", {"inputs": _inputs(*colours)}
    )
    task = await stack.wait_task(task_id)
    assert task["status"] == "success" and task["error"] is None, task
    assert _labels(task) == ["bright" if source == WHITE else "dark" for source in colours]
    assert "outputs" not in task["data"] and "tensors" not in task["data"]
    assert task["subtasks"] == [f"{task_id}.{n}" for n in range(21)]
    # A subtask is a task of its own, with what its input alone would have answered.
    third = await stack.wait_task(task["subtasks"][3])
    assert third["data"] == task["data"]["results"][3] and third["subtasks"] is None


async def test_multipart_inputs_as_the_official_client_flattens_them(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    spec, _ = await _classifier_version(stack, tiny_models)
    form = FormData()
    form.add_field("show_discarded", "True")
    for index, colour in enumerate([(0, 0, 0), (255, 255, 255), (0, 0, 0)]):
        name = f"inputs[{index}]image.source"
        form.add_field(name, png(colour), filename=name)
    task = await stack.wait_task(
        await _submit(stack, f"/v0.7/recognition/specs/{spec['id']}/inference", form)
    )
    assert _labels(task) == ["dark", "bright", "dark"]
    # Request-wide options apply to every input.
    assert all(result["outputs"][0]["labels"]["discarded"] for result in task["data"]["results"])


async def test_an_undecodable_input_carries_its_error_and_the_others_succeed(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    _, version = await _classifier_version(stack, tiny_models)
    path = f"/v0.7/recognition/versions/{version['id']}/inference"
    task = await stack.wait_task(await _submit(stack, path, {"inputs": _inputs(WHITE, TRUNCATED, BLACK)}))
    assert task["status"] == "success", task
    assert _labels(task) == ["bright", "error", "dark"]
    failed = await stack.wait_task(task["subtasks"][1])
    assert failed["status"] == "error" and task["data"]["results"][1] == {"error": failed["error"]}

    task = await stack.wait_task(await _submit(stack, path, {"inputs": _inputs(TRUNCATED, TRUNCATED)}))
    assert task["status"] == "error"
    reason = task["data"]["results"][0]["error"]
    assert task["error"].startswith("all 2 inputs failed") and reason in task["error"]
    assert task["data"]["results"] == [{"error": reason}] * 2


async def test_network_inference_stacks_the_tensors_of_all_inputs(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    network = await _deployed(stack, tiny_models["brightness"], target_size="16x16")
    path = f"/v0.7/networks/{network['id']}/inference"
    body = {"inputs": _inputs(WHITE, BLACK, WHITE), "output_layers": ["mean"]}
    task = await stack.wait_task(await _submit(stack, path, body))
    [mean] = task["data"]["tensors"]
    assert (mean["name"], mean["shape"]) == ("mean", [3, 1])
    assert mean["data"] == pytest.approx([1.0, 0.0, 1.0])
    assert [result["tensors"][0]["data"] for result in task["data"]["results"]] == [[m] for m in mean["data"]]

    # A failed input leaves nothing to stack: each input's tensors or error are in results.
    body = {"inputs": _inputs(WHITE, TRUNCATED), "output_layers": ["mean"]}
    task = await stack.wait_task(await _submit(stack, path, body))
    assert "tensors" not in task["data"]
    assert "error" in task["data"]["results"][1] and task["data"]["results"][0]["tensors"]


async def test_more_inputs_than_the_limit_is_a_400_naming_inputs_and_the_limit(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    _, version = await _classifier_version(stack, tiny_models)
    path = f"/v0.7/recognition/versions/{version['id']}/inference"
    response = await stack.client.post(
        path, json={"inputs": _inputs(*[WHITE] * 129)}, headers=stack.headers()
    )
    assert response.status == 400
    body = await response.json()
    assert body["field"] == "inputs" and "at most 128 inputs" in body["error"] and "129" in body["error"]
    # Refused before anything was recorded or queued.
    assert await stack.store.sweep(TASKS, where={"kind": "inference"}) == []

    task = await stack.wait_task(await _submit(stack, path, {"inputs": _inputs(*[WHITE, BLACK] * 64)}))
    assert _labels(task) == ["bright", "dark"] * 64


async def test_the_limit_is_the_configured_one(stack: Stack, tiny_models: dict[str, Path]) -> None:
    _, version = await _classifier_version(stack, tiny_models)
    app = create_app(GatewayConfig(max_inputs=2), store=stack.store, broker=stack.broker)
    async with TestClient(TestServer(app)) as client:
        path = f"/v0.7/recognition/versions/{version['id']}/inference"
        response = await client.post(
            path, json={"inputs": _inputs(WHITE, WHITE, WHITE)}, headers=stack.headers()
        )
        assert response.status == 400
        assert "at most 2 inputs per request, got 3" in (await response.json())["error"]
        response = await client.post(path, json={"inputs": _inputs(WHITE, BLACK)}, headers=stack.headers())
        assert response.status == 200
        task_id = (await response.json())["task_id"]
    task = await stack.wait_task(task_id)
    assert _labels(task) == ["bright", "dark"]


async def test_a_bad_source_is_refused_naming_its_input(stack: Stack, tiny_models: dict[str, Path]) -> None:
    _, version = await _classifier_version(stack, tiny_models)
    path = f"/v0.7/recognition/versions/{version['id']}/inference"
    response = await stack.client.post(
        path, json={"inputs": _inputs(WHITE, WHITE, "not an image!")}, headers=stack.headers()
    )
    assert response.status == 400
    assert (await response.json())["field"] == "inputs[2].image.source"


async def test_the_callback_gets_the_gathered_task_once(
    stack: Stack, tiny_models: dict[str, Path], receiver_factory: Any
) -> None:
    receiver = await receiver_factory()
    _, version = await _classifier_version(stack, tiny_models)
    secret = (await _get(stack, "/v0.7/accounts/me/"))["webhook_secret"]
    body = {"inputs": _inputs(WHITE, BLACK, WHITE, BLACK), "callback_url": receiver.url}
    task_id = await _submit(stack, f"/v0.7/recognition/versions/{version['id']}/inference", body)
    payload = (await receiver.next()).verified(secret)
    assert (payload["type"], payload["data"]["id"]) == ("task.succeeded", task_id)
    assert payload["data"]["data"] == (await stack.wait_task(task_id))["data"]
    # Subtasks are not announced: after a later single-input task's webhook, nothing else came.
    single = await _submit(
        stack,
        f"/v0.7/recognition/versions/{version['id']}/inference",
        {"inputs": _inputs(WHITE), "callback_url": receiver.url},
    )
    assert (await receiver.next()).verified(secret)["data"]["id"] == single
    assert receiver.requests.empty()


async def test_tenants_cannot_read_each_others_subtasks(stack: Stack, tiny_models: dict[str, Path]) -> None:
    _, version = await _classifier_version(stack, tiny_models)
    body = {"inputs": _inputs(WHITE, BLACK)}
    task = await stack.wait_task(
        await _submit(stack, f"/v0.7/recognition/versions/{version['id']}/inference", body)
    )
    response = await stack.client.get(f"/v0.7/tasks/{task['subtasks'][0]}/", headers=stack.headers(OTHER_KEY))
    assert response.status == 404


# The result writer alone, driven with outcomes as consumers would write them, including redeliveries.


@pytest.fixture
async def writer(stack: Stack) -> AsyncIterator[ResultWriter]:
    writer = ResultWriter(stack.store, stack.broker)
    loop = asyncio.create_task(writer.batcher.run())
    yield writer
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)


async def _family(stack: Stack, parent_id: str, count: int) -> None:
    parent = TaskDoc(id=parent_id, owner="alice", kind=TaskKind.INFERENCE, inputs=count)
    subtasks = [
        TaskDoc(id=subtask_id(parent_id, n), owner="alice", kind=TaskKind.INFERENCE, parent_id=parent_id)
        for n in range(count)
    ]
    await stack.store.insert_many(TASKS, [parent, *subtasks])


def _counting(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The task ids of each of the store's finish_tasks calls, as they happen."""
    calls: list[list[str]] = []
    original: Callable[[Sequence[TaskOutcome]], Awaitable[int]] = stack.store.finish_tasks

    async def counted(outcomes: Sequence[TaskOutcome]) -> int:
        calls.append([outcome.task_id for outcome in outcomes])
        return await original(outcomes)

    monkeypatch.setattr(stack.store, "finish_tasks", counted)
    return calls


async def test_redelivered_inputs_neither_duplicate_nor_replace_a_result(
    stack: Stack, writer: ResultWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _family(stack, "900", 4)
    parent = ParentRef(task_id="900", owner="alice", count=4)
    calls = _counting(stack, monkeypatch)

    def outcome(index: int, value: int) -> TaskOutcome:
        return TaskOutcome(task_id=subtask_id("900", index), status=TaskStatus.SUCCESS, data={"n": value})

    # Input 2 is delivered twice (a crash between store and ack), with a different result the second time.
    await asyncio.gather(*(writer.write(outcome(n, n), parent=parent) for n in (3, 2, 0)))
    await writer.write(outcome(2, 99), parent=parent)
    assert (await stack.store.get(TASKS, "900", owners=["alice"])).status is TaskStatus.PENDING  # type: ignore[union-attr]
    await writer.write(outcome(1, 1), parent=parent)
    done = await stack.store.get(TASKS, "900", owners=["alice"])
    assert done is not None and done.status is TaskStatus.SUCCESS
    assert done.data == {"results": [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}]}

    # The last input again, after its parent ended: nothing moves, the data stays.
    await writer.write(outcome(1, 77), parent=parent)
    again = await stack.store.get(TASKS, "900", owners=["alice"])
    assert again == done
    # The parent's write was tried when its last input ended and when that input came again; it moved once.
    assert [ids for ids in calls if "900" in ids] == [["900"], ["900"]]


async def test_one_writer_batch_of_many_inputs_costs_two_writes(
    stack: Stack, writer: ResultWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _family(stack, "901", 64)
    parent = ParentRef(task_id="901", owner="alice", count=64)
    calls = _counting(stack, monkeypatch)
    outcomes = [
        TaskOutcome(task_id=subtask_id("901", n), status=TaskStatus.SUCCESS, data={"n": n}) for n in range(64)
    ]
    # Submitted together, as a consumer batch's jobs finish: the writer batches them into one write.
    await asyncio.gather(*(writer.write(one, parent=parent) for one in outcomes))
    assert [len(ids) for ids in calls] == [64, 1] and calls[1] == ["901"]
    done = await stack.store.get(TASKS, "901", owners=["alice"])
    assert done is not None and [r["n"] for r in done.data["results"]] == list(range(64))  # type: ignore[index]
