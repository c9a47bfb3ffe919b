"""Both inference queues, interactive and batch, are visible on /readyz and /metrics, each by its name.

A gateway without consumers, over the in-process broker: what is published stays queued, so the depths are
exact.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from broker.memory import MemoryBroker
from broker.port import BrokerUnavailable
from broker.topology import INFERENCE, INFERENCE_BATCH
from gateway.app import create_app
from gateway.context import GatewayConfig
from store.factory import open_store


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], MemoryBroker]]:
    store = await open_store("", tmp_path)
    broker = MemoryBroker()
    await broker.start()
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(GatewayConfig(), store=store, broker=broker))
    )
    await client.start_server()
    try:
        yield client, broker
    finally:
        await client.close()
        await broker.close()
        await store.close()


async def _depths(client: TestClient[Any, Any]) -> dict[str, float]:
    response = await client.get("/metrics")
    assert response.status == 200, await response.text()
    return {
        sample.labels["queue"]: sample.value
        for family in text_string_to_metric_families(await response.text())
        for sample in family.samples
        if sample.name == "percept_queue_depth"
    }


async def _fill(broker: MemoryBroker, queue: str, count: int) -> None:
    for index in range(count):
        await broker.publish(queue, b"{}", message_id=f"{queue}.{index}")


async def test_every_inference_queue_is_reported_by_name(
    gateway: tuple[TestClient[Any, Any], MemoryBroker],
) -> None:
    client, broker = gateway
    await _fill(broker, INFERENCE.name, 2)
    await _fill(broker, INFERENCE_BATCH.name, 5)

    response = await client.get("/readyz")
    assert response.status == 200, await response.text()
    ready = await response.json()
    assert ready["queue_depths"] == {INFERENCE.name: 2, INFERENCE_BATCH.name: 5}
    assert ready["inference_queue_depth"] == 2  # the interactive queue's, as before

    depths = await _depths(client)
    assert depths[INFERENCE.name] == 2 and depths[INFERENCE_BATCH.name] == 5


async def test_an_unreadable_queue_is_unready_and_not_a_number(
    gateway: tuple[TestClient[Any, Any], MemoryBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, broker = gateway
    await _fill(broker, INFERENCE.name, 1)
    queue_depth = broker.queue_depth

    async def batch_unreadable(queue: str) -> int:
        if queue == INFERENCE_BATCH.name:
            raise BrokerUnavailable("channel closed")
        return await queue_depth(queue)

    monkeypatch.setattr(broker, "queue_depth", batch_unreadable)
    response = await client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["problems"] == {"broker": "channel closed"}
    depths = await _depths(client)
    # A stale batch depth would look like a healthy queue: it is NaN, and the interactive one still counts.
    assert depths[INFERENCE.name] == 1 and math.isnan(depths[INFERENCE_BATCH.name])
