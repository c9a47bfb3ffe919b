"""Periodic upkeep, run by every consumer process: jobs a dead gateway recorded but never published are
published (the outbox), deployments whose worker died (their lease ran out) are queued again, inference jobs
the broker dead-lettered on its own end their tasks in error, and expired results and logs are deleted.

Every step is safe to run from several processes at once (each deletes what it finds; a document deleted twice
is deleted once), so there is no leader to elect. MongoDB's TTL indexes do the same deletions on their own;
this loop makes both adapters behave alike and keeps SQLite from growing without bound.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import structlog

from broker.port import Broker, BrokerUnavailable, DeadLetter
from broker.topology import DEPLOYMENT, INFERENCE_QUEUES
from consumers.inputs import ParentRef
from consumers.results import ResultWriter
from consumers.runner import wait_for_store
from schemas.common import utc_now
from schemas.documents import TaskOutcome, TaskStatus
from schemas.messages import DeploymentJob, InferenceJob
from schemas.networks import NetworkStatus
from store import outbox
from store.port import EXPIRING, NETWORKS, TASKS, Store, StoreUnavailable

log = structlog.get_logger("maintenance")

_PURGE_PAGE = 1000
# Dead letters one round looks at, whatever the length of the queue (see fail_dead_lettered).
DEAD_LETTER_SWEEP = 500
BROKER_DEAD_LETTERED = (
    "dead-lettered by the broker at its delivery limit: the consumers running this job kept stopping"
)


class Maintenance:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        *,
        results: ResultWriter,
        retention: timedelta | None,
        interval_s: float,
        outbox_grace: timedelta = timedelta(seconds=60),
    ) -> None:
        self._store = store
        self._broker = broker
        self._results = results  # its batcher runs in the consumer service
        self._retention = retention
        self._interval_s = interval_s
        # Longer than any submission takes between recording its job and the broker's confirm.
        self._outbox_grace = outbox_grace

    async def run(self) -> None:
        while True:
            # Jitter, so that consumers started together do not sweep in lockstep.
            await asyncio.sleep(self._interval_s * random.uniform(0.5, 1.5))
            try:
                await self.sweep()
            except StoreUnavailable as error:
                await wait_for_store(self._store, error)

    async def sweep(self) -> dict[str, int]:
        """One round of every step; returns how many jobs were re-published and documents purged."""
        return {
            "republished": await self.republish_unsent(),
            "deployments_resumed": await self.resume_deployments(),
            "dead_lettered_failed": await self.fail_dead_lettered(),
            **await self.purge_expired(),
        }

    async def resume_deployments(self) -> int:
        """Queue again the deployments whose lease ran out: their worker stopped without handing them back."""
        now = utc_now()
        resumed = 0
        for network in await self._store.sweep(
            NETWORKS, where={"status": NetworkStatus.DEPLOYING}, limit=500
        ):
            if network.lease_until is None or network.lease_until > now:
                continue  # queued (the outbox guards its publication) or in someone's hands
            job = DeploymentJob(task_id=network.task_id, owner=network.owner, network_id=network.id)
            try:
                await self._broker.publish(
                    DEPLOYMENT.name, job.model_dump_json().encode(), message_id=job.task_id
                )
            except BrokerUnavailable as error:
                log.warning("deployment_resume_failed", network_id=network.id, error=str(error))
                break
            resumed += 1
            log.warning("deployment_resumed", network_id=network.id, task_id=network.task_id)
        return resumed

    async def republish_unsent(self) -> int:
        republished = 0
        for unsent in await outbox.stale(self._store, older_than=self._outbox_grace):
            try:
                await self._broker.publish(unsent.entry.queue, unsent.body, message_id=unsent.entry.id)
            except BrokerUnavailable as error:
                log.warning("outbox_republish_failed", task_id=unsent.entry.id, error=str(error))
                break  # the rest waits for the next round
            await outbox.delete(self._store, [unsent.entry])
            republished += 1
            log.warning("outbox_republished", task_id=unsent.entry.id, queue=unsent.entry.queue)
        return republished

    async def fail_dead_lettered(self) -> int:
        """A job whose every delivery ended its consumer reaches the broker's delivery limit unsettled: the
        broker dead-letters it without a reason, and nobody ends its task. End those tasks in error here.

        Each round looks at no more than DEAD_LETTER_SWEEP letters, and only at letters no round handled
        before (Broker.sweep_dead_letters marks them), so a dead-letter queue of 100,000 letters costs what
        one of DEAD_LETTER_SWEEP does; the letters stay in the queue for inspection."""
        failed = 0

        async def handle(letters: list[DeadLetter]) -> None:
            nonlocal failed
            failed += await self._fail_tasks_of(letters)

        for queue in INFERENCE_QUEUES:  # interactive jobs, and those of batch jobs
            try:
                looked_at = await self._broker.sweep_dead_letters(queue.name, handle, limit=DEAD_LETTER_SWEEP)
            except BrokerUnavailable as error:
                # Nothing was marked: the next round sees the same letters (a task already ended is skipped).
                log.warning("dead_letter_sweep_failed", queue=queue.name, error=str(error))
                continue
            if looked_at:
                log.info("dead_letters_swept", queue=queue.name, looked_at=looked_at)
        return failed

    async def _fail_tasks_of(self, letters: list[DeadLetter]) -> int:
        jobs = []
        for letter in letters:
            if letter.reason is not None:
                continue  # dead-lettered by a consumer, which ended the task itself
            try:
                jobs.append(InferenceJob.model_validate_json(letter.body))
            except ValueError:
                continue
        if not jobs:
            return 0
        owners = sorted({job.owner for job in jobs})
        found = await self._store.get_many(TASKS, [job.task_id for job in jobs], owners=owners)
        pending = {(task.id, task.owner) for task in found if task.status is TaskStatus.PENDING}
        failed = 0
        for job in jobs:
            if (job.task_id, job.owner) not in pending:
                continue
            outcome = TaskOutcome(task_id=job.task_id, status=TaskStatus.ERROR, error=BROKER_DEAD_LETTERED)
            await self._results.write(outcome, parent=ParentRef.of(job))
            failed += 1
            log.warning("dead_lettered_job_failed", task_id=job.task_id)
        return failed

    async def purge_expired(self) -> dict[str, int]:
        purged: dict[str, int] = {}
        if self._retention is None:
            return purged
        before = utc_now() - self._retention
        for expiring in EXPIRING:
            total = 0
            while (count := await self._store.purge_expired(expiring, before=before, limit=_PURGE_PAGE)) > 0:
                total += count
                await asyncio.sleep(0)  # a long purge must not hold the event loop
            purged[expiring.collection.name] = total
        if any(purged.values()):
            log.info("expired_purged", **purged)
        return purged
