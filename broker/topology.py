"""Queue topology as data, declared on every (re)connect.

Every work queue is a durable quorum queue on the direct exchange `percept`, bound with its own name as
routing key. A message is dead-lettered (to `<name>.dead`, a durable classic queue bound on the direct
exchange `percept.dead`) when it is rejected without requeue or after `delivery_limit` deliveries.

Delays (webhook retries) hold no consumer: a delayed message waits in a TTL queue `<name>.delay.<ms>` that
dead-letters it back to its work queue on the `percept` exchange. Each delay queue has a single TTL, so its
messages expire in the order they entered; a delay between steps hops through several of them, the message
carrying when it is due in the `DUE_HEADER` header.

Work queues a submission publishes into are bounded (`QueueSpec.bounded`): past `max_length` ready messages
RabbitMQ refuses a publish (`x-overflow: reject-publish`, a nack with publisher confirms), so a flood of
submissions is answered "queue full" instead of growing the queue until the broker runs out of memory.
The webhook queue is not bounded: delayed retries are dead-lettered back into it, and RabbitMQ drops a
dead-lettered message that a full queue refuses.

Events (a task finished) are not work: they go to the fanout exchange `percept.events`, non-persistent, and
each subscriber (one per gateway process) reads them from its own transient queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EXCHANGE = "percept"
DEAD_LETTER_EXCHANGE = "percept.dead"
EVENTS_EXCHANGE = "percept.events"
EVENTS_QUEUE_PREFIX = "percept.events."  # + a random suffix, one queue per subscriber
# Arguments of a subscriber's queue. Not exclusive: after a network cut the server may still hold the old
# connection while the client reconnects, and redeclaring an exclusive queue would then fail with
# RESOURCE_LOCKED. Instead a queue nobody consumes from expires, so a crashed subscriber leaves nothing
# behind for long, and a length cap bounds what piles up meanwhile.
EVENTS_QUEUE_ARGUMENTS: dict[str, Any] = {"x-expires": 60_000, "x-max-length": 10_000}


# Ready messages a bounded work queue holds (PERCEPT_QUEUE_MAX_LENGTH). RabbitMQ refuses to redeclare a queue
# with another value, so processes sharing a broker must agree on it (see broker.amqp on existing queues).
DEFAULT_MAX_LENGTH = 100_000


@dataclass(frozen=True)
class QueueSpec:
    name: str
    delivery_limit: int  # deliveries before a message is dead-lettered
    bounded: bool = True  # refuses publishes past the length limit

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}.dead"

    def __post_init__(self) -> None:
        if self.delivery_limit < 1:
            raise ValueError(f"{self.name}: delivery_limit must be at least 1")

    def arguments(self, max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, Any]:
        """RabbitMQ arguments of the work queue."""
        if max_length < 1:
            raise ValueError(f"{self.name}: max_length must be at least 1")
        arguments: dict[str, Any] = {
            "x-queue-type": "quorum",
            # RabbitMQ dead-letters once the count of *returns* exceeds x-delivery-limit, so a limit of N-1
            # allows N deliveries (measured on 3.10: x-delivery-limit 2 gives 3 deliveries).
            "x-delivery-limit": self.delivery_limit - 1,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": self.dead_letter_queue,
        }
        if self.bounded:
            # Measured on 3.10 with a limit of 3: the 4th publish is
            # confirmed, the 5th nacked, and publishes are confirmed again below 80% of the limit.
            arguments |= {"x-max-length": max_length, "x-overflow": "reject-publish"}
        return arguments


# Room for a job prefetched by consumers that crash again and again for another job's sake: the culprit is
# found in three deliveries (consumers.inference runs redelivered jobs alone), its neighbours must outlast it.
INFERENCE = QueueSpec("percept.inference", delivery_limit=10)
DEPLOYMENT = QueueSpec("percept.deployment", delivery_limit=3)
# Its own queue, so that slow or dead receivers never hold up inference; HTTP failures are retried by new,
# delayed messages, so the limit only counts redeliveries after a consumer crash.
WEBHOOKS = QueueSpec("percept.webhooks", delivery_limit=5, bounded=False)
# Queue producers publish here (schemas.producer.ProducerRequest); a consumer turns each request into a task
# and an ordinary job on INFERENCE, so both doors share batching and scale-out.
REQUESTS = QueueSpec("percept.requests", delivery_limit=5)
# Annolab batch jobs: each message is one chunk of a job's sources (schemas.annolab.BatchChunk), which a
# consumer turns into ordinary jobs on INFERENCE_BATCH; chunks are published as earlier ones finish.
BATCH = QueueSpec("percept.batch", delivery_limit=5)
# The inference jobs of batch chunks, apart from interactive ones: RabbitMQ 3.10's quorum queues have no
# message priorities, so "interactive first" is two queues. Consumers take these with a prefetch of one model
# batch (consumers.service), so an interactive job meets at most one batch run of them ahead of it, however
# long the batch job. Same handler and the same delivery limit as INFERENCE (consumers.inference settles
# with INFERENCE's), same dead-lettering.
INFERENCE_BATCH = QueueSpec("percept.inference.batch", delivery_limit=INFERENCE.delivery_limit)
QUEUES: tuple[QueueSpec, ...] = (INFERENCE, DEPLOYMENT, WEBHOOKS, REQUESTS, BATCH, INFERENCE_BATCH)
# Queues whose messages are schemas.messages.InferenceJob, for whoever inspects their dead letters.
INFERENCE_QUEUES: tuple[QueueSpec, ...] = (INFERENCE, INFERENCE_BATCH)
# Why a message was dead-lettered, on the dead letter itself (Delivery.dead_letter).
DEAD_REASON_HEADER = "x-percept-dead-reason"
# On a dead letter once a sweep has handled it (Broker.sweep_dead_letters), so later sweeps skip it.
SWEPT_HEADER = "x-percept-swept"

DUE_HEADER = "x-percept-due-ms"  # epoch milliseconds at which a delayed message is due
# Roughly 5 times apart, so a delay of up to a day takes a handful of hops; the first step is short so
# that short delays (tests, first retries) stay short.
DELAY_STEPS_MS = (100, 500, 2_000, 10_000, 60_000, 300_000, 1_800_000, 10_800_000, 43_200_000)


@dataclass(frozen=True)
class DelayQueue:
    target: str  # the work queue it dead-letters to
    ttl_ms: int

    @property
    def name(self) -> str:
        return f"{self.target}.delay.{self.ttl_ms}"

    @property
    def arguments(self) -> dict[str, Any]:
        return {
            "x-message-ttl": self.ttl_ms,
            "x-dead-letter-exchange": EXCHANGE,
            "x-dead-letter-routing-key": self.target,
        }


DELAY_QUEUES: tuple[DelayQueue, ...] = tuple(DelayQueue(WEBHOOKS.name, ms) for ms in DELAY_STEPS_MS)


def delay_queue(target: str, remaining_ms: float) -> DelayQueue:
    """The longest step not past `remaining_ms` (the shortest if all are); KeyError if `target` has none."""
    steps = [queue for queue in DELAY_QUEUES if queue.target == target]
    if not steps:
        raise KeyError(f"queue {target!r} has no delay queues")
    fitting = [queue for queue in steps if queue.ttl_ms <= remaining_ms]
    return fitting[-1] if fitting else steps[0]


def queue_spec(name: str) -> QueueSpec:
    for spec in QUEUES:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown queue {name!r}")
