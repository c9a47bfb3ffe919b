"""Task outcomes are written in bulk: outcomes that finish together share one store write and one event."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from broker.port import Broker
from consumers.batcher import Batcher
from schemas.documents import TaskOutcome
from schemas.messages import TaskEvent
from store.port import Store

_KEY = "outcomes"


class ResultWriter:
    def __init__(self, store: Store, broker: Broker, *, max_size: int = 256) -> None:
        self._store = store
        self._broker = broker
        self.batcher: Batcher[TaskOutcome, None] = Batcher(self._write_many, max_size=max_size, max_delay=0.0)

    async def _write_many(self, _key: Hashable, outcomes: Sequence[TaskOutcome]) -> list[None]:
        await self._store.finish_tasks(outcomes)
        # Only after the write: whoever the event wakes reads the stored outcome. Tasks that were already
        # terminal (a redelivery) are named too; waking their waiters again is harmless.
        event = TaskEvent(task_ids=[outcome.task_id for outcome in outcomes])
        await self._broker.publish_event(event.model_dump_json().encode())
        return [None] * len(outcomes)

    async def write(self, outcome: TaskOutcome) -> None:
        """Returns once the outcome is stored (or the task was already terminal) and announced."""
        await self.batcher.submit(_KEY, outcome)
