"""One contract for every broker adapter: the in-process broker and RabbitMQ behave the same."""

from __future__ import annotations

import asyncio

import pytest

from broker.port import Broker, BrokerError, BrokerUnavailable, DeadLetter, Delivery, QueueFull
from broker.topology import DEPLOYMENT, INFERENCE, WEBHOOKS
from tests.broker.conftest import BOUNDED_LENGTH, WAIT, Adapter

QUEUE = INFERENCE.name


class Inbox:
    """A handler that records deliveries, and tracks how many are unacknowledged at once."""

    def __init__(self) -> None:
        self._deliveries: asyncio.Queue[Delivery] = asyncio.Queue()
        self.unsettled = 0
        self.most_unsettled = 0

    async def __call__(self, delivery: Delivery) -> None:
        self.unsettled += 1
        self.most_unsettled = max(self.most_unsettled, self.unsettled)
        await self._deliveries.put(delivery)

    async def next(self) -> Delivery:
        return await asyncio.wait_for(self._deliveries.get(), WAIT)

    async def ack(self, delivery: Delivery) -> None:
        self.unsettled -= 1
        await delivery.ack()


async def test_publish_consume_ack(broker: Broker) -> None:
    inbox = Inbox()
    await broker.publish(QUEUE, b'{"n": 1}', message_id="m1")
    subscription = await broker.consume(QUEUE, inbox, prefetch=1)

    delivery = await inbox.next()
    assert (delivery.body, delivery.message_id, delivery.delivery_count) == (b'{"n": 1}', "m1", 1)
    await inbox.ack(delivery)
    await subscription.cancel()

    # Acked means gone: a new subscription gets the next message, not m1 again.
    await broker.publish(QUEUE, b'{"n": 2}', message_id="m2")
    subscription = await broker.consume(QUEUE, inbox, prefetch=1)
    assert (await inbox.next()).message_id == "m2"
    await subscription.cancel()


async def test_prefetch_bounds_unacknowledged_deliveries(broker: Broker) -> None:
    inbox = Inbox()
    for n in range(10):
        await broker.publish(QUEUE, str(n).encode(), message_id=f"m{n}")
    subscription = await broker.consume(QUEUE, inbox, prefetch=3)

    first = [await inbox.next() for _ in range(3)]
    # The broker holds the other 7 back until something is acked.
    assert await broker.queue_depth(QUEUE) == 7
    bodies = []
    for delivery in first:
        bodies.append(delivery.body)
        await inbox.ack(delivery)
    for _ in range(7):
        delivery = await inbox.next()
        bodies.append(delivery.body)
        await inbox.ack(delivery)
    await subscription.cancel()

    assert inbox.most_unsettled == 3
    assert sorted(bodies) == sorted(str(n).encode() for n in range(10))


async def test_reject_with_requeue_redelivers_and_counts(broker: Broker) -> None:
    inbox = Inbox()
    await broker.publish(QUEUE, b"again", message_id="m1")
    subscription = await broker.consume(QUEUE, inbox, prefetch=1)

    await (await inbox.next()).reject(requeue=True)
    redelivered = await inbox.next()
    assert (redelivered.body, redelivered.delivery_count) == (b"again", 2)
    await redelivered.ack()
    await subscription.cancel()


async def test_dead_letters_after_the_delivery_limit(adapter: Adapter) -> None:
    broker, queue = adapter.broker, DEPLOYMENT.name
    inbox = Inbox()
    await broker.publish(queue, b"poison", message_id="m1")
    subscription = await broker.consume(queue, inbox, prefetch=1)

    for attempt in range(1, DEPLOYMENT.delivery_limit + 1):
        delivery = await inbox.next()
        assert delivery.delivery_count == attempt
        await delivery.reject(requeue=True)

    assert await adapter.dead_letters(queue, 1) == [DeadLetter(b"poison", None)]
    assert await broker.queue_depth(queue) == 0
    await subscription.cancel()


async def test_reject_without_requeue_dead_letters(adapter: Adapter) -> None:
    broker = adapter.broker
    inbox = Inbox()
    await broker.publish(QUEUE, b"bad", message_id="m1")
    subscription = await broker.consume(QUEUE, inbox, prefetch=1)

    await (await inbox.next()).reject(requeue=False)

    assert await adapter.dead_letters(QUEUE, 1) == [DeadLetter(b"bad", None)]
    # Reading dead letters does not consume them.
    assert await broker.dead_letters(QUEUE) == [DeadLetter(b"bad", None)]
    await subscription.cancel()


