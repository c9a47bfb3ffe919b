"""Per-endpoint fairness of the webhook consumer, with real HTTP to loopback receivers: a receiver that never
answers holds at most its share of the slots, so a fast one's deliveries do not wait behind its timeouts; one
that keeps not answering is cut off, and once it answers again every delivery still arrives.

The worker runs as the consumer service runs it (the in-process broker, prefetch, the SQLite store), with its
sender counting the attempts each receiver has in flight: the receivers cannot, as a request the sender gave
up on stays open on their side."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from broker.memory import MemoryBroker
from broker.topology import WEBHOOKS
from consumers.config import ConsumerConfig
from consumers.outbound import OutboundPolicy
from consumers.webhook_sender import Sent, WebhookSender
from consumers.webhooks import WebhookWorker
from schemas.documents import AttemptResult, WebhookAttemptDoc, WebhookEndpointDoc
from schemas.webhooks import WebhookDelivery, WebhookEvent, new_secret
from store.factory import open_store
from store.port import WEBHOOK_ATTEMPTS, WEBHOOK_ENDPOINTS, Store

TENANT = "t1"
TIMEOUT_S = 1.0
WAIT_S = 60.0  # bound on every wait below; the loads here finish in seconds


@dataclass
class Receiver:
    hold: asyncio.Event | None = None  # unset: requests hang (past the sender's timeout) until it is set
    arrivals: list[str] = field(default_factory=list)  # webhook-id of each request, in arrival order
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrivals.append(request.headers["webhook-id"])
        if self.hold is not None:
            await self.hold.wait()
        return web.Response(status=200)


class CountingSender(WebhookSender):
    """The real sender, noting how many attempts each URL has in flight at most."""

    def __init__(self) -> None:
        super().__init__(OutboundPolicy(("127.0.0.1/32",)), timeout_s=TIMEOUT_S)
        self.in_flight: Counter[str] = Counter()
        self.most: Counter[str] = Counter()

    async def post(self, url: str, body: str, headers: Mapping[str, str]) -> Sent:
        self.in_flight[url] += 1
        self.most[url] = max(self.most[url], self.in_flight[url])
        try:
            return await super().post(url, body, headers)
        finally:
            self.in_flight[url] -= 1


@dataclass
class Rig:
    store: Store
    broker: MemoryBroker
    sender: CountingSender
    receiver: Callable[..., Awaitable[Receiver]]
    start: Callable[[ConsumerConfig], Awaitable[None]]

    async def endpoint(self, receiver: Receiver) -> str:
        endpoint_id = f"ep{len(receiver.url)}{abs(hash(receiver.url))}"
        doc = WebhookEndpointDoc(
            id=endpoint_id,
            owner=TENANT,
            url=receiver.url,
            events=[WebhookEvent.TASK_SUCCEEDED],
            secret=new_secret(),
        )
        await self.store.insert(WEBHOOK_ENDPOINTS, doc)
        return endpoint_id

    async def publish(self, endpoint_id: str, url: str, task_id: str) -> None:
        """A delivery as the fan-out publishes it."""
        job = WebhookDelivery(
            message_id=f"msg_task{task_id}_ep{endpoint_id}",
            tenant=TENANT,
            endpoint_id=endpoint_id,
            url=url,
            event=WebhookEvent.TASK_SUCCEEDED,
            task_id=task_id,
            body=f'{{"type": "task.succeeded", "data": {{"id": "{task_id}"}}}}',
        )
        await self.broker.publish(
            WEBHOOKS.name, job.model_dump_json().encode(), message_id=f"{job.message_id}.1"
        )

    async def attempts(self, endpoint_id: str) -> list[WebhookAttemptDoc]:
        page = await self.store.find(
            WEBHOOK_ATTEMPTS, owners=[TENANT], where={"endpoint_id": endpoint_id}, limit=10_000
        )
        return page.items


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = await open_store("", tmp_path)
    broker = MemoryBroker()
    await broker.start()
    sender = CountingSender()
    servers: list[tuple[Receiver, TestServer]] = []

    async def receiver(**options: Any) -> Receiver:
        made = Receiver(**options)
        app = web.Application()
        app.router.add_post("/hook", made.handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        made.url = str(server.make_url("/hook"))
        servers.append((made, server))
        return made

    async def start(config: ConsumerConfig) -> None:
        worker = WebhookWorker(store, broker, sender, config=config)
        await broker.consume(WEBHOOKS.name, worker.handle, prefetch=config.webhook_prefetch)

    try:
        yield Rig(store, broker, sender, receiver, start)
    finally:
        await broker.close()
        for made, server in servers:
            if made.hold is not None:
                made.hold.set()
            await server.close()
        await sender.close()
        await store.close()


def _config(tmp_path: Path, **overrides: Any) -> ConsumerConfig:
    return ConsumerConfig(
        cache_dir=tmp_path / "cache",
        outbound_allow=("127.0.0.1/32",),
        webhook_timeout_s=TIMEOUT_S,
        webhook_prefetch=4,
        **overrides,
    )


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll, bounded: the store and the receivers change in other tasks, with no event to wait on."""
    async with asyncio.timeout(WAIT_S):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


