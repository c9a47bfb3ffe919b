"""Webhooks through the real gateway and consumer, to real loopback receivers that verify signatures with
the reference `standardwebhooks` library."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks import Webhook

from tests.conftest import OTHER_KEY, WEBHOOK_RETRY_SCHEDULE, Stack
from tests.images import png

WAIT = 30.0  # seconds; bound on every wait below


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]

    def verified(self, secret: str) -> dict[str, Any]:
        payload: dict[str, Any] = Webhook(secret).verify(self.body, self.headers)
        return payload


@dataclass
class Receiver:
    """Answers each request with the next status of `statuses` (the last one repeats)."""

    statuses: list[int] = field(default_factory=lambda: [200])
    hold: asyncio.Event | None = None  # set: answer; unset: keep the request waiting
    requests: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)
    in_flight: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        try:
            await self.requests.put(Received(await request.read(), dict(request.headers)))
            if self.hold is not None:
                await self.hold.wait()
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            return web.Response(status=status)
        finally:
            self.in_flight -= 1

    async def next(self) -> Received:
        return await asyncio.wait_for(self.requests.get(), WAIT)


async def serve(receiver: Receiver) -> TestServer:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    receiver.url = str(server.make_url("/hook"))
    return server


@pytest.fixture
async def receiver_factory() -> AsyncIterator[Any]:
    """`await receiver_factory(**options)` starts a receiver; all stop at the end, held requests released."""
    servers: list[tuple[Receiver, TestServer]] = []

    async def make(**options: Any) -> Receiver:
        receiver = Receiver(**options)
        servers.append((receiver, await serve(receiver)))
        return receiver

    yield make
    for receiver, server in servers:
        if receiver.hold is not None:
            receiver.hold.set()
        await server.close()


async def _get(stack: Stack, path: str, key: str | None = None) -> dict[str, Any]:
    response = await stack.client.get(path, headers=stack.headers(*(key,) if key else ()))
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def _attempts(stack: Stack, path: str, count: int) -> list[dict[str, Any]]:
    """The attempts listed at `path` once there are `count`; bounded, like the official client's polling."""
    async with asyncio.timeout(WAIT):
        while True:
            results: list[dict[str, Any]] = (await _get(stack, path))["results"]
            if len(results) >= count:
                return results
            await asyncio.sleep(0.02)


async def _network(stack: Stack, tiny_models: dict[str, Path]) -> dict[str, Any]:
    network = await stack.upload_network(tiny_models["brightness"], target_size="16x16")
    assert (await stack.wait_task(network["task_id"]))["status"] == "success"
    return network


async def _infer(stack: Stack, network_id: int, image: bytes | str, **extra: Any) -> str:
    """`image`: bytes sent inline, or a URL the consumer fetches."""
    source = image if isinstance(image, str) else base64.b64encode(image).decode()
    body = {"inputs": [{"image": {"source": source}}], **extra}
    response = await stack.client.post(
        f"/v0.7/networks/{network_id}/inference", json=body, headers=stack.headers()
    )
    assert response.status == 200, await response.text()
    task_id: str = (await response.json())["task_id"]
    return task_id


async def _endpoint(stack: Stack, **body: Any) -> dict[str, Any]:
    response = await stack.client.post("/v0.7/webhooks/", json=body, headers=stack.headers())
    assert response.status == 201, await response.text()
    endpoint: dict[str, Any] = await response.json()
    return endpoint


async def test_callback_url_gets_task_succeeded_signed_with_the_account_secret(
    stack: Stack, tiny_models: dict[str, Path], receiver_factory: Any
) -> None:
    receiver = await receiver_factory()
    network = await _network(stack, tiny_models)
    secret = (await _get(stack, "/v0.7/accounts/me/"))["webhook_secret"]
    assert secret.startswith("whsec_")

    task_id = await _infer(stack, network["id"], png((255, 255, 255)), callback_url=receiver.url)

    received = await receiver.next()
    payload = received.verified(secret)
    assert payload["type"] == "task.succeeded"
    assert (payload["data"]["id"], payload["data"]["status"]) == (task_id, "success")
    assert payload["data"]["data"] == (await stack.wait_task(task_id))["data"]
    assert received.headers["webhook-id"] == f"msg_task{task_id}_callback"
    [attempt] = await _attempts(stack, f"/v0.7/webhooks/deliveries/?task_id={task_id}", 1)
    assert (attempt["result"], attempt["status_code"], attempt["endpoint_id"]) == ("delivered", 200, None)
    # Another tenant neither sees the attempt nor shares the secret.
    other = await _get(stack, f"/v0.7/webhooks/deliveries/?task_id={task_id}", OTHER_KEY)
    assert other["count"] == 0
    assert (await _get(stack, "/v0.7/accounts/me/", OTHER_KEY))["webhook_secret"] != secret


