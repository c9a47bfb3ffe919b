"""Inference jobs: fetch or take the image, prepare it in a thread pool, batch per model, store, then ack."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Sequence
from concurrent.futures import Executor
from typing import Any

import structlog
from pydantic import ValidationError

from broker.port import Delivery
from broker.topology import INFERENCE
from consumers.batcher import Batcher
from consumers.compute import PreparedJob, prepare, run_batch
from consumers.config import ConsumerConfig
from consumers.fetch import FetchError, ImageFetcher
from consumers.models import ModelCache
from consumers.results import ResultWriter
from consumers.runner import PermanentFailure, settle
from engine.errors import EngineError, ModelError
from schemas.documents import TaskOutcome, TaskStatus
from schemas.messages import InferenceJob
from store.port import TASKS, Store

log = structlog.get_logger("inference")

Outcome = dict[str, Any] | ModelError


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
        model_executor: Executor,
    ) -> None:
        self._store = store
        self._models = models
        self._fetcher = fetcher
        self._results = results
        self._config = config
        self._decode_executor = decode_executor
        self._model_executor = model_executor
        self.batcher: Batcher[PreparedJob, Outcome] = Batcher(
            self._run_batch, max_size=config.max_batch_size, max_delay=config.max_batch_delay_s
        )

    async def handle(self, delivery: Delivery) -> None:
        try:
            job = InferenceJob.model_validate_json(delivery.body)
        except ValidationError as error:
            log.warning("job_malformed", error=str(error).splitlines()[0], message_id=delivery.message_id)
            await delivery.reject(requeue=False)
            return
        with structlog.contextvars.bound_contextvars(
            task_id=job.task_id, delivery_count=delivery.delivery_count
        ):
            await settle(
                delivery,
                lambda: self._process(job, delivery),
                delivery_limit=INFERENCE.delivery_limit,
                give_up=lambda reason: self._results.write(
                    TaskOutcome(task_id=job.task_id, status=TaskStatus.ERROR, error=reason)
                ),
            )

    async def _process(self, job: InferenceJob, delivery: Delivery) -> None:
        if delivery.delivery_count > 1 and await self._already_finished(job):
            log.info("job_already_finished")
            return
        outcome = await self._outcome(job)
        await self._results.write(outcome)

    async def _already_finished(self, job: InferenceJob) -> bool:
        task = await self._store.get(TASKS, job.task_id, owners=[job.owner])
        if task is None:
            raise PermanentFailure(f"task {job.task_id} does not exist")
        return task.status is not TaskStatus.PENDING

    async def _outcome(self, job: InferenceJob) -> TaskOutcome:
        try:
            data = job.image.data if job.image.data is not None else await self._fetch(job)
            network = await self._models.get(
                job.model.network_id, job.model.network_files, job.model.preprocessing
            )
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(
                self._decode_executor,
                lambda: prepare(job, data, mean=network.mean, max_pixels=self._config.max_image_pixels),
            )
            result = await self.batcher.submit(job.model.batch_key(), prepared)
        except (FetchError, EngineError) as error:
            return TaskOutcome(task_id=job.task_id, status=TaskStatus.ERROR, error=str(error))
        if isinstance(result, ModelError):
            return TaskOutcome(task_id=job.task_id, status=TaskStatus.ERROR, error=str(result))
        log.info("job_done")
        return TaskOutcome(task_id=job.task_id, status=TaskStatus.SUCCESS, data=result)

    async def _fetch(self, job: InferenceJob) -> bytes:
        assert job.image.url is not None
        return await self._fetcher.fetch(job.image.url)

    async def _run_batch(self, _key: Hashable, batch: Sequence[PreparedJob]) -> Sequence[Outcome]:
        model = batch[0].job.model
        network = await self._models.get(model.network_id, model.network_files, model.preprocessing)
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await loop.run_in_executor(self._model_executor, run_batch, network, batch)
        log.info(
            "batch_ran",
            size=len(batch),
            key=model.batch_key(),
            ms=round((loop.time() - started) * 1000, 1),
            task_ids=[item.job.task_id for item in batch],
        )
        return results
