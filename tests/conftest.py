"""Shared fixtures: small models, and an in-process Percept (SQLite store, in-process broker, consumer)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from broker.memory import MemoryBroker
from consumers.config import ConsumerConfig
from consumers.service import ConsumerService
from gateway.app import create_app
from gateway.auth import ensure_api_key
from gateway.context import GatewayConfig
from store.factory import open_store
from store.port import Store
from tests.models import (
    build_box_detector,
    build_brightness_classifier,
    build_crashing_classifier,
    build_slow_brightness_classifier,
    build_wedging_classifier,
    network_parts,
)
from tests.rabbitmq import SERVER, RabbitMQ

API_KEY = "test-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
WEBHOOK_RETRY_SCHEDULE = (0.05, 0.1)  # three attempts in well under a second
WEBHOOK_TIMEOUT_S = 1.0  # short, so a test can outwait it; loopback receivers answer in milliseconds


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "brightness": build_brightness_classifier(root / "brightness"),
        "boxes": build_box_detector(root / "boxes"),
        "slow": build_slow_brightness_classifier(root / "slow"),
        "wedging": build_wedging_classifier(root / "wedging"),
        "crashing": build_crashing_classifier(root / "crashing"),
    }


@dataclass
class Stack:
    client: TestClient[Any, Any]
    store: Store
    broker: MemoryBroker

    def headers(self, key: str = API_KEY) -> dict[str, str]:
        return {"X-API-KEY": key}

    async def wait_task(self, task_id: str, *, key: str = API_KEY) -> dict[str, Any]:
        """Poll like the official client does, bounded."""
        async with asyncio.timeout(60):
            while True:
                response = await self.client.get(f"/v0.7/tasks/{task_id}/", headers=self.headers(key))
                assert response.status == 200, await response.text()
                task: dict[str, Any] = await response.json()
                if task["status"] != "pending":
                    return task
                await asyncio.sleep(0.02)

    async def upload_network(
        self, folder: Path, *, target_size: str, name: str = "net", extra: dict[str, str] | None = None
    ) -> dict[str, Any]:
        form = FormData()
        fields = {
            "name": name,
            "framework": "tensorflow-1.x",
            "preprocessing.inputs[0]tensor_name": "image",
            "preprocessing.inputs[0]image.dimension_order": "NHWC",
            "preprocessing.inputs[0]image.target_size": target_size,
            "preprocessing.inputs[0]image.resize_type": "SQUASH",
            "preprocessing.inputs[0]image.color_channels": "RGB",
            "preprocessing.inputs[0]image.pixel_scaling": "1.0",
            "preprocessing.inputs[0]image.data_type": "FLOAT32",
            "preprocessing.batched_output": "True",
            **(extra or {}),
        }
        for key, value in fields.items():
            form.add_field(key, value)
        for part, data in network_parts(folder).items():
            form.add_field(part, data, filename=part)
        response = await self.client.post("/v0.7/networks/", data=form, headers=self.headers())
        assert response.status == 201, await response.text()
        network: dict[str, Any] = await response.json()
        return network


@contextlib.asynccontextmanager
async def embedded_stack(tmp_path: Path, **consumer: Any) -> AsyncIterator[Stack]:
    """The gateway, a consumer and the in-process broker over a SQLite store in `tmp_path`, both test keys
    issued; `consumer` overrides the consumer's settings."""
    store = await open_store("", tmp_path)
    broker = MemoryBroker()
    await broker.start()
    config = ConsumerConfig(
        **{
            "cache_dir": tmp_path / "cache",
            "max_batch_delay_s": 0.002,
            "outbound_allow": ("127.0.0.1/32",),
            "webhook_retry_schedule": WEBHOOK_RETRY_SCHEDULE,
            "webhook_timeout_s": WEBHOOK_TIMEOUT_S,
            **consumer,
        }
    )
    service = ConsumerService(store, broker, config)
    await service.start()
    gateway = GatewayConfig(max_request_bytes=8 * 1024 * 1024)
    client = TestClient(TestServer(create_app(gateway, store=store, broker=broker)))
    await client.start_server()
    await ensure_api_key(store, API_KEY)
    await ensure_api_key(store, OTHER_KEY)
    try:
        yield Stack(client=client, store=store, broker=broker)
    finally:
        await client.close()
        await service.stop(grace_s=5)
        await broker.close()
        await store.close()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with embedded_stack(tmp_path) as running:
        yield running


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ | None]:
    """The node this session started, or None when PERCEPT_TEST_AMQP_URL names a broker we do not own.

    Without either, skip on a laptop and fail in CI (env CI set): integration tests must not vanish there.
    """
    if os.environ.get("PERCEPT_TEST_AMQP_URL"):
        yield None
        return
    if not SERVER.exists():
        reason = f"no RabbitMQ: set PERCEPT_TEST_AMQP_URL or install rabbitmq-server ({SERVER})"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    node = RabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def rabbitmq_url(rabbitmq: RabbitMQ | None) -> str:
    return rabbitmq.url if rabbitmq is not None else os.environ["PERCEPT_TEST_AMQP_URL"]
