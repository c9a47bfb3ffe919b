"""The broker port. Consumers receive deliveries through a handler and own their fate (ack or reject).

Besides work queues, the broker carries events: small notices fanned out to every current subscriber, with
no persistence and no acknowledgement. An event can be lost (a broker restart, a subscriber that is away),
so events may only speed things up (wake a long poll), never carry state that exists nowhere else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any


class BrokerError(Exception):
    """Base of the broker's errors."""


class BrokerUnavailable(BrokerError):
    """A publish could not be confirmed: the job was not handed over, callers answer 503."""


class QueueFull(BrokerUnavailable):
    """The queue is at its length limit and refused the message (RabbitMQ nacked the publish).

    Nothing was queued. A subclass of BrokerUnavailable, so that every publisher already retries it later;
    the gateway tells it apart to answer "queue full" rather than "broker down".
    """


class Delivery(ABC):
    body: bytes
    headers: Mapping[str, Any]
    message_id: str | None
    delivery_count: int  # 1 on the first delivery
    reply_to: str | None  # AMQP properties of a request that wants an answer (queue producers' RPC)
    correlation_id: str | None

    @abstractmethod
    async def ack(self) -> None: ...

    @abstractmethod
    async def reject(self, *, requeue: bool) -> None:
        """requeue=False dead-letters the message (when its queue has a dead-letter queue)."""

    @abstractmethod
    async def dead_letter(self, reason: str) -> None:
        """Settle by moving the message to its dead-letter queue with `reason` (topology.DEAD_REASON_HEADER).

        RabbitMQ cannot add a header when it dead-letters a rejected message, so this publishes a copy to
        the dead-letter queue (confirmed) and then acks the original.
        """


@dataclass(frozen=True)
class DeadLetter:
    body: bytes
    reason: str | None  # None when the broker dead-lettered it (delivery limit, plain reject)


Handler = Callable[[Delivery], Awaitable[None]]
SweepHandler = Callable[[list[DeadLetter]], Awaitable[None]]
EventHandler = Callable[[bytes], Awaitable[None]]


class Subscription(ABC):
    @abstractmethod
    async def stop_receiving(self) -> None:
        """No new deliveries; those already received can still be acked or rejected (graceful shutdown)."""

    @abstractmethod
    async def cancel(self) -> None:
        """Stop receiving; deliveries not yet settled go back to the queue."""


class Broker(ABC):
    @abstractmethod
    async def start(self) -> None:
        """Connect and declare the topology (again on every reconnect)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
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
        """Persistent publish; returns once the broker confirmed it, else raises BrokerUnavailable.

        QueueFull (a BrokerUnavailable) when the queue is bounded (topology.QueueSpec.bounded) and holds its
        length limit of ready messages; RabbitMQ may admit one message past the limit and, once full, admits
        again only when the queue has drained below 80% of it.

        With `delay_s`, the message is delivered no sooner than that (to within the shortest delay step),
        without holding a consumer meanwhile; only queues with delay queues (topology.DELAY_QUEUES) take it.
        """

    @abstractmethod
    async def reply(self, reply_to: str, body: bytes, *, correlation_id: str | None) -> None:
        """Publish an RPC answer to the queue named `reply_to` (default exchange), confirmed when it exists.

        A reply queue that is gone (its producer left) drops the answer silently, as RabbitMQ does;
        BrokerUnavailable when the broker cannot be reached.
        """

    @abstractmethod
    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Subscription:
        """At most `prefetch` unacknowledged deliveries at once; the handler must not block for long."""

    @abstractmethod
    async def queue_depth(self, queue: str) -> int:
        """Messages ready in the queue (not counting unacknowledged ones)."""

    @abstractmethod
    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        """The queue's dead letters, for inspection and tests (does not consume them)."""

    @abstractmethod
    async def sweep_dead_letters(self, queue: str, handle: SweepHandler, *, limit: int) -> int:
        """Hand the dead letters no sweep has handled yet, among the next `limit` of the queue, to `handle`;
        returns how many letters were looked at.

        Every letter looked at is marked handled (topology.SWEPT_HEADER) and moved to the back of the
        dead-letter queue, where `dead_letters` still lists it; the next sweep goes on from there. So a sweep
        costs at most `limit` letters however long the queue, and every letter is reached within
        length / limit sweeps. Marking happens only after `handle` returned: if it raises, the letters stay
        unmarked, where they were, and the error propagates.
        """

    @abstractmethod
    async def publish_event(self, body: bytes) -> None:
        """Hand an event to every current subscriber, best effort: never raises, failures are logged."""

    @abstractmethod
    async def subscribe_events(self, handler: EventHandler) -> Subscription:
        """Receive every event published from now on (and again after a reconnect) until cancelled.

        Returns once the subscription is in place. The handler must not block for long; its exceptions are
        logged and dropped.
        """
