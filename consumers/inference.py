"""Inference jobs: fetch or take the image, prepare it in a thread pool, batch per model, run the batch in the
engine process, store, then ack.

A batch whose engine process crashed or stalled gives each of its jobs a lone run in the quarantine process
(consumers.engines), so that the culprit shows itself while everyone else's batches go on. A job that ends
its process alone ISOLATED_RUNS times fails for good; so does one whose lone run crashed the process in a way
only the model's own code can (EngineLost.deterministic: the same input does it again, so a second run would
only cost another process). A batch of one is a lone run: its loss counts as one (a stalled batch of one
goes straight to its last lone run, rather than spin again for a suspicion deadline first). Lone runs are
counted in the task as each starts in its engine process: a consumer that dies mid-run (its deliveries come
back redelivered, and run alone too) leaves the count right.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import structlog

from broker.port import Delivery
from broker.topology import INFERENCE
from consumers import metrics
from consumers.batcher import Batcher
from consumers.compute import PreparedJob, prepare
from consumers.config import ConsumerConfig
from consumers.engines import EngineLost, Engines
from consumers.fetch import FetchError, ImageFetcher
from consumers.inputs import ParentRef
from consumers.models import LoadedNetwork, ModelCache
from consumers.results import ResultWriter
from consumers.runner import PermanentFailure, parse_or_dead_letter, settle
from engine.errors import EngineError, ModelError
from schemas.documents import TaskDoc, TaskOutcome, TaskStatus
from schemas.job_wire import JobReader
from schemas.messages import InferenceJob
from schemas.producer import ProducerReply
from store.port import TASKS, Store

log = structlog.get_logger("inference")

ISOLATED_RUNS = 2


@dataclass(frozen=True)
class Lost:
    """The batch's engine process ended before answering: the job runs again, alone, unless `culprit`.
    `lone`: the batch was this job alone, a lone run that is not in the task's count; `deterministic`: the
    process ended itself (EngineLost.deterministic)."""

    reason: str
    lone: bool = False
    deterministic: bool = False

    @property
    def culprit(self) -> bool:
        """A batch of this job alone that the process ended itself on: the same input does it again."""
        return self.lone and self.deterministic


Outcome = dict[str, Any] | ModelError | Lost


@dataclass(frozen=True)
class _Waiting:
    """A prepared job in the batcher, with when its delivery arrived (event-loop time)."""

    network: LoadedNetwork
    prepared: PreparedJob
    received: float


class InferenceWorker:
    def __init__(
        self,
        store: Store,
        models: ModelCache,
        fetcher: ImageFetcher,
        results: ResultWriter,
        *,
        config: ConsumerConfig,
        decode_executor: Executor,
        engines: Engines,
    ) -> None:
        self._store = store
        self._models = models
        self._fetcher = fetcher
        self._results = results
        self._config = config
        self._decode_executor = decode_executor
        self._read_job = JobReader()
        self._engines = engines
        # One batch per engine process at a time: while they are all busy, jobs gather into the next batches.
        self.batcher: Batcher[_Waiting, Outcome] = Batcher(
            self._run_batch,
            max_size=config.max_batch_size,
            max_delay=config.max_batch_delay_s,
            max_concurrent=engines.processes,
        )

    async def handle(self, delivery: Delivery) -> None:
        with metrics.JOBS_IN_FLIGHT.track_inprogress():
            await self._handle(delivery, received=asyncio.get_running_loop().time())

    async def _handle(self, delivery: Delivery, *, received: float) -> None:
        job = await parse_or_dead_letter(delivery, self._read_job)
        if job is None:
            return
        with structlog.contextvars.bound_contextvars(
            task_id=job.task_id, delivery_count=delivery.delivery_count
        ):
            await settle(
                delivery,
                lambda: self._process(job, delivery, received),
                delivery_limit=INFERENCE.delivery_limit,
                store=self._store,
                give_up=lambda reason: self._store_outcome(
                    job, TaskOutcome(task_id=job.task_id, status=TaskStatus.ERROR, error=reason)
                ),
            )

    async def _process(self, job: InferenceJob, delivery: Delivery, received: float) -> None:
        if delivery.delivery_count == 1:
            await self._store_outcome(job, await self._outcome(job, received))
            return
        task = await self._task(job)
        if task.status is TaskStatus.PENDING:
            # It may be what ended the last consumer (a crash, or a run that wedged it): it runs alone.
            await self._store_outcome(job, await self._outcome(job, received, alone=task))
            return
        log.info("job_already_finished")
        if job.input_of is not None:
            # Gathering the parent may be what failed last time: the stored outcome goes through the
            # writer again, which leaves the subtask as it is and finishes the parent if complete.
            stored = TaskOutcome(task_id=task.id, status=task.status, data=task.data, error=task.error)
            await self._store_outcome(job, stored)
        if job.reply_to is not None:
            # The reply may be what failed last time: answer from the stored task.
            reply = ProducerReply.of_task(task.id, task.status, data=task.data, error=task.error)
            await self._results.reply(job.reply_to, job.correlation_id, reply)

    async def _store_outcome(self, job: InferenceJob, outcome: TaskOutcome) -> None:
        await self._results.write(
            outcome, reply_to=job.reply_to, correlation_id=job.correlation_id, parent=ParentRef.of(job)
        )
        metrics.TASKS.labels(outcome.status.value).inc()

    async def _task(self, job: InferenceJob) -> TaskDoc:
        task = await self._store.get(TASKS, job.task_id, owners=[job.owner])
        if task is None:
            raise PermanentFailure(f"task {job.task_id} does not exist")
        return task

    async def _outcome(
        self, job: InferenceJob, received: float, *, alone: TaskDoc | None = None
    ) -> TaskOutcome:
        try:
            data = job.image.data if job.image.data is not None else await self._fetch(job)
            network = await self._models.get(
                job.model.network_id, job.model.network_files, job.model.preprocessing
            )
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(
                self._decode_executor, self._prepare, job, data, network.mean
            )
            result: Outcome
            if alone is None:
                result = await self.batcher.submit(
                    job.model.batch_key(), _Waiting(network, prepared, received)
                )
            else:
                result = await self._run_alone(alone, network, prepared)
            while isinstance(result, Lost):
                if result.culprit:
                    await self._fail_for_good(job, _crashed_reason(result.reason))
                task = await self._task(job)
                result = await self._run_alone(task, network, prepared, uncounted=int(result.lone))
        except (FetchError, EngineError) as error:
            return TaskOutcome(task_id=job.task_id, status=TaskStatus.ERROR, error=str(error))
        if isinstance(result, ModelError):
            return TaskOutcome(task_id=job.task_id, status=TaskStatus.ERROR, error=str(result))
        log.info("job_done")
        return TaskOutcome(task_id=job.task_id, status=TaskStatus.SUCCESS, data=result)

    async def _fetch(self, job: InferenceJob) -> bytes:
        assert job.image.url is not None
        return await self._fetcher.fetch(job.image.url)

    def _prepare(self, job: InferenceJob, data: bytes, mean: np.ndarray | None) -> PreparedJob:
        # Timed on the decode thread, so that waiting for a free thread is not counted as decoding.
        with metrics.PREPARE_SECONDS.time():
            return prepare(job, data, mean=mean, max_pixels=self._config.max_image_pixels)

    async def _fail_for_good(self, job: InferenceJob, reason: str) -> NoReturn:
        """The job's outcome is an error; its message goes to the dead-letter queue with the reason."""
        await self._store_outcome(
            job, TaskOutcome(task_id=job.task_id, status=TaskStatus.ERROR, error=reason)
        )
        raise PermanentFailure(reason)

    async def _run_alone(
        self, task: TaskDoc, network: LoadedNetwork, prepared: PreparedJob, *, uncounted: int = 0
    ) -> Outcome:
        """`uncounted`: lone runs that ended their process, not in the task's count (a batch of one)."""
        ended = task.isolated_runs + uncounted
        if ended >= ISOLATED_RUNS:
            reason = (
                f"running this input alone ended the model's process {ended} times"
                " (a crash, or a run longer than PERCEPT_MAX_RUN_S); not retried"
            )
            await self._fail_for_good(prepared.job, reason)
        runs = ended + 1

        async def count() -> None:
            # Counted as the run starts, its engine process up: if it ends this whole consumer, the count
            # still names this job; a consumer that dies sooner (before its engines have even started, say)
            # charges it no run.
            await self._store.update(TASKS, task.id, owner=task.owner, changes={"isolated_runs": runs})
            log.info("job_isolated", isolated_runs=runs)

        try:
            # The run that can fail the job has all the time there is; earlier ones, the suspicion deadline.
            last = runs >= ISOLATED_RUNS
            run = await self._engines.run(network, [prepared], alone=True, full_time=last, starting=count)
        except EngineLost as lost:
            log.warning(
                "lone_run_lost", reason=str(lost), isolated_runs=runs, deterministic=lost.deterministic
            )
            if lost.deterministic:
                await self._fail_for_good(prepared.job, _crashed_reason(str(lost)))
            return Lost(str(lost))
        return run.results[0]

    async def _run_batch(self, _key: Hashable, batch: Sequence[_Waiting]) -> Sequence[Outcome]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        metrics.BATCH_SIZE.observe(len(batch))
        for item in batch:
            metrics.DELIVERY_TO_BATCH_SECONDS.observe(started - item.received)
        prepared = [item.prepared for item in batch]
        task_ids = [item.job.task_id for item in prepared]
        try:
            run = await self._engines.run(batch[0].network, prepared, alone=False)
        except EngineLost as lost:
            log.warning("batch_lost", reason=str(lost), size=len(batch), task_ids=task_ids)
            return [Lost(str(lost), lone=len(batch) == 1, deterministic=lost.deterministic)] * len(batch)
        metrics.PREDICT_SECONDS.observe(run.predict_s)
        metrics.POSTPROCESS_SECONDS.observe(run.postprocess_s)
        log.info(
            "batch_ran",
            size=len(batch),
            key=prepared[0].job.model.batch_key(),
            ms=round((loop.time() - started) * 1000, 1),
            predict_ms=round(run.predict_s * 1000, 1),
            postprocess_ms=round(run.postprocess_s * 1000, 1),
            task_ids=task_ids,
        )
        return run.results


def _crashed_reason(lost: str) -> str:
    return (
        f"running this input alone ended the model's process: {lost}, a crash of the model's own code"
        " (the same input does it again); not retried"
    )
