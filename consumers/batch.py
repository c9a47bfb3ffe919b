"""Batch chunks: turn one chunk of a job's sources into ordinary inference jobs, one task per source.

Images are read from the store one at a time and published at once, so a chunk holds one image in memory.
Task ids are derived from the job and the source's position, so inserting the task claims the source: a
chunk delivered twice (published twice, or redelivered after a crash) dispatches each source once, except
that a redelivery republishes the jobs of tasks still pending, since the crash may have lost them.

A first delivery claims the whole chunk with its first source's task, then records the other tasks and all
the links in one write: two writes per chunk instead of two per source, which was what bounded a batch job's
pace on small models. Anything unusual (a redelivery, a claim already taken) goes source by source.
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
from schemas.job_wire import job_body
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
        attempts = 0

        async def dispatch() -> None:
            # A step repeated after a store outage may have claimed sources before it: a redelivery's care.
            nonlocal attempts
            attempts += 1
            await self._dispatch(chunk, redelivered=delivery.delivery_count > 1 or attempts > 1)

        with structlog.contextvars.bound_contextvars(job_id=chunk.job_id, chunk=chunk.chunk):
            await settle(
                delivery,
                dispatch,
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
        claimed = None if redelivered else await self._claim_chunk(job, start, source_ids)
        if claimed is None:  # a redelivery, or a bulk claim that met existing tasks: source by source
            claimed = []
            for position, source_id in enumerate(source_ids, start):
                task_id = source_task_id(job.id, position)
                if await self._reclaim(job, task_id, source_id):
                    claimed.append((task_id, source_id))
        for task_id, source_id in claimed:
            await self._publish(job, task_id, sources.get(source_id))
        log.info("chunk_dispatched", sources=len(source_ids), published=len(claimed))

    async def _claim_chunk(
        self, job: BatchJobDoc, start: int, source_ids: list[str]
    ) -> list[tuple[str, str]] | None:
        """Claims the chunk in two writes: its (task id, source id) pairs, or [] when another delivery of the
        chunk has claimed its first source; None to claim source by source instead (the bulk write met a task
        that exists: a delivery that crashed half-way, whose chunk was published again meanwhile)."""
        pairs = [
            (source_task_id(job.id, position), source_id)
            for position, source_id in enumerate(source_ids, start)
        ]
        first, _ = pairs[0]
        try:
            await self._store.insert(TASKS, TaskDoc(id=first, owner=job.owner, kind=TaskKind.INFERENCE))
        except DuplicateId:
            return []
        tasks = [TaskDoc(id=task_id, owner=job.owner, kind=TaskKind.INFERENCE) for task_id, _ in pairs[1:]]
        links = [
            BatchLinkDoc(id=task_id, owner=BATCH_OWNER, tenant=job.owner, job_id=job.id, source_id=source_id)
            for task_id, source_id in pairs
        ]
        try:
            # Tasks first: a task without its link is repaired by the source-by-source claim, never dispatched
            # without one.
            await self._store.insert_together([(TASKS, tasks), (BATCH_LINKS, links)])
        except DuplicateId:
            return None
        return pairs

    async def _reclaim(self, job: BatchJobDoc, task_id: str, source_id: str) -> bool:
        """Whether a repeated dispatch should publish the source's job: yes unless its task has ended (the
        crash that caused the repeat may have lost the job)."""
        try:
            await self._store.insert(TASKS, TaskDoc(id=task_id, owner=job.owner, kind=TaskKind.INFERENCE))
        except DuplicateId:
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
        await publish_when_room(self._broker, INFERENCE_BATCH.name, job_body(message), message_id=task_id)

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
