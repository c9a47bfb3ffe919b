"""The RabbitMQ adapter (aio-pika): persistent messages, publisher confirms, manual acks, quorum queues.

Topology is declared through the publisher's robust channel. aio-pika records every robust declaration and
replays it inside the channel's restore, before the channel reports ready, on every reconnect. We rely on
that rather than on `reconnect_callbacks`, because those run only after every channel has been restored (a
consumer channel would first meet a missing queue) and their exceptions are logged and dropped.

Dead letters with a reason and RPC replies go through the default exchange, straight to the named queue.

A nacked publish means a bounded queue is full (topology: `x-overflow: reject-publish`) and raises QueueFull.
Work queues that already exist with other arguments (declared by an earlier version, or with another
PERCEPT_QUEUE_MAX_LENGTH) would make RabbitMQ refuse the declaration and the process fail to start: they
are found at start with a probe on a scratch channel, logged, and from then on declared passively, keeping
their arguments until an operator deletes them (when empty) or the settings agree again.

Events use a channel of their own without publisher confirms, so a lost event never holds up a publish.
A subscriber's queue outlives a dropped connection (see topology.EVENTS_QUEUE_ARGUMENTS): events published
while it reconnects wait there, and the robust channel consumes from it again once it is back. A broker
restart loses the queue (it is not durable) and the events of that gap; the restore declares it anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
    HeadersType,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelPreconditionFailed, DeliveryError, PublishError
from pamqp.commands import Basic

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
    DEAD_LETTER_EXCHANGE,
    DEAD_REASON_HEADER,
    DEFAULT_MAX_LENGTH,
    DELAY_QUEUES,
    DUE_HEADER,
    EVENTS_EXCHANGE,
    EVENTS_QUEUE_ARGUMENTS,
    EVENTS_QUEUE_PREFIX,
    EXCHANGE,
    QUEUES,
    SWEPT_HEADER,
    QueueSpec,
    delay_queue,
    queue_spec,
)

log = logging.getLogger(__name__)

# aio-pika's own list of what a lost connection or channel raises, plus our deadline.
FAILURES = (*CONNECTION_EXCEPTIONS, TimeoutError)
# aio-pika's default is 5 s; a consumer or gateway should be back sooner after a broker restart.
RECONNECT_INTERVAL = 1.0
# Events are best effort: while the broker is away a publisher gives up on one this soon, because it
# publishes them on the way to acknowledging finished jobs.
EVENT_PUBLISH_TIMEOUT = 1.0


def _spec(queue: str) -> QueueSpec:
    try:
        return queue_spec(queue)
    except KeyError as exc:
        raise BrokerError(str(exc)) from None


@dataclass(frozen=True)
class WorkQueues:
    """How this process declares work queues: with the length limit, except those existing with others."""

    max_length: int = DEFAULT_MAX_LENGTH
    kept: frozenset[str] = frozenset()  # existing queues declared passively, keeping their own arguments


async def _declare_work_queue(
    channel: AbstractRobustChannel, spec: QueueSpec, queues: WorkQueues
) -> AbstractQueue:
    if spec.name in queues.kept:
        return await channel.declare_queue(spec.name, passive=True)
    return await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments(queues.max_length))


async def find_kept_queues(connection: AbstractRobustConnection, max_length: int) -> frozenset[str]:
    """Work queues that exist with arguments other than ours; declares the missing ones as a side effect."""
    kept = set()
    for spec in QUEUES:
        # A refused declaration closes its channel: a scratch one each time, never a robust-recorded one.
        channel = await connection.channel(publisher_confirms=False)
        try:
            await channel.declare_queue(
                spec.name, durable=True, arguments=spec.arguments(max_length), robust=False
            )
        except ChannelPreconditionFailed as exc:
            log.warning("broker_queue_kept queue=%s reason=%s", spec.name, exc)
            kept.add(spec.name)
        finally:
            if not channel.is_closed:
                await channel.close()
    return frozenset(kept)


async def _declare_events_exchange(channel: AbstractRobustChannel) -> AbstractExchange:
    return await channel.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)


async def declare_topology(
    channel: AbstractRobustChannel, queues: WorkQueues = WorkQueues()
) -> AbstractExchange:
    """Declare exchanges, work queues and dead-letter queues; returns the work exchange."""
    await _declare_events_exchange(channel)
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    dead = await channel.declare_exchange(DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    for spec in QUEUES:
        work = await _declare_work_queue(channel, spec, queues)
        await work.bind(exchange, routing_key=spec.name)
        dead_letters = await channel.declare_queue(spec.dead_letter_queue, durable=True)
        await dead_letters.bind(dead, routing_key=spec.dead_letter_queue)
    for delay in DELAY_QUEUES:
        waiting = await channel.declare_queue(delay.name, durable=True, arguments=delay.arguments)
        await waiting.bind(exchange, routing_key=delay.name)
    return exchange


def _now_ms() -> int:
    # Wall-clock, not monotonic: the due time travels between processes (and machines) in a header.
    return int(time.time() * 1000)


def _remaining_ms(message: AbstractIncomingMessage) -> int:
    due = message.headers.get(DUE_HEADER)
    return due - _now_ms() if isinstance(due, int) else 0


def _text(value: object) -> str | None:
    """A header value as text: AMQP tables carry strings as bytes or str depending on who wrote them."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None


