"""Long polls (`?wait=SECONDS`) on the in-process stack: woken by task events, or ended by the deadline."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from consumers.results import ResultWriter
from gateway.auth import ensure_api_key
from gateway.context import WAITERS
from gateway.waiters import TaskWait
from schemas.documents import TaskDoc, TaskKind, TaskOutcome, TaskStatus
from store.port import TASKS
from tests.conftest import API_KEY, OTHER_KEY, Stack


@dataclass
class Tasks:
    """Pending tasks made directly in the store, finished on demand the way consumers finish them."""

    stack: Stack
    writer: ResultWriter

    async def pending(self) -> str:
        owner = await ensure_api_key(self.stack.store, API_KEY)
        task_id = await self.stack.store.next_id("tasks")
        await self.stack.store.insert(TASKS, TaskDoc(id=task_id, owner=owner, kind=TaskKind.INFERENCE))
        return task_id

    async def finish(self, task_id: str) -> None:
        await self.writer.write(TaskOutcome(task_id=task_id, status=TaskStatus.SUCCESS, data={"n": 1}))


@pytest.fixture
async def tasks(stack: Stack) -> AsyncIterator[Tasks]:
    writer = ResultWriter(stack.store, stack.broker)
    loop = asyncio.create_task(writer.batcher.run())
    yield Tasks(stack, writer)
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)


@pytest.fixture
def registered(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set once a long poll has registered its wait: finishing a task after that must wake it."""
    event = asyncio.Event()
    waiters = stack.client.app[WAITERS]
    watch = waiters.watch

    @contextlib.contextmanager
    def observed(task_ids: Collection[str]) -> Iterator[TaskWait]:
        with watch(task_ids) as wait:
            event.set()
            yield wait

    monkeypatch.setattr(waiters, "watch", observed)
    return event


async def get(stack: Stack, path: str) -> tuple[Any, float]:
    """The JSON body and how long the request took."""
    started = time.monotonic()
    response = await stack.client.get(path, headers=stack.headers())
    assert response.status == 200, await response.text()
    return await response.json(), time.monotonic() - started


async def test_a_long_poll_answers_when_the_task_finishes(
    stack: Stack, tasks: Tasks, registered: asyncio.Event
) -> None:
    task_id = await tasks.pending()
    poll = asyncio.create_task(get(stack, f"/v0.7/tasks/{task_id}/?wait=30"))
    await asyncio.wait_for(registered.wait(), 10)
    assert not poll.done()

    await tasks.finish(task_id)

    task, _ = await asyncio.wait_for(poll, 10)  # far less than the 30 s asked for
    assert (task["id"], task["status"], task["data"]) == (task_id, "success", {"n": 1})


async def test_a_long_poll_ends_at_its_deadline_with_the_task_as_it_is(stack: Stack, tasks: Tasks) -> None:
    task_id = await tasks.pending()
    task, elapsed = await get(stack, f"/v0.7/tasks/{task_id}/?wait=0.3")
    assert task["status"] == "pending"
    assert elapsed >= 0.3


async def test_a_finished_task_answers_at_once(stack: Stack, tasks: Tasks) -> None:
    task_id = await tasks.pending()
    await tasks.finish(task_id)
    task, _ = await asyncio.wait_for(get(stack, f"/v0.7/tasks/{task_id}/?wait=30"), 10)
    assert task["status"] == "success"


async def test_the_batch_form_waits_for_every_task(
    stack: Stack, tasks: Tasks, registered: asyncio.Event
) -> None:
    first, second = await tasks.pending(), await tasks.pending()
    path = f"/v0.7/tasks/?task_ids={first}&task_ids={second}&wait="

    # One task finished is not enough: the wait runs out with the other one still pending.
    await tasks.finish(first)
    page, elapsed = await get(stack, path + "0.3")
    assert [task["status"] for task in page["results"]] == ["success", "pending"]
    assert elapsed >= 0.3

    registered.clear()
    poll = asyncio.create_task(get(stack, path + "30"))
    await asyncio.wait_for(registered.wait(), 10)
    await tasks.finish(second)
    page, _ = await asyncio.wait_for(poll, 10)
    assert [(task["id"], task["status"]) for task in page["results"]] == [
        (first, "success"),
        (second, "success"),
    ]


async def test_a_deployment_long_polled_through_the_consumer(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    network = await stack.upload_network(tiny_models["brightness"], target_size="16x16")
    task, _ = await asyncio.wait_for(get(stack, f"/v0.7/tasks/{network['task_id']}/?wait=30"), 25)
    assert task["status"] == "success", task


async def test_unknown_and_foreign_tasks_are_not_waited_for(stack: Stack, tasks: Tasks) -> None:
    foreign = await tasks.pending()
    response = await stack.client.get(f"/v0.7/tasks/{foreign}/?wait=30", headers=stack.headers(OTHER_KEY))
    assert response.status == 404
    done = await tasks.pending()
    await tasks.finish(done)
    # Nothing the caller may see is pending, so the answer comes at once.
    page, _ = await asyncio.wait_for(get(stack, f"/v0.7/tasks/?task_ids={done},999999&wait=30"), 10)
    assert [task["id"] for task in page["results"]] == [done]


@pytest.mark.parametrize("wait", ["soon", "-1", "60.5", "nan", "inf", ""])
async def test_a_bad_wait_is_a_400_naming_it(stack: Stack, wait: str) -> None:
    for path in (f"/v0.7/tasks/1/?wait={wait}", f"/v0.7/tasks/?task_ids=1&wait={wait}"):
        response = await stack.client.get(path, headers=stack.headers())
        assert response.status == 400, await response.text()
        body = await response.json()
        assert body["field"] == "wait"
        assert body["error"]


async def test_shutting_down_answers_long_polls_at_once(
    stack: Stack, tasks: Tasks, registered: asyncio.Event
) -> None:
    task_id = await tasks.pending()
    poll = asyncio.create_task(get(stack, f"/v0.7/tasks/{task_id}/?wait=30"))
    await asyncio.wait_for(registered.wait(), 10)

    await asyncio.wait_for(stack.client.server.close(), 10)

    task, _ = await asyncio.wait_for(poll, 10)
    assert task["status"] == "pending"