async def test_a_registered_endpoint_gets_the_events_it_filters_for(
    stack: Stack, tiny_models: dict[str, Path], receiver_factory: Any
) -> None:
    receiver = await receiver_factory()
    endpoint = await _endpoint(stack, url=receiver.url, events=["network.deployed", "task.failed"])
    assert endpoint["secret"].startswith("whsec_") and endpoint["enabled"] is True

    network = await _network(stack, tiny_models)
    deployed = (await receiver.next()).verified(endpoint["secret"])
    assert deployed["type"] == "network.deployed"
    assert deployed["data"]["data"]["network_id"] == network["id"]

    succeeded = await _infer(stack, network["id"], png((0, 0, 0)))
    # The consumer refuses to fetch from 127.0.0.2, so the task fails.
    failed = await _infer(stack, network["id"], "http://127.0.0.2:9/image.png")
    assert (await stack.wait_task(failed))["status"] == "error"
    payload = (await receiver.next()).verified(endpoint["secret"])
    assert (payload["type"], payload["data"]["id"]) == ("task.failed", failed)

    attempts = await _attempts(stack, f"/v0.7/webhooks/{endpoint['id']}/deliveries/", 2)
    assert {a["event"] for a in attempts} == {"network.deployed", "task.failed"}
    assert all(a["task_id"] != succeeded for a in attempts)


async def test_a_failing_receiver_is_retried_on_the_schedule_with_one_webhook_id(
    stack: Stack, receiver_factory: Any, tiny_models: dict[str, Path]
) -> None:
    receiver = await receiver_factory(statuses=[500])
    network = await _network(stack, tiny_models)
    endpoint = await _endpoint(stack, url=receiver.url, events=["task.succeeded"])

    task_id = await _infer(stack, network["id"], png((9, 9, 9)))
    tries = len(WEBHOOK_RETRY_SCHEDULE) + 1
    received = [await receiver.next() for _ in range(tries)]
    assert len({r.headers["webhook-id"] for r in received}) == 1
    for one in received:
        one.verified(endpoint["secret"])  # each attempt is signed afresh, with its own timestamp

    attempts = await _attempts(stack, f"/v0.7/webhooks/{endpoint['id']}/deliveries/", tries)
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["result"] for a in attempts] == ["retrying", "retrying", "failed"]
    assert {(a["status_code"], a["error"], a["task_id"]) for a in attempts} == {(500, "HTTP 500", task_id)}
    for attempt, scheduled in zip(attempts, WEBHOOK_RETRY_SCHEDULE, strict=False):
        # ±20 % jitter, stored rounded to the millisecond.
        assert scheduled * 0.8 - 0.0005 <= attempt["next_attempt_s"] <= scheduled * 1.2 + 0.0005
    assert attempts[-1]["next_attempt_s"] is None