# Publishes a message through the default exchange to the queue named by the routing key, confirmed.
DirectSend = Callable[[aio_pika.Message, str], Awaitable[None]]


class AmqpDelivery(Delivery):
    def __init__(self, message: AbstractIncomingMessage, spec: QueueSpec, send: DirectSend) -> None:
        headers = dict(message.headers)
        # Quorum queues count earlier deliveries in x-delivery-count (absent or 0 on the first one).
        previous = headers.pop("x-delivery-count", None)
        self.body = message.body
        self.headers = headers
        self.message_id = message.message_id
        self.delivery_count = (previous if isinstance(previous, int) else 0) + 1
        self.reply_to = message.reply_to
        self.correlation_id = message.correlation_id
        self._message = message
        self._spec = spec
        self._send = send

    async def ack(self) -> None:
        try:
            await self._message.ack()
        except FAILURES as exc:
            # The channel is gone: the broker has already requeued the message and will redeliver it.
            raise BrokerError(f"ack failed: {exc!r}") from exc

    async def reject(self, *, requeue: bool) -> None:
        try:
            await self._message.reject(requeue=requeue)
        except FAILURES as exc:
            raise BrokerError(f"reject failed: {exc!r}") from exc

    async def dead_letter(self, reason: str) -> None:
        copy = aio_pika.Message(
            self.body,
            headers={**self.headers, DEAD_REASON_HEADER: reason},
            message_id=self.message_id,
            reply_to=self.reply_to,
            correlation_id=self.correlation_id,
            content_type=self._message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        # Copy first, ack second: a failure in between leaves the original to be redelivered (and perhaps
        # dead-lettered twice), never lost.
        await self._send(copy, self._spec.dead_letter_queue)
        await self.ack()


class AmqpSubscription(Subscription):
    def __init__(
        self, channel: AbstractRobustChannel, queue: AbstractQueue, consumer_tag: str, timeout: float
    ) -> None:
        self._channel = channel
        self._queue = queue
        self._consumer_tag = consumer_tag
        self._timeout = timeout
        self._receiving_stopped = False

    async def stop_receiving(self) -> None:
        if self._channel.is_closed or self._receiving_stopped:
            return
        self._receiving_stopped = True
        # While the connection is down this would wait for it; the broker has returned the deliveries anyway.
        with contextlib.suppress(*FAILURES):
            await self._queue.cancel(self._consumer_tag, timeout=self._timeout)

    async def cancel(self) -> None:
        if self._channel.is_closed:
            return
        await self.stop_receiving()
        # basic.cancel keeps unacked deliveries on the channel; closing it hands them back to the queue.
        await self._channel.close()


class AmqpEventSubscription(AmqpSubscription):
    async def cancel(self) -> None:
        if self._channel.is_closed:
            return
        await self.stop_receiving()
        # The queue would expire on its own; deleting it now stops events piling up for nobody meanwhile.
        with contextlib.suppress(*FAILURES):
            await self._queue.delete(if_unused=False, if_empty=False, timeout=self._timeout)
        await self._channel.close()


# A confirm normally arrives in milliseconds; 4 s leaves the gateway room to answer 503 within 6 s of the
# request while the broker is down (measured in tests/faults/test_chaos.py).
PUBLISH_TIMEOUT_S = 4.0


class AmqpBroker(Broker):
    def __init__(
        self, url: str, *, publish_timeout: float = PUBLISH_TIMEOUT_S, max_length: int = DEFAULT_MAX_LENGTH
    ) -> None:
        self._url = url
        self._timeout = publish_timeout
        self._queues = WorkQueues(max_length)
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._events_channel: AbstractRobustChannel | None = None
        self._events: AbstractExchange | None = None

    async def start(self) -> None:
        try:
            # timeout bounds each connection attempt; with fail_fast (the default) a failed first attempt
            # raises here instead of retrying in the background.
            self._connection = await aio_pika.connect_robust(
                self._url, timeout=self._timeout, reconnect_interval=RECONNECT_INTERVAL
            )
            async with asyncio.timeout(self._timeout):
                kept = await find_kept_queues(self._connection, self._queues.max_length)
                self._queues = WorkQueues(self._queues.max_length, kept)
                self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
                self._exchange = await declare_topology(self._channel, self._queues)
                self._events_channel = await self._connection.channel(publisher_confirms=False)
                # Declared on this channel too, so its restore never depends on the publisher channel's.
                self._events = await _declare_events_exchange(self._events_channel)
        except FAILURES as exc:
            await self.close()
            raise BrokerUnavailable(f"cannot reach RabbitMQ: {exc!r}") from exc

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
        self._connection = self._channel = self._exchange = None
        self._events_channel = self._events = None

    def _connected(self) -> tuple[AbstractRobustConnection, AbstractRobustChannel, AbstractExchange]:
        if self._connection is None or self._channel is None or self._exchange is None:
            raise BrokerUnavailable("the broker is not started")
        return self._connection, self._channel, self._exchange

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
        _spec(queue)
        routing_key = queue
        sent_headers: HeadersType = dict(headers or {})
        if delay_s > 0:
            try:
                routing_key = delay_queue(queue, delay_s * 1000).name
            except KeyError as exc:
                raise BrokerError(str(exc)) from None
            sent_headers[DUE_HEADER] = _now_ms() + round(delay_s * 1000)
        # The properties aio_pika.Message would give, built directly: the Message object cost 24 us a
        # publish, the properties 1 us, on every job the gateway accepts.
        properties = Basic.Properties(
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT.value,
            priority=0,
            correlation_id=correlation_id,
            reply_to=reply_to,
            message_id=message_id,
            headers=sent_headers,
        )
        _, _, exchange = self._connected()
        await self._confirmed(
            exchange, body, properties, routing_key, mandatory=True, what=f"publish to {queue}"
        )

    async def _send(self, queue: str, routing_key: str, message: aio_pika.Message) -> None:
        _, _, exchange = self._connected()
        await self._confirmed(
            exchange,
            message.body,
            message.properties,
            routing_key,
            mandatory=True,
            what=f"publish to {queue}",
        )

    async def _send_direct(self, message: aio_pika.Message, queue: str) -> None:
        _, channel, _ = self._connected()
        await self._confirmed(
            channel.default_exchange,
            message.body,
            message.properties,
            queue,
            mandatory=True,
            what=f"send to {queue}",
        )

    async def _confirmed(
        self,
        exchange: AbstractExchange,
        body: bytes,
        properties: Basic.Properties,
        routing_key: str,
        *,
        mandatory: bool,
        what: str,
    ) -> None:
        """Publish through `exchange` (of the publisher channel) and wait for the broker's confirm."""
        _, channel, _ = self._connected()
        try:
            async with asyncio.timeout(self._timeout):
                # While reconnecting this waits for the connection and the re-declared topology.
                await channel.ready()
                # What exchange.publish does, without needing an aio_pika.Message (see publish).
                underlay = await channel.get_underlay_channel()
                # mandatory + on_return_raises: an unroutable message raises instead of vanishing.
                await underlay.basic_publish(
                    body,
                    exchange=exchange.name,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=mandatory,
                )
        except DeliveryError as exc:
            # A nack (not a return: PublishError) is a bounded queue refusing the message: it is full.
            if not isinstance(exc, PublishError) and isinstance(exc.frame, Basic.Nack):
                raise QueueFull(f"{what} refused: the queue is full") from exc
            raise BrokerUnavailable(f"{what} not confirmed: {exc!r}") from exc
        except FAILURES as exc:
            raise BrokerUnavailable(f"{what} not confirmed: {exc!r}") from exc

    async def reply(self, reply_to: str, body: bytes, *, correlation_id: str | None) -> None:
        _, channel, _ = self._connected()
        message = aio_pika.Message(
            body,
            correlation_id=correlation_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        # Not mandatory: a producer that left took its reply queue along, and its answer has nowhere to go.
        await self._confirmed(
            channel.default_exchange,
            message.body,
            message.properties,
            reply_to,
            mandatory=False,
            what=f"reply to {reply_to}",
        )

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Subscription:
        spec = _spec(queue)
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        connection, _, _ = self._connected()

        async def on_message(message: AbstractIncomingMessage) -> None:
            try:
                if (remaining := _remaining_ms(message)) > 0:
                    await self._delay_further(queue, message, remaining)
                    return
                await handler(AmqpDelivery(message, spec, self._send_direct))
            except Exception:
                # The delivery stays unacknowledged until the subscription ends, as in the in-process broker.
                log.exception("broker_handler_failed queue=%s", queue)

        try:
            async with asyncio.timeout(self._timeout):
                # Its own channel: qos applies per channel, and closing it returns only its deliveries.
                channel = await connection.channel(publisher_confirms=False)
                await channel.set_qos(prefetch_count=prefetch)
                # Declared here too (same arguments, so idempotent) so this channel's restore never depends
                # on the publisher channel having been restored first.
                work = await _declare_work_queue(channel, spec, self._queues)
                tag = await work.consume(on_message, no_ack=False)
        except FAILURES as exc:
            raise BrokerUnavailable(f"cannot consume from {queue}: {exc!r}") from exc
        return AmqpSubscription(channel, work, tag, self._timeout)

    async def _delay_further(self, queue: str, message: AbstractIncomingMessage, remaining_ms: int) -> None:
        """A delay longer than one step: the next hop keeps the due time; the handler never sees it."""
        headers = {k: v for k, v in message.headers.items() if not k.startswith("x-") or k == DUE_HEADER}
        hop = delay_queue(queue, remaining_ms).name
        forwarded = aio_pika.Message(
            message.body,
            headers=headers,
            message_id=message.message_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self._send(queue, hop, forwarded)
        await message.ack()

    async def publish_event(self, body: bytes) -> None:
        if self._events_channel is None or self._events is None:
            log.warning("broker_event_dropped reason=not_started")
            return
        message = aio_pika.Message(
            body, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT
        )
        try:
            async with asyncio.timeout(EVENT_PUBLISH_TIMEOUT):
                await self._events_channel.ready()
                await self._events.publish(message, routing_key="")
        except Exception as exc:
            # Best effort by contract: subscribers fall back on their own deadlines.
            log.warning("broker_event_dropped error=%r", exc)

    async def subscribe_events(self, handler: EventHandler) -> Subscription:
        connection, _, _ = self._connected()

        async def on_message(message: AbstractIncomingMessage) -> None:
            try:
                await handler(message.body)
            except Exception:
                log.exception("broker_event_handler_failed")

        try:
            async with asyncio.timeout(self._timeout):
                channel = await connection.channel(publisher_confirms=False)
                exchange = await _declare_events_exchange(channel)
                # A name of our own, so the channel's restore declares the same queue again after a reconnect
                # and finds the events that arrived meanwhile.
                queue = await channel.declare_queue(
                    EVENTS_QUEUE_PREFIX + uuid.uuid4().hex, arguments=EVENTS_QUEUE_ARGUMENTS
                )
                await queue.bind(exchange, routing_key="")
                # no_ack: an event is a hint, not work; nothing is gained by redelivering it.
                tag = await queue.consume(on_message, no_ack=True)
        except FAILURES as exc:
            raise BrokerUnavailable(f"cannot subscribe to events: {exc!r}") from exc
        return AmqpEventSubscription(channel, queue, tag, self._timeout)

    @asynccontextmanager
    async def _inspection_channel(self) -> AsyncIterator[AbstractRobustChannel]:
        """A short-lived channel, so a failed passive declare never closes the publisher's channel."""
        connection, _, _ = self._connected()
        try:
            async with asyncio.timeout(self._timeout):
                async with connection.channel(publisher_confirms=False) as channel:
                    yield channel
        except FAILURES as exc:
            raise BrokerUnavailable(f"cannot inspect queues: {exc!r}") from exc

    async def queue_depth(self, queue: str) -> int:
        spec = _spec(queue)
        async with self._inspection_channel() as channel:
            declared = await channel.declare_queue(spec.name, passive=True, robust=False)
        return _message_count(declared)

    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        """For tests and inspection only: holds every dead letter unacked at once, then gives all back.

        Each message is fetched with basic.get and kept unacknowledged (a message requeued at once would be
        the next one fetched again); closing the channel returns them all in their original order.
        """
        spec = _spec(queue)
        letters: list[DeadLetter] = []
        async with self._inspection_channel() as channel:
            dead = await channel.declare_queue(spec.dead_letter_queue, passive=True, robust=False)
            for _ in range(_message_count(dead)):
                message = await dead.get(no_ack=False, fail=False)
                if message is None:
                    break
                letters.append(DeadLetter(message.body, _text(message.headers.get(DEAD_REASON_HEADER))))
        return letters

    async def sweep_dead_letters(self, queue: str, handle: SweepHandler, *, limit: int) -> int:
        """Letters are fetched unacknowledged on a channel of their own, then each is copied, marked, to the
        back of the queue (confirmed) and only then acked: a failure before the copy leaves it where it was
        (closing the channel gives it back), one between copy and ack leaves it twice, never lost."""
        spec = _spec(queue)
        connection, _, _ = self._connected()
        try:
            async with asyncio.timeout(self._timeout):
                channel = await connection.channel(publisher_confirms=False)
        except FAILURES as exc:
            raise BrokerUnavailable(f"cannot sweep dead letters: {exc!r}") from exc
        try:
            fetched: list[AbstractIncomingMessage] = []
            async with asyncio.timeout(self._timeout):
                dead = await channel.declare_queue(spec.dead_letter_queue, passive=True, robust=False)
            for _ in range(min(limit, _message_count(dead))):
                async with asyncio.timeout(self._timeout):
                    message = await dead.get(no_ack=False, fail=False)
                if message is None:
                    break
                fetched.append(message)
        except FAILURES as exc:
            await _close_quietly(channel, self._timeout)
            raise BrokerUnavailable(f"cannot sweep dead letters: {exc!r}") from exc
        try:
            # Outside the broker's error handling: aio-pika counts RuntimeError among connection failures.
            await handle(
                [
                    DeadLetter(message.body, _text(message.headers.get(DEAD_REASON_HEADER)))
                    for message in fetched
                    if SWEPT_HEADER not in message.headers
                ]
            )
        except BaseException:
            await _close_quietly(channel, self._timeout)
            raise
        try:
            for message in fetched:
                copy = aio_pika.Message(
                    message.body,
                    headers={**message.headers, SWEPT_HEADER: 1},
                    message_id=message.message_id,
                    reply_to=message.reply_to,
                    correlation_id=message.correlation_id,
                    content_type=message.content_type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                )
                await self._send_direct(copy, spec.dead_letter_queue)
                async with asyncio.timeout(self._timeout):
                    await message.ack()
        except FAILURES as exc:
            raise BrokerUnavailable(f"cannot sweep dead letters: {exc!r}") from exc
        finally:
            await _close_quietly(channel, self._timeout)
        return len(fetched)


async def _close_quietly(channel: AbstractChannel, within_s: float) -> None:
    """Close a channel of our own; unacknowledged messages go back to their queue."""
    with contextlib.suppress(*FAILURES):
        async with asyncio.timeout(within_s):
            await channel.close()


def _message_count(queue: AbstractQueue) -> int:
    result = queue.declaration_result
    return result.message_count or 0
