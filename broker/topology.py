"""Queue topology as data, declared on every (re)connect."""

from __future__ import annotations

from dataclasses import dataclass

EXCHANGE = "percept"
DEAD_LETTER_EXCHANGE = "percept.dead"


@dataclass(frozen=True)
class QueueSpec:
    name: str
    delivery_limit: int  # deliveries before a message is dead-lettered

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}.dead"


INFERENCE = QueueSpec("percept.inference", delivery_limit=5)
DEPLOYMENT = QueueSpec("percept.deployment", delivery_limit=3)
QUEUES: tuple[QueueSpec, ...] = (INFERENCE, DEPLOYMENT)


def queue_spec(name: str) -> QueueSpec:
    for spec in QUEUES:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown queue {name!r}")