async def test_410_disables_the_endpoint_until_it_is_enabled_again(
    stack: Stack, receiver_factory: Any, tiny_models: dict[str, Path]
) -> None:
    receiver = await receiver_factory(statuses=[410])
    endpoint = await _endpoint(stack, url=receiver.url, events=["network.deployed"])
    await _network(stack, tiny_models)
    await receiver.next()

    [attempt] = await _attempts(stack, f"/v0.7/webhooks/{endpoint['id']}/deliveries/", 1)
    assert (attempt["result"], attempt["status_code"]) == ("gone", 410)
    disabled = await _get(stack, f"/v0.7/webhooks/{endpoint['id']}/")
    assert disabled["enabled"] is False and "410" in disabled["disabled_reason"]

    response = await stack.client.patch(
        f"/v0.7/webhooks/{endpoint['id']}/", json={"enabled": True}, headers=stack.headers()
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["disabled_reason"] is None


async def test_a_slow_receiver_does_not_delay_inference_results(
    stack: Stack, receiver_factory: Any, tiny_models: dict[str, Path]
) -> None:
    slow = await receiver_factory(hold=asyncio.Event())
    network = await _network(stack, tiny_models)

    first = await _infer(stack, network["id"], png((200, 200, 200)), callback_url=slow.url)
    assert (await stack.wait_task(first))["status"] == "success"
    await slow.next()  # the delivery is now stuck in the receiver
    second = await _infer(stack, network["id"], png((10, 10, 10)))
    assert (await stack.wait_task(second))["status"] == "success"
    assert slow.in_flight == 1

    [attempt] = await _attempts(stack, f"/v0.7/webhooks/deliveries/?task_id={first}", 1)
    assert attempt["result"] == "retrying" and attempt["status_code"] is None
    assert attempt["error"].startswith("no answer within")


async def test_a_callback_url_to_a_refused_address_is_recorded_as_refused(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    network = await _network(stack, tiny_models)
    body = {"inputs": [{"image": {"source": "aGk="}}], "callback_url": "file:///etc/passwd"}
    response = await stack.client.post(
        f"/v0.7/networks/{network['id']}/inference", json=body, headers=stack.headers()
    )
    assert (response.status, (await response.json())["field"]) == (400, "callback_url")
    # 127.0.0.2 is loopback, outside the test consumer's allowance of 127.0.0.1/32.
    task_id = await _infer(stack, network["id"], png((1, 2, 3)), callback_url="http://127.0.0.2:9/hook")
    [attempt] = await _attempts(stack, f"/v0.7/webhooks/deliveries/?task_id={task_id}", 1)
    assert (attempt["result"], attempt["status_code"]) == ("refused", None)
    assert attempt["error"].startswith("refused:")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "url"),
        ({"url": "ftp://example.com/hook"}, "url"),
        ({"url": "https://example.com/hook", "events": ["task.exploded"]}, "events[0]"),
        ({"url": "https://example.com/hook", "events": []}, "events"),
        ({"url": "https://example.com/hook", "secret": "mine"}, "secret"),
    ],
)
async def test_endpoint_creation_errors_name_the_field(
    stack: Stack, body: dict[str, Any], field: str
) -> None:
    response = await stack.client.post("/v0.7/webhooks/", json=body, headers=stack.headers())
    assert response.status == 400, await response.text()
    assert (await response.json())["field"] == field


async def test_endpoints_crud_and_tenant_isolation(stack: Stack) -> None:
    created = await _endpoint(stack, url="https://example.com/a", description="first")
    assert created["events"] == ["task.succeeded", "task.failed", "network.deployed"]
    path = f"/v0.7/webhooks/{created['id']}/"

    response = await stack.client.patch(
        path, json={"url": "https://example.com/b", "events": ["task.failed"]}, headers=stack.headers()
    )
    assert response.status == 200, await response.text()
    assert ((await response.json())["url"], (await response.json())["events"]) == (
        "https://example.com/b",
        ["task.failed"],
    )
    response = await stack.client.patch(path, json={"url": "nope"}, headers=stack.headers())
    assert (response.status, (await response.json())["field"]) == (400, "url")

    listed = await _get(stack, "/v0.7/webhooks/")
    assert [e["id"] for e in listed["results"]] == [created["id"]]
    assert (await _get(stack, "/v0.7/webhooks/", OTHER_KEY))["count"] == 0
    for method in ("GET", "PATCH", "DELETE"):
        response = await stack.client.request(method, path, json={}, headers=stack.headers(OTHER_KEY))
        assert (response.status, (await response.json())["field"]) == (404, "webhook_id")
    response = await stack.client.get(f"{path}deliveries/", headers=stack.headers(OTHER_KEY))
    assert response.status == 404

    response = await stack.client.delete(path, headers=stack.headers())
    assert response.status == 204
    response = await stack.client.get(path, headers=stack.headers())
    assert response.status == 404