async def test_dead_letter_records_the_reason(adapter: Adapter) -> None:
    broker = adapter.broker
    inbox = Inbox()
    await broker.publish(QUEUE, b"bad", message_id="m1")
    subscription = await broker.consume(QUEUE, inbox, prefetch=1)

    await (await inbox.next()).dead_letter("not a job: missing task_id")

    assert await adapter.dead_letters(QUEUE, 1) == [DeadLetter(b"bad", "not a job: missing task_id")]
    assert await broker.queue_depth(QUEUE) == 0
    await subscription.cancel()


async def test_delivery_carries_reply_to_and_correlation_id(broker: Broker) -> None:
    inbox = Inbox()
    await broker.publish(QUEUE, b"ask", message_id="m1", reply_to="answers", correlation_id="c1")
    await broker.publish(QUEUE, b"tell", message_id="m2")
    subscription = await broker.consume(QUEUE, inbox, prefetch=2)

    asked, told = await inbox.next(), await inbox.next()
    assert (asked.reply_to, asked.correlation_id) == ("answers", "c1")
    assert (told.reply_to, told.correlation_id) == (None, None)
    await asked.ack()
    await told.ack()
    await subscription.cancel()


async def test_cancel_returns_unacknowledged_deliveries(broker: Broker) -> None:
    first, second = Inbox(), Inbox()
    for n in range(2):
        await broker.publish(QUEUE, str(n).encode(), message_id=f"m{n}")
    subscription = await broker.consume(QUEUE, first, prefetch=2)
    held = [await first.next() for _ in range(2)]
    await subscription.cancel()

    subscription = await broker.consume(QUEUE, second, prefetch=2)
    returned = [await second.next() for _ in range(2)]
    assert sorted(d.body for d in returned) == sorted(d.body for d in held)
    # A return counts as a delivery, as in a quorum queue: a consumer that keeps dying ends in dead letters.
    assert [d.delivery_count for d in returned] == [2, 2]
    for delivery in returned:
        await delivery.ack()
    await subscription.cancel()

    with pytest.raises(BrokerError):
        await held[0].ack()


async def test_a_failing_handler_leaves_its_delivery_unacknowledged(broker: Broker) -> None:
    seen: asyncio.Queue[Delivery] = asyncio.Queue()

    async def failing(delivery: Delivery) -> None:
        await seen.put(delivery)
        raise RuntimeError("handler bug")

    await broker.publish(QUEUE, b"{}", message_id="m1")
    subscription = await broker.consume(QUEUE, failing, prefetch=1)
    await asyncio.wait_for(seen.get(), WAIT)
    await subscription.cancel()

    inbox = Inbox()
    subscription = await broker.consume(QUEUE, inbox, prefetch=1)
    assert (await inbox.next()).delivery_count == 2
    await subscription.cancel()


async def test_queue_depth_counts_ready_messages(broker: Broker) -> None:
    assert await broker.queue_depth(QUEUE) == 0
    for n in range(3):
        await broker.publish(QUEUE, b"{}", message_id=f"m{n}")
    assert await broker.queue_depth(QUEUE) == 3
    assert await broker.queue_depth(DEPLOYMENT.name) == 0


async def test_headers_round_trip(broker: Broker) -> None:
    inbox = Inbox()
    headers = {"schema": "1", "task-id": "6f1c"}
    await broker.publish(QUEUE, b"{}", message_id="m1", headers=headers)
    subscription = await broker.consume(QUEUE, inbox, prefetch=1)

    delivery = await inbox.next()
    assert (dict(delivery.headers), delivery.message_id) == (headers, "m1")
    await delivery.ack()
    await subscription.cancel()


