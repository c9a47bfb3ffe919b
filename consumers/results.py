"""Task outcomes are written in bulk: outcomes that finish together share one store write and one event."""

from __future__ import annotations

import uuid
from collections.abc import Hashable, Sequence

import structlog

from broker.port import Broker, BrokerUnavailable
from broker.topology import WEBHOOKS
from consumers.batcher import Batcher
from schemas.documents import HOOKS_OWNER, TaskOutcome
from schemas.messages import TaskEvent
from schemas.webhooks import HookedTask, WebhookTrigger
from store.port import TASK_HOOKS, Store, StoreUnavailable

log = structlog.get_logger("results")

_KEY = "outcomes"


class ResultWriter:
    def __init__(self, store: Store, broker: Broker, *, max_size: int = 256) -> None:
        self._store = store
        self._broker = broker
        self.batcher: Batcher[TaskOutcome, None] = Batcher(self._write_many, max_size=max_size, max_delay=0.0)

    async def _write_many(self, _key: Hashable, outcomes: Sequence[TaskOutcome]) -> list[None]:
        await self._store.finish_tasks(outcomes)
        task_ids = [outcome.task_id for outcome in outcomes]
        # Only after the write: whoever the event wakes reads the stored outcome. Tasks that were already
        # terminal (a redelivery) are named too; waking their waiters again is harmless.
        event = TaskEvent(task_ids=task_ids)
        await self._broker.publish_event(event.model_dump_json().encode())
        await self._trigger_webhooks(task_ids)
        return [None] * len(outcomes)

    async def _trigger_webhooks(self, task_ids: list[str]) -> None:
        """One read by id per batch; only tasks hooked at submission (callback_url or endpoints) are found.

        A redelivered job whose task is already terminal skips the write, so a trigger lost here is not
        retried: it is logged, and the results stay correct.
        """
        try:
            hooks = await self._store.get_many(TASK_HOOKS, task_ids, owners=[HOOKS_OWNER])
            if not hooks:
                return
            trigger = WebhookTrigger(
                tasks=[HookedTask(task_id=h.id, tenant=h.tenant, callback_url=h.callback_url) for h in hooks]
            )
            await self._broker.publish(
                WEBHOOKS.name, trigger.model_dump_json().encode(), message_id=f"trigger.{uuid.uuid4().hex}"
            )
        except (StoreUnavailable, BrokerUnavailable) as error:
            log.error("webhook_trigger_lost", task_ids=task_ids, error=str(error))

    async def write(self, outcome: TaskOutcome) -> None:
        """Returns once the outcome is stored (or the task was already terminal) and announced."""
        await self.batcher.submit(_KEY, outcome)
