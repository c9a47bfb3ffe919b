"""Batch jobs' progress, moved where task outcomes are written (consumers.results), one batch at a time.

Predictions are written before the tasks are finished, so a failed write is redone by the redelivered job.
Counts are derived from the stored source tasks rather than incremented: consumer processes finishing tasks
of the same job at once cannot lose an update. They are read by id (a source's task id follows from the job
and the source's position), in bounded amounts: a finished chunk is recorded once (BatchChunkDoc) and
counted from that record; only the tasks of the published, unfinished chunks (at most the window,
schemas.annolab) are read each time. Counting every source of a 10,000-source job after every batch of
outcomes cost 50-100 ms a time on SQLite, quadratic in the job.

Two jobs may write one layer at once, with sources in common. A layer holds one prediction per source: the
newest job's (the one created last, ids being increasing), whatever order the outcomes arrive in, so that a
re-run replaces what an older run said even if the older one is still running. Each job still counts every
one of its own sources, the ones whose prediction a newer job holds included: counts come from the jobs'
own tasks, never from the shared predictions (counting predictions left an older job Running for ever once
a newer one had replaced a source's prediction before the older one finished).

A job's end finishes its own task, whose conditional write moves once only: that task's webhooks fire once,
however many processes saw the last source end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import structlog

from broker.port import Broker, BrokerUnavailable
from broker.topology import BATCH
from schemas.annolab import (
    CHUNK_SIZE,
    BatchChunk,
    chunk_count,
    chunks_allowed,
    may_be_source_task,
    source_task_id,
)
from schemas.common import utc_now
from schemas.documents import (
    BATCH_OWNER,
    BatchChunkDoc,
    BatchJobDoc,
    BatchJobStatus,
    BatchLinkDoc,
    PredictionDoc,
    TaskOutcome,
    TaskStatus,
)
from store.port import (
    BATCH_CHUNKS,
    BATCH_JOBS,
    BATCH_LINKS,
    PREDICTIONS,
    TASKS,
    DuplicateId,
    Store,
    StoreUnavailable,
)

log = structlog.get_logger("batch")

_ENDED = frozenset({BatchJobStatus.FINISHED, BatchJobStatus.ERRORED})


class BatchProgress:
    def __init__(self, store: Store, broker: Broker) -> None:
        self._store = store
        self._broker = broker

    async def record(self, outcomes: Sequence[TaskOutcome]) -> list[BatchJobDoc]:
        """Write the predictions of the outcomes that belong to batch jobs; returns those jobs."""
        # Most outcomes are single requests': no store read for them (it was one per written batch).
        candidates = [o.task_id for o in outcomes if may_be_source_task(o.task_id)]
        if not candidates:
            return []
        links = await self._store.get_many(BATCH_LINKS, candidates, owners=[BATCH_OWNER])
        if not links:
            return []
        jobs = await self._jobs(links)
        by_task = {outcome.task_id: outcome for outcome in outcomes}
        predictions = [
            _prediction(jobs[link.job_id], link, by_task[link.id]) for link in links if link.job_id in jobs
        ]
        await self._put_many(predictions)
        return list(jobs.values())

    async def _put_many(self, predictions: Sequence[PredictionDoc]) -> None:
        """New predictions in one write (a source's first in its layer, the common case); the others, and
        any that another process wrote meanwhile, one by one."""
        # The same source twice in one batch (two jobs into one layer): the second goes one by one.
        first = list({p.id: p for p in reversed(predictions)}.values())[::-1]
        owners = sorted({p.owner for p in first})
        existing = {
            d.id for d in await self._store.get_many(PREDICTIONS, [p.id for p in first], owners=owners)
        }
        fresh = [p for p in first if p.id not in existing]
        try:
            await self._store.insert_many(PREDICTIONS, fresh)
            inserted = {p.id for p in fresh}
        except DuplicateId:
            inserted = set()
        for prediction in predictions:
            if prediction.id in inserted:
                inserted.discard(prediction.id)  # only its first occurrence
                continue
            await self._put(prediction)

    async def advance(self, jobs: Sequence[BatchJobDoc]) -> list[str]:
        """Recount, publish the chunks now allowed, end finished jobs; returns the job tasks that ended.

        A failure here is logged, not raised: the outcomes are stored, and the next outcome of the job
        recounts from the predictions. Only a failure on a job's very last outcome leaves it Running.
        """
        ended: list[str] = []
        for job in jobs:
            try:
                if await self._advance(job):
                    ended.append(job.id)
            except (StoreUnavailable, BrokerUnavailable) as error:
                log.error("batch_progress_lost", job_id=job.id, error=str(error))
        return ended

    async def _jobs(self, links: Sequence[BatchLinkDoc]) -> dict[str, BatchJobDoc]:
        ids = list(dict.fromkeys(link.job_id for link in links))
        tenants = list({link.tenant for link in links})
        return {job.id: job for job in await self._store.get_many(BATCH_JOBS, ids, owners=tenants)}

    async def _put(self, prediction: PredictionDoc) -> None:
        """Insert, or replace a prediction of the same or an older job; a newer job's stays. A compare-and-set
        on the stored job id, repeated if another process wrote the prediction in between."""
        while True:
            try:
                await self._store.insert(PREDICTIONS, prediction)
                return
            except DuplicateId:
                pass
            current = await self._store.get(PREDICTIONS, prediction.id, owners=[prediction.owner])
            if current is None:
                continue  # deleted in between: insert again
            if _job_order(current.job_id) > _job_order(prediction.job_id):
                return
            # The stored job id only ever grows (or is rewritten by its own job), so it alone is the version.
            changes = prediction.model_dump(exclude={"id", "owner"})
            expect = {"job_id": current.job_id}
            if await self._store.update(
                PREDICTIONS, prediction.id, owner=prediction.owner, changes=changes, expect=expect
            ):
                return

    async def _count(self, job: BatchJobDoc) -> tuple[int, int]:
        """(done, failed): finished chunks from their records, the others from their sources' tasks."""
        # Up to the first chunk beyond the published ones none of whose tasks has ended: `next_chunk` as read
        # may lag behind another process's publish, and the job's last outcome must see every chunk.
        chunks = range(chunk_count(len(job.source_ids)))
        chunk_ids = [_chunk_id(job.id, chunk) for chunk in range(job.next_chunk)]
        records = {
            doc.chunk: doc for doc in await self._store.get_many(BATCH_CHUNKS, chunk_ids, owners=[job.owner])
        }
        done = sum(doc.done for doc in records.values())
        failed = sum(doc.failed for doc in records.values())
        for chunk in chunks:
            if chunk in records:
                continue
            positions = range(chunk * CHUNK_SIZE, min((chunk + 1) * CHUNK_SIZE, len(job.source_ids)))
            ids = [source_task_id(job.id, position) for position in positions]
            tasks = await self._store.get_many(TASKS, ids, owners=[job.owner])
            ended = [task for task in tasks if task.status is not TaskStatus.PENDING]
            if chunk >= job.next_chunk and not ended:
                break
            ok = sum(task.status is TaskStatus.SUCCESS for task in ended)
            done, failed = done + ok, failed + len(ended) - ok
            if len(ended) == len(positions):
                record = BatchChunkDoc(
                    id=_chunk_id(job.id, chunk),
                    owner=job.owner,
                    job_id=job.id,
                    chunk=chunk,
                    done=ok,
                    failed=len(ended) - ok,
                )
                with contextlib.suppress(DuplicateId):  # recorded by another process meanwhile, the same
                    await self._store.insert(BATCH_CHUNKS, record)
        return done, failed

    async def _advance(self, job: BatchJobDoc) -> bool:
        if job.status in _ENDED:
            return False
        done, failed = await self._count(job)
        total = len(job.source_ids)
        changes: dict[str, object] = {"done": done, "failed": failed, "update_date": utc_now()}
        allowed = chunks_allowed(done + failed, total)
        for chunk in range(job.next_chunk, allowed):
            # A chunk published twice (two processes saw the same count) dispatches its sources once.
            message = BatchChunk(job_id=job.id, owner=job.owner, chunk=chunk)
            await self._broker.publish(
                BATCH.name, message.model_dump_json().encode(), message_id=f"{job.id}.chunk{chunk}"
            )
        changes["next_chunk"] = max(allowed, job.next_chunk)
        ending = done + failed >= total
        if ending:
            changes["status"] = BatchJobStatus.FINISHED if done else BatchJobStatus.ERRORED
        await self._store.update(BATCH_JOBS, job.id, owner=job.owner, changes=changes)
        if not ending:
            return False
        summary = {"inferenceJobId": job.id, "done": done, "failed": failed, "total": total}
        outcome = (
            TaskOutcome(task_id=job.id, status=TaskStatus.SUCCESS, data=summary)
            if done
            else TaskOutcome(task_id=job.id, status=TaskStatus.ERROR, error=f"all {total} sources failed")
        )
        return await self._store.finish_tasks([outcome]) == 1


def _prediction(job: BatchJobDoc, link: BatchLinkDoc, outcome: TaskOutcome) -> PredictionDoc:
    return PredictionDoc(
        id=_prediction_id(job.layer_id, link.source_id),
        owner=job.owner,
        project_id=job.project_id,
        layer_id=job.layer_id,
        source_id=link.source_id,
        job_id=job.id,
        ok=outcome.status is TaskStatus.SUCCESS,
        data=outcome.data,
        error=outcome.error,
    )


def _prediction_id(layer_id: str, source_id: str) -> str:
    return f"{layer_id}:{source_id}"


def _job_order(job_id: str) -> int:
    """Job ids come from one increasing counter (the tasks'): a larger one was created later."""
    return int(job_id)


def _chunk_id(job_id: str, chunk: int) -> str:
    return f"{job_id}.chunk{chunk}"
