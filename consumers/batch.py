"""Batch chunks: turn one chunk of a job's sources into ordinary inference jobs, one task per source.

Images are read from the store one at a time and published at once, so a chunk holds one image in memory.
Task ids are derived from the job and the source's position, so inserting the task claims the source: a
chunk delivered twice (published twice, or redelivered after a crash) dispatches each source once, except
that a redelivery republishes the jobs of tasks still pending, since the crash may have lost them.
"""

from __future__ import annotations

import contextlib

import structlog

from broker.backpressure import publish_when_room
from broker.port import Broker, Delivery
from broker.topology import BATCH, INFERENCE_BATCH
from consumers.results import ResultWriter
from consumers.runner import PermanentFailure, parse_or_dead_letter, settle
from schemas.annolab import CHUNK_SIZE, BatchChunk, source_task_id
from schemas.documents import (
    BATCH_OWNER,
    BatchJobDoc,
    BatchJobStatus,
    BatchLinkDoc,
    SourceDoc,
    TaskDoc,
    TaskKind,
    TaskOutcome,
    TaskStatus,
)
from schemas.messages import InferenceJob, JobImage
from store.port import BATCH_JOBS, BATCH_LINKS, SOURCES, TASKS, DuplicateId, FileMissing, Store

log = structlog.get_logger("batch")


class BatchWorker:
    def __init__(self, store: Store, broker: Broker, results: ResultWriter) -> None:
        self._store = store
        self._broker = broker
        self._results = results

    async def handle(self, delivery: Delivery) -> None:
        chunk = await parse_or_dead_letter(delivery, BatchChunk.model_validate_json)
        if chunk is None:
            return
        with structlog.contextvars.bound_contextvars(job_id=chunk.job_id, chunk=chunk.chunk):
            await settle(
                delivery,
                lambda: self._dispatch(chunk, redelivered=delivery.delivery_count > 1),
                delivery_limit=BATCH.delivery_limit,
                store=self._store,
                give_up=lambda reason: self._give_up(chunk, reason),
            )

    async def _dispatch(self, chunk: BatchChunk, *, redelivered: bool) -> None:
        job = await self._store.get(BATCH_JOBS, chunk.job_id, owners=[chunk.owner])
        if job is None:
            raise PermanentFailure(f"batch job {chunk.job_id} does not exist")
        if job.status in (BatchJobStatus.FINISHED, BatchJobStatus.ERRORED):
            return
        if job.status is BatchJobStatus.QUEUED:
            await self._store.update(
                BATCH_JOBS, job.id, owner=job.owner, changes={"status": BatchJobStatus.RUNNING}
            )
        start = chunk.chunk * CHUNK_SIZE
        source_ids = job.source_ids[start : start + CHUNK_SIZE]
        sources = {doc.id: doc for doc in await self._store.get_many(SOURCES, source_ids, owners=[job.owner])}
        for position, source_id in enumerate(source_ids, start):
            task_id = source_task_id(job.id, position)
            if await self._claim(job, task_id, source_id, redelivered=redelivered):
                await self._publish(job, task_id, sources.get(source_id))
        log.info("chunk_dispatched", sources=len(source_ids))

    async def _claim(self, job: BatchJobDoc, task_id: str, source_id: str, *, redelivered: bool) -> bool:
        """Whether this delivery should publish the source's job."""
        try:
            await self._store.insert(TASKS, TaskDoc(id=task_id, owner=job.owner, kind=TaskKind.INFERENCE))
        except DuplicateId:
            if not redelivered:
                return False
            task = await self._store.get(TASKS, task_id, owners=[job.owner])
            if task is None or task.status is not TaskStatus.PENDING:
                return False
        link = BatchLinkDoc(
            id=task_id, owner=BATCH_OWNER, tenant=job.owner, job_id=job.id, source_id=source_id
        )
        with contextlib.suppress(DuplicateId):  # linked by the delivery that crashed
            await self._store.insert(BATCH_LINKS, link)
        return True

    async def _publish(self, job: BatchJobDoc, task_id: str, source: SourceDoc | None) -> None:
        image = await self._image(source)
        if image is None:
            # Deleted since the job was queued: the source fails, the job goes on.
            error = f"source {source.id if source else '?'} no longer exists"
            await self._results.write(TaskOutcome(task_id=task_id, status=TaskStatus.ERROR, error=error))
            return
        message = InferenceJob(task_id=task_id, owner=job.owner, model=job.model, image=image)
        # Their own queue, so that interactive jobs never wait behind them (broker.topology). A full queue
        # pauses the job's dispatch instead of failing its sources.
        await publish_when_room(
            self._broker, INFERENCE_BATCH.name, message.model_dump_json().encode(), message_id=task_id
        )

    async def _image(self, source: SourceDoc | None) -> JobImage | None:
        if source is None:
            return None
        if source.file_key is None:
            return JobImage(url=source.url)  # fetched by the inference consumer, under its outbound policy
        try:
            return JobImage(data=await self._store.get_file(source.file_key))
        except FileMissing:
            return None

    async def _give_up(self, chunk: BatchChunk, reason: str) -> None:
        """The chunk cannot be dispatched: the whole job ends Errored, so nobody polls it forever."""
        job = await self._store.get(BATCH_JOBS, chunk.job_id, owners=[chunk.owner])
        if job is None:
            return
        await self._store.update(
            BATCH_JOBS, job.id, owner=job.owner, changes={"status": BatchJobStatus.ERRORED}
        )
        await self._results.write(TaskOutcome(task_id=job.id, status=TaskStatus.ERROR, error=reason))