async def test_a_receiver_that_never_answers_does_not_hold_up_a_fast_one(rig: Rig, tmp_path: Path) -> None:
    deliveries = 20
    config = _config(tmp_path, webhook_retry_schedule=(0.05, 0.1), webhook_circuit_failures=0)
    assert config.webhook_endpoint_in_flight == 1  # a quarter of the 4 slots
    fast, slow = await rig.receiver(), await rig.receiver(hold=asyncio.Event())
    fast_id, slow_id = await rig.endpoint(fast), await rig.endpoint(slow)
    for index in range(deliveries):
        # The slow receiver's deliveries first: without a cap they take every slot for a timeout each.
        await rig.publish(slow_id, slow.url, f"s{index}")
        await rig.publish(fast_id, fast.url, f"f{index}")
    await rig.start(config)

    async def fast_done() -> bool:
        return len(fast.arrivals) >= deliveries

    await _until(fast_done)
    slow_started = len(slow.arrivals)
    # Without the cap the slow receiver would have had about `deliveries` attempts by now, 4 at a time,
    # each a whole timeout; with it one at a time, and the fast deliveries take well under a timeout.
    assert slow_started <= deliveries // 2, slow_started
    assert rig.sender.most[slow.url] == 1
    assert sorted(fast.arrivals) == sorted(f"msg_task{f'f{i}'}_ep{fast_id}" for i in range(deliveries))

    async def fast_recorded() -> bool:
        # An attempt is recorded once its answer is in: after the receiver has seen the request.
        return len(await rig.attempts(fast_id)) >= deliveries

    await _until(fast_recorded)
    attempts = await rig.attempts(fast_id)
    assert len(attempts) == deliveries  # deferring a slow delivery recorded nothing for anyone
    assert {(a.attempt, a.result) for a in attempts} == {(1, AttemptResult.DELIVERED)}
    # The slow receiver's attempts are real ones: each recorded, numbered in order, none past the cap.
    slow_attempts = await rig.attempts(slow_id)
    assert len(slow_attempts) >= slow_started - 1  # the one in flight is recorded when it times out
    assert all(a.error is not None and a.error.startswith("no answer within") for a in slow_attempts)


async def test_a_receiver_cut_off_for_not_answering_gets_every_delivery_once_it_answers(
    rig: Rig, tmp_path: Path
) -> None:
    deliveries = 10
    config = _config(
        tmp_path,
        webhook_retry_schedule=(0.05,) * 30,  # enough attempts that none runs out while it is cut off
        webhook_max_in_flight_per_endpoint=4,  # all 4 slots: only the circuit holds it back
        webhook_circuit_failures=2,
        webhook_circuit_open_s=0.5,
    )
    flaky = await rig.receiver(hold=asyncio.Event())
    endpoint_id = await rig.endpoint(flaky)
    for index in range(deliveries):
        await rig.publish(endpoint_id, flaky.url, f"d{index}")
    await rig.start(config)

    async def cut_off() -> bool:
        return len(await rig.attempts(endpoint_id)) >= 2

    await _until(cut_off)
    seen = len(flaky.arrivals)
    window_s = 5 * TIMEOUT_S
    started = time.monotonic()
    await asyncio.sleep(window_s)
    during = len(flaky.arrivals) - seen
    # Without the circuit, up to 4 attempts a timeout: 16 in the window when measured. Cut off (0.5 s, then
    # 1, 2, ...), it gets single probes: at most one each time the cut-off ends, plus those in flight before.
    assert during <= 6, (during, time.monotonic() - started)

    assert flaky.hold is not None
    flaky.hold.set()  # it answers again

    async def all_delivered() -> bool:
        attempts = await rig.attempts(endpoint_id)
        return sum(a.result is AttemptResult.DELIVERED for a in attempts) >= deliveries

    await _until(all_delivered)
    attempts = await rig.attempts(endpoint_id)
    by_message: dict[str, list[WebhookAttemptDoc]] = {}
    for attempt in attempts:
        by_message.setdefault(attempt.message_id, []).append(attempt)
    assert len(by_message) == deliveries
    for message_id, tries in by_message.items():
        tries.sort(key=lambda a: a.attempt)
        # Attempts only: numbered 1, 2, ... without gaps, each failure retried, the last one delivered.
        assert [a.attempt for a in tries] == list(range(1, len(tries) + 1)), message_id
        assert [a.result for a in tries] == [AttemptResult.RETRYING] * (len(tries) - 1) + [
            AttemptResult.DELIVERED
        ], message_id
    assert set(flaky.arrivals) == set(by_message)