async def test_a_delayed_message_arrives_after_its_delay_and_holds_up_nothing(broker: Broker) -> None:
    inbox = Inbox()
    subscription = await broker.consume(WEBHOOKS.name, inbox, prefetch=5)
    loop = asyncio.get_running_loop()
    published = loop.time()
    # 0.35 s is between delay steps: RabbitMQ takes it in several hops, each keeping the due time.
    await broker.publish(WEBHOOKS.name, b"later", message_id="late", delay_s=0.35)
    await broker.publish(WEBHOOKS.name, b"now", message_id="now")

    first = await inbox.next()
    assert first.message_id == "now"
    await inbox.ack(first)
    later = await inbox.next()
    assert (later.body, later.message_id, later.delivery_count) == (b"later", "late", 1)
    assert loop.time() - published >= 0.35 - 0.01  # due times travel in whole milliseconds of wall clock
    await inbox.ack(later)
    await subscription.cancel()


async def test_only_queues_with_delay_queues_take_a_delay(broker: Broker) -> None:
    with pytest.raises(BrokerError, match="no delay queues"):
        await broker.publish(QUEUE, b"{}", message_id="m1", delay_s=1.0)


async def test_unknown_queue_is_an_error(broker: Broker) -> None:
    with pytest.raises(BrokerError, match="unknown queue"):
        await broker.publish("percept.nope", b"{}", message_id="m1")
    with pytest.raises(BrokerError, match="unknown queue"):
        await broker.queue_depth("percept.nope")


async def test_stop_receiving_keeps_received_deliveries_settleable(broker: Broker) -> None:
    received: list[Delivery] = []
    arrived = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        received.append(delivery)
        arrived.set()

    subscription = await broker.consume(INFERENCE.name, handler, prefetch=1)
    await broker.publish(INFERENCE.name, b"first", message_id="1")
    await broker.publish(INFERENCE.name, b"second", message_id="2")
    await asyncio.wait_for(arrived.wait(), WAIT)
    await subscription.stop_receiving()
    await received[0].ack()  # still possible after the subscription stopped receiving
    await subscription.cancel()
    assert [delivery.body for delivery in received] == [b"first"]
    assert await broker.queue_depth(INFERENCE.name) == 1


class EventInbox:
    """An event handler that records what it receives."""

    def __init__(self) -> None:
        self._events: asyncio.Queue[bytes] = asyncio.Queue()

    async def __call__(self, body: bytes) -> None:
        await self._events.put(body)

    async def next(self) -> bytes:
        return await asyncio.wait_for(self._events.get(), WAIT)

    def empty(self) -> bool:
        return self._events.empty()


async def test_events_reach_every_subscriber(broker: Broker) -> None:
    first, second = EventInbox(), EventInbox()
    subscriptions = [await broker.subscribe_events(first), await broker.subscribe_events(second)]

    await broker.publish_event(b'{"n": 1}')
    await broker.publish_event(b'{"n": 2}')

    for inbox in (first, second):
        assert [await inbox.next(), await inbox.next()] == [b'{"n": 1}', b'{"n": 2}']
    for subscription in subscriptions:
        await subscription.cancel()


async def test_events_stop_at_cancel_and_are_not_work(broker: Broker) -> None:
    kept, cancelled = EventInbox(), EventInbox()
    subscription = await broker.subscribe_events(kept)
    await (await broker.subscribe_events(cancelled)).cancel()

    await broker.publish_event(b"after")

    assert await kept.next() == b"after"
    assert cancelled.empty()
    # Events never land in a work queue.
    assert await broker.queue_depth(INFERENCE.name) == 0
    await subscription.cancel()


async def test_a_failing_event_handler_neither_stops_others_nor_reaches_the_publisher(broker: Broker) -> None:
    failures: asyncio.Queue[bytes] = asyncio.Queue()

    async def failing(body: bytes) -> None:
        await failures.put(body)
        raise RuntimeError("handler bug")

    inbox = EventInbox()
    subscriptions = [await broker.subscribe_events(failing), await broker.subscribe_events(inbox)]
    await broker.publish_event(b"one")
    await broker.publish_event(b"two")

    assert [await inbox.next(), await inbox.next()] == [b"one", b"two"]
    # The failing subscription keeps receiving.
    assert [await asyncio.wait_for(failures.get(), WAIT) for _ in range(2)] == [b"one", b"two"]
    for subscription in subscriptions:
        await subscription.cancel()


async def test_publishing_an_event_never_raises(broker: Broker) -> None:
    await broker.publish_event(b"nobody listens")
    await broker.close()
    await broker.publish_event(b"closed")  # logged and dropped


