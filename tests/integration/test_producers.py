"""Queue producers through the in-process stack: requests published straight to `percept.requests`."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import re
import sys
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from broker.amqp import AmqpBroker
from broker.topology import DEAD_REASON_HEADER, EXCHANGE, REQUESTS
from consumers.config import ConsumerConfig
from consumers.service import ConsumerService
from gateway.asyncapi import documents, render
from schemas.documents import TaskDoc
from store.port import TASKS
from tests.conftest import API_KEY, OTHER_KEY, Stack
from tests.images import png
from tests.integration.test_recognition_flow import _classifier_version
from tests.rabbitmq import purge_queues

ROOT = Path(__file__).resolve().parents[2]
REPLIES = "producer-replies"
WAIT = 60.0


def request(version_id: str, color: tuple[int, int, int] = (255, 255, 255), **extra: Any) -> dict[str, Any]:
    image = base64.b64encode(png(color)).decode()
    return {"schema_version": 1, "version_id": version_id, "image": {"data": image}, **extra}


async def publish(
    stack: Stack, body: bytes | dict[str, Any], *, key: str | None = API_KEY, correlation_id: str = "c1"
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    await stack.broker.publish(
        REQUESTS.name,
        raw,
        message_id=correlation_id,
        headers={"x-api-key": key} if key is not None else None,
        reply_to=REPLIES,
        correlation_id=correlation_id,
    )


async def reply(stack: Stack) -> dict[str, Any]:
    answer = await asyncio.wait_for(stack.broker.replies(REPLIES).get(), WAIT)
    body: dict[str, Any] = json.loads(answer.body)
    body["correlation_id"] = answer.correlation_id
    return body


async def tasks(stack: Stack) -> list[TaskDoc]:
    return await stack.store.sweep(TASKS, where={"kind": "inference"})


async def test_a_request_becomes_a_task_and_the_reply_carries_it(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    spec, version = await _classifier_version(stack, tiny_models)
    stack.broker.replies(REPLIES)  # the producer's reply queue exists before it asks

    await publish(stack, request(str(version["id"])), correlation_id="by-version")
    answer = await reply(stack)
    assert answer["correlation_id"] == "by-version"
    assert answer["status"] == "success", answer
    assert answer["data"]["outputs"][0]["labels"]["predicted"][0]["label_name"] == "bright"
    # The task is an ordinary one: the HTTP API serves the same outcome.
    task = await stack.wait_task(answer["task_id"])
    assert (task["status"], task["data"]) == ("success", answer["data"])

    # A spec id (an integer in JSON, as Deepomatic ids are) infers with its current version.
    await publish(stack, request(version["id"], (0, 0, 0)) | {"version_id": None, "spec_id": int(spec["id"])})
    answer = await reply(stack)
    assert answer["data"]["outputs"][0]["labels"]["predicted"][0]["label_name"] == "dark", answer
    assert await stack.broker.dead_letters(REQUESTS.name) == []


async def test_a_request_without_reply_to_still_creates_a_task(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    _, version = await _classifier_version(stack, tiny_models)
    before = len(await tasks(stack))
    body = json.dumps(request(str(version["id"]))).encode()
    await stack.broker.publish(REQUESTS.name, body, message_id="m1", headers={"x-api-key": API_KEY})
    await stack.broker.join(REQUESTS.name)  # acked once its task is recorded and its job queued
    created = (await tasks(stack))[before:]
    assert len(created) == 1
    assert (await stack.wait_task(created[0].id))["status"] == "success"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no key", "not authenticated: no API key"),
        ("wrong key", "not authenticated: invalid API key"),
        ("not json", "invalid request: message"),
        ("unknown field", "invalid request: colour: Extra inputs are not permitted"),
        ("later schema", "invalid request: schema_version"),
        ("two models", "exactly one of version_id and spec_id"),
        ("two sources", "exactly one of image.url and image.data"),
        ("bad base64", "invalid request: image.data"),
        ("unknown version", "recognition version 999 does not exist"),
        ("another tenant's version", "does not exist"),
        ("reply_to a Percept queue", "reply_to must not name a Percept queue"),
    ],
)
async def test_refused_requests_are_dead_lettered_with_their_reason_and_create_no_task(
    stack: Stack, tiny_models: dict[str, Path], case: str, reason: str
) -> None:
    _, version = await _classifier_version(stack, tiny_models)
    valid = request(str(version["id"]))
    key: str | None = API_KEY
    body: bytes | dict[str, Any] = valid
    if case == "no key":
        key = None
    elif case == "wrong key":
        key = "not-a-key"
    elif case == "not json":
        body = b"\x00\xffnot json"
    elif case == "unknown field":
        body = valid | {"colour": "red"}
    elif case == "later schema":
        body = valid | {"schema_version": 2}
    elif case == "two models":
        body = valid | {"spec_id": "digits"}
    elif case == "two sources":
        body = valid | {"image": {"data": valid["image"]["data"], "url": "https://example.com/a.png"}}
    elif case == "bad base64":
        body = valid | {"image": {"data": "!!!"}}
    elif case == "unknown version":
        body = valid | {"version_id": "999"}
    elif case == "another tenant's version":
        key = OTHER_KEY
    before = await tasks(stack)
    mailbox = stack.broker.replies(REPLIES)

    if case == "reply_to a Percept queue":
        raw = json.dumps(valid).encode()
        headers = {"x-api-key": API_KEY}
        await stack.broker.publish(REQUESTS.name, raw, message_id="m1", headers=headers, reply_to="percept.x")
    else:
        await publish(stack, body, key=key)
        answer = await reply(stack)
        assert (answer["status"], answer["task_id"], answer["correlation_id"]) == ("refused", None, "c1")
        assert reason in answer["error"]
    await stack.broker.join(REQUESTS.name)

    [dead] = await stack.broker.dead_letters(REQUESTS.name)
    assert dead.reason is not None and reason in dead.reason, dead.reason
    assert dead.body == (body if isinstance(body, bytes) else json.dumps(body).encode())
    assert await tasks(stack) == before
    assert mailbox.empty()


async def test_hundreds_of_hostile_messages_are_all_dead_lettered(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    _, version = await _classifier_version(stack, tiny_models)
    before = await tasks(stack)
    chaos = random.Random(7)
    for index in range(200):
        kind = index % 4
        if kind == 0:  # noise, unauthenticated
            body, headers = chaos.randbytes(chaos.randrange(0, 300)), None
        elif kind == 1:  # a valid request with a wrong key
            body, headers = json.dumps(request(str(version["id"]))).encode(), {"x-api-key": f"k{index}"}
        elif kind == 2:  # noise with a valid key
            body, headers = chaos.randbytes(chaos.randrange(0, 300)), {"x-api-key": API_KEY}
        else:  # JSON of the wrong shape with a valid key
            body, headers = json.dumps({"schema_version": 1, "n": index}).encode(), {"x-api-key": API_KEY}
        await stack.broker.publish(REQUESTS.name, body, message_id=f"m{index}", headers=headers)
    await stack.broker.join(REQUESTS.name)

    dead = await stack.broker.dead_letters(REQUESTS.name)
    assert len(dead) == 200
    assert all(letter.reason for letter in dead)
    assert await tasks(stack) == before
    # The consumer is still there: a valid request afterwards is answered.
    stack.broker.replies(REPLIES)
    await publish(stack, request(str(version["id"])))
    assert (await reply(stack))["status"] == "success"


async def test_a_redelivered_request_makes_one_task_and_a_reused_message_id_is_refused(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    _, version = await _classifier_version(stack, tiny_models)
    before = len(await tasks(stack))
    stack.broker.replies(REPLIES)
    body = request(str(version["id"]))
    # The same message twice, as a broker redelivers it after a consumer died before acknowledging.
    await publish(stack, body, correlation_id="same-message")
    first = await reply(stack)
    await publish(stack, body, correlation_id="same-message")
    second = await reply(stack)
    assert first["status"] == second["status"] == "success"
    assert first["task_id"] == second["task_id"]
    assert len(await tasks(stack)) == before + 1
    # The id again, for another request: refused, not confused with the first.
    await publish(stack, request(str(version["id"]), color=(0, 0, 0)), correlation_id="same-message")
    refused = await reply(stack)
    assert refused["status"] == "refused" and "already used" in refused["error"], refused
    assert len(await tasks(stack)) == before + 1


def test_the_committed_contract_is_current() -> None:
    for file, document in documents().items():
        assert (ROOT / file).read_text() == render(document), (
            f"{file} is stale: run python -m gateway.asyncapi"
        )


async def test_the_contract_is_served_without_a_key(stack: Stack) -> None:
    served = {
        "docs/asyncapi.json": await stack.client.get("/asyncapi.json"),
        "docs/producer-message.schema.json": await stack.client.get("/schemas/producer-message.json"),
    }
    for file, document in documents().items():
        assert served[file].status == 200
        assert await served[file].json() == document
    assert served["docs/producer-message.schema.json"].content_type == "application/schema+json"
    openapi = await (await stack.client.get("/openapi.json")).json()
    assert openapi["info"]["x-asyncapi"] == openapi["externalDocs"]["url"] == "/asyncapi.json"
    channels = documents()["docs/asyncapi.json"]["channels"]
    assert channels["requests"]["address"] == "percept.requests"
    assert channels["requests"]["bindings"]["amqp"]["exchange"]["name"] == "percept"
    assert channels["deadLetters"]["address"] == "percept.requests.dead"


def readme_producer() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- producer:start -->\n```python\n(.*?)```\n<!-- producer:end -->", text, re.DOTALL)
    assert match, "README lost its producer example markers"
    return match.group(1)


@pytest.mark.rabbitmq
async def test_the_readme_producer_gets_its_reply_over_rabbitmq(
    stack: Stack, tiny_models: dict[str, Path], rabbitmq_url: str, tmp_path: Path
) -> None:
    """The README's aio-pika example, verbatim, against consumers on a real RabbitMQ (the stack's store)."""
    _, version = await _classifier_version(stack, tiny_models)
    await purge_queues(rabbitmq_url)
    broker = AmqpBroker(rabbitmq_url)
    await broker.start()
    service = ConsumerService(
        stack.store, broker, ConsumerConfig(cache_dir=tmp_path / "amqp-cache", max_batch_delay_s=0.002)
    )
    await service.start()
    try:
        script = tmp_path / "producer.py"
        script.write_text(readme_producer())
        env = {
            **os.environ,
            "PERCEPT_BROKER_URL": rabbitmq_url,
            "PERCEPT_KEY": API_KEY,
            "PERCEPT_VERSION": str(version["id"]),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), WAIT)
        assert process.returncode == 0, err.decode()
        answer = json.loads(out)
        assert answer["status"] == "success", answer
        assert (await stack.wait_task(answer["task_id"]))["data"] == answer["data"]

        before = await tasks(stack)
        async with await aio_pika.connect(rabbitmq_url) as connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(EXCHANGE, ensure=False)
            refused = aio_pika.Message(b"{}", headers={"x-api-key": "not-a-key"})
            await exchange.publish(refused, routing_key=REQUESTS.name, mandatory=True)
            dead = await channel.get_queue(REQUESTS.dead_letter_queue, ensure=False)
            async with dead.iterator(timeout=WAIT) as letters:
                letter = await anext(letters)
        reason = letter.headers[DEAD_REASON_HEADER]
        reason = reason.decode() if isinstance(reason, bytes) else reason
        assert (letter.body, reason) == (b"{}", "not authenticated: invalid API key")
        assert await tasks(stack) == before
    finally:
        await service.stop(grace_s=5)
        await broker.close()


async def test_producer_tasks_reach_the_tenants_webhook_endpoints(
    stack: Stack, tiny_models: dict[str, Path], receiver_factory: Any
) -> None:
    receiver = await receiver_factory()
    response = await stack.client.post(
        "/v0.7/webhooks/", json={"url": receiver.url, "events": ["task.succeeded"]}, headers=stack.headers()
    )
    endpoint = await response.json()
    _, version = await _classifier_version(stack, tiny_models)
    stack.broker.replies(REPLIES)
    await publish(stack, request(str(version["id"])), correlation_id="hooked")
    answer = await reply(stack)
    payload = (await receiver.next()).verified(endpoint["secret"])
    assert (payload["type"], payload["data"]["id"]) == ("task.succeeded", answer["task_id"])
