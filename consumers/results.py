"""Task outcomes are written in bulk: outcomes that finish together share one store write."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from consumers.batcher import Batcher
from schemas.documents import TaskOutcome
from store.port import Store

_KEY = "outcomes"


class ResultWriter:
    def __init__(self, store: Store, *, max_size: int = 256) -> None:
        self._store = store
        self.batcher: Batcher[TaskOutcome, None] = Batcher(self._write_many, max_size=max_size, max_delay=0.0)

    async def _write_many(self, _key: Hashable, outcomes: Sequence[TaskOutcome]) -> list[None]:
        await self._store.finish_tasks(outcomes)
        return [None] * len(outcomes)

    async def write(self, outcome: TaskOutcome) -> None:
        """Returns once the outcome is stored (or the task was already terminal)."""
        await self.batcher.submit(_KEY, outcome)
