"""The in-process broker of the embedded `percept serve`, with the semantics of the RabbitMQ adapter.

Same topology (broker.topology.QUEUES), per-subscription prefetch, delivery counting and dead-lettering
after `delivery_limit` deliveries; delayed messages wait on an event-loop timer. A delivery returned by
reject(requeue=True) or by a cancelled subscription counts, as in a quorum queue. Messages live in memory
only: jobs queued when the process stops are lost, so the embedded service must re-enqueue pending tasks
from its store on start. Events reach the subscribers of this process only, which in the embedded service
are all of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.port import (
    Broker,
    BrokerError,
    BrokerUnavailable,
    DeadLetter,
    Delivery,
    EventHandler,
    Handler,
    QueueFull,
    Subscription,
    SweepHandler,
)
from broker.topology import (
    DEAD_REASON_HEADER,
    DEFAULT_MAX_LENGTH,
    QUEUES,
    SWEPT_HEADER,
    QueueSpec,
    delay_queue,
)

log = logging.getLogger(__name__)


@dataclass
class _Message:
    body: bytes
    headers: dict[str, Any]
    message_id: str
    reply_to: str | None = None
    correlation_id: str | None = None
    deliveries: int = 0  # how many times it was handed to a consumer


@dataclass(frozen=True)
class Reply:
    """An RPC answer as a producer's reply queue receives it."""

    body: bytes
    correlation_id: str | None


@dataclass(eq=False)
class _Queue:
    spec: QueueSpec
    ready: deque[_Message] = field(default_factory=deque)
    dead: list[_Message] = field(default_factory=list)
    subscriptions: list[MemorySubscription] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # set on every dispatch, for join()

    def idle(self) -> bool:
        return not self.ready and not any(s.unsettled() for s in self.subscriptions)

    def give_back(self, message: _Message) -> None:
        """An unacked delivery came back: redeliver it first, or dead-letter it once it used its limit."""
        if message.deliveries >= self.spec.delivery_limit:
            self.dead.append(message)
        else:
            self.ready.appendleft(message)

    def dispatch(self) -> None:
        """Hand ready messages to subscriptions with free prefetch slots, round robin; runs on each change."""
        self.changed.set()
        while self.ready:
            subscription = next((s for s in self.subscriptions if s.has_room()), None)
            if subscription is None:
                return
            # Moving the chosen subscription to the end spreads messages over consumers.
            self.subscriptions.remove(subscription)
            self.subscriptions.append(subscription)
            message = self.ready.popleft()
            message.deliveries += 1
            subscription.deliver(message)


class MemoryDelivery(Delivery):
    def __init__(self, subscription: MemorySubscription, message: _Message) -> None:
        self.body = message.body
        self.headers = dict(message.headers)
        self.message_id = message.message_id
        self.delivery_count = message.deliveries
        self.reply_to = message.reply_to
        self.correlation_id = message.correlation_id
        self._subscription = subscription

    async def ack(self) -> None:
        self._subscription.settle(self)
        self._subscription.queue.dispatch()

    async def reject(self, *, requeue: bool) -> None:
        message = self._subscription.settle(self)
        queue = self._subscription.queue
        if requeue:
            queue.give_back(message)
        else:
            queue.dead.append(message)
        queue.dispatch()

    async def dead_letter(self, reason: str) -> None:
        message = self._subscription.settle(self)
        message.headers[DEAD_REASON_HEADER] = reason
        queue = self._subscription.queue
        queue.dead.append(message)
        queue.dispatch()