async def test_a_bounded_queue_refuses_publishes_past_its_length_limit(bounded: Broker) -> None:
    for n in range(BOUNDED_LENGTH):
        await bounded.publish(QUEUE, b"{}", message_id=f"m{n}")
    accepted, refused = BOUNDED_LENGTH, []
    for n in range(2):  # RabbitMQ may take one message past the limit before it refuses
        try:
            await bounded.publish(QUEUE, b"{}", message_id=f"over{n}")
            accepted += 1
        except QueueFull as error:
            refused.append(error)
    assert refused and accepted <= BOUNDED_LENGTH + 1
    assert isinstance(refused[0], BrokerUnavailable)  # so every publisher already retries it later
    assert await bounded.queue_depth(QUEUE) == accepted
    # Queues are bounded one by one, and the webhook queue (delayed retries come back into it) not at all.
    await bounded.publish(DEPLOYMENT.name, b"{}", message_id="d")
    for n in range(BOUNDED_LENGTH + 2):
        await bounded.publish(WEBHOOKS.name, b"{}", message_id=f"w{n}")
    assert await bounded.queue_depth(WEBHOOKS.name) == BOUNDED_LENGTH + 2


async def fill(broker: Broker, queue: str, *, most: int) -> int:
    """Publish until the queue refuses; how many it took. Fails if it took `most` without refusing."""
    for n in range(most):
        try:
            await broker.publish(queue, b"{}", message_id=f"m{n}")
        except QueueFull:
            return n
    raise AssertionError(f"{queue} took {most} messages without refusing one")


async def test_a_drained_queue_takes_publishes_again(bounded: Broker) -> None:
    inbox = Inbox()
    queued = await fill(bounded, QUEUE, most=BOUNDED_LENGTH + 2)
    subscription = await bounded.consume(QUEUE, inbox, prefetch=10)
    for _ in range(queued):
        await inbox.ack(await inbox.next())
    # RabbitMQ learns of the acks asynchronously: the queue opens again shortly, never at once for certain.
    async with asyncio.timeout(WAIT):
        while True:
            try:
                await bounded.publish(QUEUE, b"{}", message_id="again")
                break
            except QueueFull:
                await asyncio.sleep(0.05)
    assert (await inbox.next()).message_id == "again"
    await subscription.cancel()


async def test_sweeping_dead_letters_hands_each_over_once_a_few_at_a_time(adapter: Adapter) -> None:
    broker = adapter.broker
    inbox = Inbox()
    for index in range(7):
        await broker.publish(QUEUE, f"job{index}".encode(), message_id=f"m{index}")
    subscription = await broker.consume(QUEUE, inbox, prefetch=7)
    for index in range(7):
        delivery = await inbox.next()
        if index % 2:
            await delivery.dead_letter(f"reason {index}")
        else:
            await delivery.reject(requeue=False)
    letters = await adapter.dead_letters(QUEUE, 7)
    handed: list[list[DeadLetter]] = []

    async def handle(batch: list[DeadLetter]) -> None:
        handed.append(batch)

    async def refuse(batch: list[DeadLetter]) -> None:
        raise RuntimeError("the store is down")

    # A handler that fails marks nothing: the same letters come again.
    with pytest.raises(RuntimeError):
        await broker.sweep_dead_letters(QUEUE, refuse, limit=3)
    # Three letters a sweep at most; those handled before are looked at but not handed over again.
    assert [await broker.sweep_dead_letters(QUEUE, handle, limit=3) for _ in range(4)] == [3, 3, 3, 3]
    assert [len(batch) for batch in handed] == [3, 3, 1, 0]
    assert sorted((d.body, d.reason) for batch in handed for d in batch) == sorted(
        (d.body, d.reason) for d in letters
    )
    # Every letter is still there for inspection, with its reason.
    assert sorted((d.body, d.reason) for d in await broker.dead_letters(QUEUE)) == sorted(
        (d.body, d.reason) for d in letters
    )

    # A letter dead-lettered later is reached within length / limit sweeps.
    await broker.publish(QUEUE, b"late", message_id="m7")
    await (await inbox.next()).reject(requeue=False)
    await adapter.dead_letters(QUEUE, 8)
    handed.clear()
    for _ in range(3):
        await broker.sweep_dead_letters(QUEUE, handle, limit=3)
    assert [d.body for batch in handed for d in batch] == [b"late"]
    await subscription.cancel()
