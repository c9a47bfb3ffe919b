"""Access: API key self-service, per-key rate limits, and full job queues answered instead of growing."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from broker.amqp import AmqpBroker
from broker.memory import MemoryBroker
from broker.port import Broker, QueueFull
from broker.topology import INFERENCE, INFERENCE_BATCH
from gateway.app import create_app
from gateway.auth import ensure_api_key
from gateway.context import GatewayConfig
from schemas.documents import KEYS_OWNER, NetworkDoc, TaskStatus
from schemas.networks import Framework, NetworkStatus, Preprocessing
from store.api_keys import hash_key
from store.factory import open_store
from store.port import API_KEYS, NETWORKS, TASKS, Store
from tests.broker.conftest import vhost_url
from tests.conftest import API_KEY, OTHER_KEY, Stack
from tests.images import png
from tests.integration.test_recognition_flow import _classifier_version

__all__ = ["vhost_url"]  # a fixture: a fresh virtual host, so a small queue limit meets no other test

KEYS = "/v0.7/accounts/me/keys/"


async def _json(response: Any, status: int) -> Any:
    assert response.status == status, await response.text()
    return None if status == 204 else await response.json()


# key management


async def test_a_created_key_is_shown_once_and_works_at_once(stack: Stack) -> None:
    created = await _json(await stack.client.post(KEYS, json={"name": "ci"}, headers=stack.headers()), 201)
    key = created["key"]
    assert key.startswith("pk_") and len(key) >= 3 + 32  # 24 random bytes, URL-safe: 192 bits
    assert created["prefix"] == key[:8] and created["last_four"] == key[-4:] and created["name"] == "ci"
    assert created["id"].startswith("key_") and hash_key(key) not in created["id"]
    assert created["created"].endswith("Z")

    me = await _json(await stack.client.get("/v0.7/accounts/me/", headers=stack.headers(key)), 200)
    mine = await _json(await stack.client.get("/v0.7/accounts/me/", headers=stack.headers()), 200)
    assert me["id"] == mine["id"]  # the new key acts for the same tenant

    listed = await _json(await stack.client.get(KEYS, headers=stack.headers()), 200)
    assert listed["count"] == 2
    text = str(listed)
    assert key not in text and hash_key(key) not in text and hash_key(API_KEY) not in text
    entry = next(item for item in listed["results"] if item["id"] == created["id"])
    assert entry == {k: v for k, v in created.items() if k != "key"}
    # A key the operator chose (bootstrap, tests) shows no characters: it may be short.
    bootstrap = next(item for item in listed["results"] if item["id"] != created["id"])
    assert (bootstrap["prefix"], bootstrap["last_four"]) == ("", "")


async def test_a_revoked_key_stops_at_once_and_the_last_key_cannot_be_revoked(stack: Stack) -> None:
    created = await _json(await stack.client.post(KEYS, headers=stack.headers()), 201)
    assert created["name"] == ""
    ids = [
        item["id"]
        for item in (await _json(await stack.client.get(KEYS, headers=stack.headers()), 200))["results"]
    ]
    old_id = next(i for i in ids if i != created["id"])

    # Used (so cached) then revoked with the other key: refused on the very next request.
    await _json(await stack.client.get("/v0.7/accounts/me/", headers=stack.headers()), 200)
    await _json(await stack.client.delete(f"{KEYS}{old_id}/", headers=stack.headers(created["key"])), 204)
    refused = await _json(await stack.client.get("/v0.7/accounts/me/", headers=stack.headers()), 401)
    assert refused["code"] == "not_authenticated"

    last = await stack.client.delete(f"{KEYS}{created['id']}/", headers=stack.headers(created["key"]))
    body = await _json(last, 409)
    assert body["field"] == "key_id" and "last API key" in body["error"]
    await _json(await stack.client.get("/v0.7/accounts/me/", headers=stack.headers(created["key"])), 200)

    gone = await _json(
        await stack.client.delete(f"{KEYS}{old_id}/", headers=stack.headers(created["key"])), 404
    )
    assert gone["code"] == "not_found" and gone["field"] == "key_id"


async def test_another_tenants_key_is_unknown(stack: Stack) -> None:
    theirs = await _json(await stack.client.get(KEYS, headers=stack.headers(OTHER_KEY)), 200)
    their_id = theirs["results"][0]["id"]
    mine = await _json(await stack.client.get(KEYS, headers=stack.headers()), 200)
    assert their_id not in str(mine)

    foreign = await stack.client.delete(f"{KEYS}{their_id}/", headers=stack.headers())
    unknown = await stack.client.delete(f"{KEYS}key_000000000000000000000000/", headers=stack.headers())
    foreign_body, unknown_body = await _json(foreign, 404), await _json(unknown, 404)
    assert foreign_body["error"].replace(their_id, "?") == unknown_body["error"].replace(
        "key_000000000000000000000000", "?"
    )
    await _json(await stack.client.get("/v0.7/accounts/me/", headers=stack.headers(OTHER_KEY)), 200)


async def test_key_requests_are_validated_and_documented(stack: Stack) -> None:
    bad = await _json(await stack.client.post(KEYS, json={"name": 5}, headers=stack.headers()), 400)
    assert bad["field"] == "name"
    extra = await _json(await stack.client.post(KEYS, json={"key": "mine"}, headers=stack.headers()), 400)
    assert extra["field"] == "key"
    paths = (await _json(await stack.client.get("/openapi.json"), 200))["paths"]
    assert set(paths[KEYS]) == {"get", "post"} and set(paths[KEYS + "{id}/"]) == {"delete"}


async def test_keys_stored_before_prefixes_existed_are_listed_and_revocable(stack: Stack) -> None:
    tenant = await ensure_api_key(stack.store, API_KEY)
    legacy = "legacy-key-0123456789abcdef"
    await stack.store.insert(
        API_KEYS, API_KEYS.model(id=hash_key(legacy), owner=KEYS_OWNER, tenant=tenant, name="old")
    )
    listed = await _json(await stack.client.get(KEYS, headers=stack.headers(legacy)), 200)
    old = next(item for item in listed["results"] if item["name"] == "old")
    assert (old["prefix"], old["last_four"]) == ("", "")
    await _json(await stack.client.delete(f"{KEYS}{old['id']}/", headers=stack.headers()), 204)
    await _json(await stack.client.get("/v0.7/accounts/me/", headers=stack.headers(legacy)), 401)


# rate limits and full queues: a gateway without consumers, so queued jobs stay queued


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    store: Store
    broker: Broker


@pytest.fixture
async def gateway(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    options: dict[str, Any] = getattr(request, "param", {})
    store = await open_store("", tmp_path)
    max_length = options.get("max_length", 100_000)
    broker: Broker
    if options.get("amqp"):
        broker = AmqpBroker(request.getfixturevalue("vhost_url"), max_length=max_length)
    else:
        broker = MemoryBroker(max_length=max_length)
    await broker.start()
    config = GatewayConfig(
        rate_limit_per_s=options.get("per_s", 0.0), rate_limit_burst=options.get("burst", 0)
    )
    client = TestClient(TestServer(create_app(config, store=store, broker=broker)))
    await client.start_server()
    await ensure_api_key(store, API_KEY)
    await ensure_api_key(store, OTHER_KEY)
    try:
        yield Gateway(client, store, broker)
    finally:
        await client.close()
        await broker.close()
        await store.close()


LIMITED = {"per_s": 0.2, "burst": 10}  # refills one request in 5 s: a burst sees (almost) no refill


@pytest.mark.parametrize("gateway", [LIMITED], indirect=True)
async def test_a_burst_of_twice_the_limit_admits_the_limit(gateway: Gateway) -> None:
    headers = {"X-API-KEY": API_KEY}
    statuses = []
    retry_after = []
    for _ in range(20):
        response = await gateway.client.get("/v0.7/accounts/me/", headers=headers)
        statuses.append(response.status)
        if response.status == 429:
            body = await response.json()
            assert body["code"] == "throttled" and "rate limit" in body["error"]
            retry_after.append(int(response.headers["Retry-After"]))
    admitted = statuses.count(200)
    assert 10 <= admitted <= 11 and statuses.count(429) == 20 - admitted, statuses
    assert statuses[:10] == [200] * 10
    assert all(1 <= seconds <= 5 for seconds in retry_after), retry_after

    # Another key has its own bucket; health, metrics and documents are never limited.
    other = await gateway.client.get("/v0.7/accounts/me/", headers={"X-API-KEY": OTHER_KEY})
    assert other.status == 200
    for path in ("/healthz", "/metrics", "/openapi.json"):
        assert (await gateway.client.get(path, headers=headers)).status == 200


@pytest.mark.parametrize("gateway", [{"per_s": 0.2, "burst": 1}], indirect=True)
async def test_the_clarifai_surface_is_throttled_in_its_own_shape(gateway: Gateway) -> None:
    headers = {"Authorization": f"Key {API_KEY}"}
    body = {"inputs": [{"data": {"image": {"base64": base64.b64encode(png((1, 2, 3))).decode()}}}]}
    await gateway.client.post("/v2/models/nope/outputs", json=body, headers=headers)
    response = await gateway.client.post("/v2/models/nope/outputs", json=body, headers=headers)
    answer = await _json(response, 429)
    assert answer["status"]["code"] == 11005 and int(response.headers["Retry-After"]) >= 1


async def test_no_rate_limit_by_default(gateway: Gateway) -> None:
    for _ in range(30):
        assert (await gateway.client.get("/v0.7/accounts/me/", headers={"X-API-KEY": API_KEY})).status == 200


async def _ready_network(store: Store, owner: str) -> str:
    preprocessing = Preprocessing.model_validate(
        {"inputs": [{"tensor_name": "image", "image": {"target_size": "8x8"}}]}
    )
    await store.insert(
        NETWORKS,
        NetworkDoc(
            id="500",
            owner=owner,
            name="n",
            framework=Framework.TENSORFLOW,
            preprocessing=preprocessing,
            status=NetworkStatus.READY,
            task_id="0",
        ),
    )
    return "500"


@pytest.mark.parametrize(
    "gateway",
    [
        pytest.param({"max_length": 3}, id="memory"),
        pytest.param({"max_length": 3, "amqp": True}, id="amqp", marks=pytest.mark.rabbitmq),
    ],
    indirect=True,
)
async def test_a_full_queue_is_answered_503_and_ends_the_task(gateway: Gateway) -> None:
    owner = await ensure_api_key(gateway.store, API_KEY)
    network = await _ready_network(gateway.store, owner)
    body = {"inputs": [{"image": {"source": base64.b64encode(png((9, 9, 9))).decode()}}]}
    headers = {"X-API-KEY": API_KEY, "Idempotency-Key": "once"}
    path = f"/v0.7/networks/{network}/inference"
    accepted = 0
    for _ in range(5):  # RabbitMQ may take one job past the limit of 3
        response = await gateway.client.post(path, json=body, headers=headers)
        if response.status != 200:
            break
        accepted += 1
        headers["Idempotency-Key"] = f"key{accepted}"
    assert 3 <= accepted <= 4
    refused = await _json(response, 503)
    assert refused["code"] == "queue_full" and refused["field"] is None
    assert int(response.headers["Retry-After"]) >= 1
    assert await gateway.broker.queue_depth(INFERENCE.name) == accepted
    # The task it recorded did not stay pending.
    page = await gateway.store.find(TASKS, owners=[owner])
    assert [task.status for task in page.items] == [TaskStatus.PENDING] * accepted + [TaskStatus.ERROR]
    assert "queue is full" in (page.items[-1].error or "")

    # Once there is room again, the same idempotency key submits anew (the refusal did not claim it).
    await gateway.broker.consume(INFERENCE.name, _ack_all, prefetch=10)
    async with asyncio.timeout(30):
        while (again := await gateway.client.post(path, json=body, headers=headers)).status != 200:
            assert again.status == 503
            await asyncio.sleep(0.05)
    assert (await again.json())["task_id"] != page.items[-1].id


async def _ack_all(delivery: Any) -> None:
    await delivery.ack()


async def test_a_batch_job_waits_out_a_full_inference_queue(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    """The batch consumer meets its full queue as backpressure: every source is predicted, none fails."""
    spec, _ = await _classifier_version(stack, tiny_models)
    headers = stack.headers()
    project = await _json(await stack.client.post("/v1/projects", json={"name": "p"}, headers=headers), 201)
    source_ids = []
    for _ in range(45):
        form = FormData()
        form.add_field("file", png((250, 250, 250)), filename="white.png", content_type="image/png")
        response = await stack.client.post(
            f"/v1/projects/{project['id']}/sources", data=form, headers=headers
        )
        source_ids.append((await _json(response, 201))["id"])
    # Each inference job is refused twice, as by a full queue, before it is taken.
    publish, refused = stack.broker.publish, Counter[str]()

    async def counting(queue: str, body: bytes, **kwargs: Any) -> None:
        if queue == INFERENCE_BATCH.name and refused[kwargs["message_id"]] < 2:
            refused[kwargs["message_id"]] += 1
            raise QueueFull("full, as a test")
        await publish(queue, body, **kwargs)

    stack.broker.publish = counting  # type: ignore[method-assign]
    body = {
        "projectIdentifier": project["id"],
        "modelIdentifier": spec["id"],
        "sourceIds": source_ids,
        "outputLayerIdentifier": "out",
        "groupName": "g",
    }
    job = await _json(await stack.client.post("/v1/infer/batch", json=body, headers=headers), 200)
    task = await stack.wait_task(job["inferenceJobId"])
    assert task["status"] == "success", task
    progress = await _json(
        await stack.client.get(f"/v1/infer/batch/{job['inferenceJobId']}", headers=headers), 200
    )
    assert progress["status"] == "Finished" and progress["progress"] == {"done": 45, "failed": 0, "total": 45}
    assert len(refused) == 45 and set(refused.values()) == {2}