class MemorySubscription(Subscription):
    def __init__(self, queue: _Queue, handler: Handler, prefetch: int) -> None:
        self.queue = queue
        self._handler = handler
        self._prefetch = prefetch
        self._unacked: dict[MemoryDelivery, _Message] = {}  # in delivery order
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancelled = False

    def has_room(self) -> bool:
        return len(self._unacked) < self._prefetch

    def unsettled(self) -> int:
        return len(self._unacked)

    def deliver(self, message: _Message) -> None:
        delivery = MemoryDelivery(self, message)
        self._unacked[delivery] = message
        # One task per delivery, as aio-pika does: a handler awaiting briefly does not hold up the others.
        task = asyncio.create_task(self._handle(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, delivery: MemoryDelivery) -> None:
        try:
            await self._handler(delivery)
        except Exception:
            # Like an AMQP consumer: the delivery stays unacknowledged until its subscription is cancelled.
            log.exception("broker_handler_failed queue=%s", self.queue.spec.name)

    def settle(self, delivery: MemoryDelivery) -> _Message:
        try:
            return self._unacked.pop(delivery)
        except KeyError:
            raise BrokerError("delivery already settled, or its subscription was cancelled") from None

    async def stop_receiving(self) -> None:
        if self in self.queue.subscriptions:
            self.queue.subscriptions.remove(self)

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        await self.stop_receiving()
        # Closing an AMQP channel ends its handler tasks too; a handler may cancel its own subscription.
        running = self._tasks - {asyncio.current_task()}
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        returned = list(self._unacked.values())
        self._unacked.clear()
        # appendleft in reverse keeps the original order at the head of the queue.
        for message in reversed(returned):
            self.queue.give_back(message)
        self.queue.dispatch()


class MemoryEventSubscription(Subscription):
    def __init__(self, subscribers: list[MemoryEventSubscription], handler: EventHandler) -> None:
        self._subscribers = subscribers
        self._handler = handler

    async def receive(self, body: bytes) -> None:
        try:
            await self._handler(body)
        except Exception:
            # As with RabbitMQ, a failing subscriber neither stops the others nor reaches the publisher.
            log.exception("broker_event_handler_failed")

    async def stop_receiving(self) -> None:
        if self in self._subscribers:
            self._subscribers.remove(self)

    async def cancel(self) -> None:
        await self.stop_receiving()


class MemoryBroker(Broker):
    def __init__(self, *, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        if max_length < 1:
            raise ValueError("max_length must be at least 1")
        self._max_length = max_length
        self._queues = {spec.name: _Queue(spec) for spec in QUEUES}
        self._event_subscribers: list[MemoryEventSubscription] = []
        self._timers: set[asyncio.TimerHandle] = set()  # delayed messages, lost on close like the rest
        self._mailboxes: dict[str, asyncio.Queue[Reply]] = {}
        self._open = False

    def _queue(self, name: str) -> _Queue:
        try:
            return self._queues[name]
        except KeyError:
            raise BrokerError(f"unknown queue {name!r}") from None

    async def start(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for queue in self._queues.values():
            for subscription in list(queue.subscriptions):
                await subscription.cancel()
        self._event_subscribers.clear()

    async def publish(
        self,
        queue: str,
        body: bytes,
        *,
        message_id: str,
        headers: Mapping[str, str] | None = None,
        delay_s: float = 0.0,
        reply_to: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        target = self._queue(queue)
        if not self._open:
            raise BrokerUnavailable("the in-process broker is not started")
        message = _Message(body, dict(headers or {}), message_id, reply_to, correlation_id)
        if delay_s <= 0:
            if target.spec.bounded and len(target.ready) >= self._max_length:
                raise QueueFull(f"publish to {queue} refused: the queue is full")
            self._arrive(target, message)
            return
        try:
            delay_queue(queue, delay_s * 1000)  # the same queues take delays as on RabbitMQ
        except KeyError as error:
            raise BrokerError(str(error)) from None

        def due() -> None:
            self._timers.discard(timer)
            self._arrive(target, message)

        timer = asyncio.get_running_loop().call_later(delay_s, due)
        self._timers.add(timer)

    @staticmethod
    def _arrive(target: _Queue, message: _Message) -> None:
        target.ready.append(message)
        target.dispatch()

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Subscription:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        target = self._queue(queue)
        subscription = MemorySubscription(target, handler, prefetch)
        target.subscriptions.append(subscription)
        target.dispatch()
        return subscription

    def replies(self, reply_to: str) -> asyncio.Queue[Reply]:
        """The mailbox named `reply_to`, opened on first use; replies sent to it from then on arrive here."""
        return self._mailboxes.setdefault(reply_to, asyncio.Queue())

    async def reply(self, reply_to: str, body: bytes, *, correlation_id: str | None) -> None:
        if not self._open:
            raise BrokerUnavailable("the in-process broker is not started")
        mailbox = self._mailboxes.get(reply_to)
        if mailbox is not None:
            mailbox.put_nowait(Reply(body, correlation_id))

    async def join(self, queue: str) -> None:
        """Wait until the queue holds no ready and no unsettled message: burst-mode tests, without sleeps."""
        target = self._queue(queue)
        while not target.idle():
            target.changed.clear()
            await target.changed.wait()

    async def queue_depth(self, queue: str) -> int:
        return len(self._queue(queue).ready)

    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        return [
            DeadLetter(message.body, message.headers.get(DEAD_REASON_HEADER))
            for message in self._queue(queue).dead
        ]

    async def sweep_dead_letters(self, queue: str, handle: SweepHandler, *, limit: int) -> int:
        dead = self._queue(queue).dead
        looked_at = dead[:limit]
        await handle(
            [
                DeadLetter(message.body, message.headers.get(DEAD_REASON_HEADER))
                for message in looked_at
                if SWEPT_HEADER not in message.headers
            ]
        )
        for message in looked_at:
            message.headers[SWEPT_HEADER] = 1
        # To the back, as on RabbitMQ; letters dead-lettered while `handle` ran stay ahead of them.
        del dead[: len(looked_at)]
        dead.extend(looked_at)
        return len(looked_at)

    async def publish_event(self, body: bytes) -> None:
        if not self._open:
            log.warning("broker_event_dropped reason=not_started")
            return
        # Handlers run inline, one after the other: they are short by contract, and the event has reached
        # every subscriber when this returns, which keeps the embedded service's ordering simple.
        for subscriber in list(self._event_subscribers):
            await subscriber.receive(body)

    async def subscribe_events(self, handler: EventHandler) -> Subscription:
        subscription = MemoryEventSubscription(self._event_subscribers, handler)
        self._event_subscribers.append(subscription)
        return subscription
