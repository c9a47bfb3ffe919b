"""Queue topology as data, declared on every (re)connect.

Every work queue is a durable quorum queue on the direct exchange `percept`, bound with its own name as
routing key. A message is dead-lettered (to `<name>.dead`, a durable classic queue bound on the direct
exchange `percept.dead`) when it is rejected without requeue or after `delivery_limit` deliveries.

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


@dataclass(frozen=True)
class QueueSpec:
    name: str
    delivery_limit: int  # deliveries before a message is dead-lettered

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}.dead"

    def __post_init__(self) -> None:
        if self.delivery_limit < 1:
            raise ValueError(f"{self.name}: delivery_limit must be at least 1")

    @property
    def arguments(self) -> dict[str, Any]:
        """RabbitMQ arguments of the work queue."""
        return {
            "x-queue-type": "quorum",
            # RabbitMQ dead-letters once the count of *returns* exceeds x-delivery-limit, so a limit of N-1
            # allows N deliveries (measured on 3.10: x-delivery-limit 2 gives 3 deliveries).
            "x-delivery-limit": self.delivery_limit - 1,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": self.dead_letter_queue,
        }


INFERENCE = QueueSpec("percept.inference", delivery_limit=5)
DEPLOYMENT = QueueSpec("percept.deployment", delivery_limit=3)
QUEUES: tuple[QueueSpec, ...] = (INFERENCE, DEPLOYMENT)


def queue_spec(name: str) -> QueueSpec:
    for spec in QUEUES:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown queue {name!r}")
