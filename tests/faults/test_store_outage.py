"""A store outage under a consumer: jobs wait for the store instead of nack-looping to the delivery limit."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.memory import MemoryBroker
from broker.topology import INFERENCE
from consumers import metrics
from consumers.config import ConsumerConfig
from consumers.service import ConsumerService
from gateway.app import create_app
from gateway.auth import ensure_api_key
from gateway.context import GatewayConfig
from store.factory import open_store
from store.port import Store, StoreUnavailable
from tests.conftest import API_KEY, Stack
from tests.images import png

JOBS = 12


class FlakyStore:
    """Delegates to a real store; while `down`, every call fails the way an unreachable database does."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.down = False
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._store, name)
        if not callable(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.refused += 1
                raise StoreUnavailable("sqlite: database is unreachable (test outage)")
            return await target(*args, **kwargs)

        return call


async def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def outage_stack(tmp_path: Path) -> AsyncIterator[tuple[Stack, FlakyStore]]:
    store = await open_store("", tmp_path)
    flaky = FlakyStore(store)
    broker = MemoryBroker()
    await broker.start()
    config = ConsumerConfig(cache_dir=tmp_path / "cache", max_batch_delay_s=0.002)
    service = ConsumerService(flaky, broker, config)  # type: ignore[arg-type]  # a proxy, not a subclass
    await service.start()
    client = TestClient(TestServer(create_app(GatewayConfig(), store=store, broker=broker)))
    await client.start_server()
    await ensure_api_key(store, API_KEY)
    try:
        yield Stack(client=client, store=store, broker=broker), flaky
    finally:
        await client.close()
        await service.stop(grace_s=5)
        await broker.close()
        await store.close()


async def test_jobs_wait_out_a_store_outage_without_using_their_delivery_attempts(
    outage_stack: tuple[Stack, FlakyStore], tiny_models: dict[str, Path]
) -> None:
    stack, flaky = outage_stack
    network = await stack.upload_network(tiny_models["brightness"], target_size="16x16")
    ready = await stack.wait_task(network["task_id"])
    assert ready["status"] == "success", ready

    flaky.down = True
    task_ids = []
    for index in range(JOBS):
        response = await stack.client.post(
            f"/v0.7/networks/{network['id']}/inference/",
            json={"inputs": [{"image": {"source": base64.b64encode(png((index * 20, 0, 0))).decode()}}]},
            headers=stack.headers(),
        )
        assert response.status == 200, await response.text()
        task_ids.append((await response.json())["task_id"])

    # Long enough for a nack loop to exhaust INFERENCE's delivery limit many times over.
    await _until(lambda: metrics.JOBS_WAITING_FOR_STORE._value.get() >= 1)
    await asyncio.sleep(1.5)
    assert flaky.refused > 0
    assert await stack.broker.dead_letters(INFERENCE.name) == []
    for task_id in task_ids:
        task = await stack.client.get(f"/v0.7/tasks/{task_id}/", headers=stack.headers())
        assert (await task.json())["status"] == "pending"

    flaky.down = False
    finished = [await stack.wait_task(task_id) for task_id in task_ids]
    assert [task["status"] for task in finished] == ["success"] * JOBS
    assert await stack.broker.dead_letters(INFERENCE.name) == []
    assert metrics.JOBS_WAITING_FOR_STORE._value.get() == 0
