"""A consumer process's composition: subscriptions, executors, batchers; started and stopped as one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import structlog

from broker.port import Broker, Delivery, Handler, Subscription
from broker.topology import BATCH, DEPLOYMENT, INFERENCE, INFERENCE_BATCH, REQUESTS, WEBHOOKS
from consumers.batch import BatchWorker
from consumers.config import ConsumerConfig
from consumers.deployment import DeploymentWorker
from consumers.engines import Engines
from consumers.fetch import ImageFetcher
from consumers.inference import InferenceWorker
from consumers.maintenance import Maintenance
from consumers.models import ModelCache
from consumers.outbound import OutboundPolicy
from consumers.producer import ProducerWorker
from consumers.results import ResultWriter
from consumers.sandbox import Sandbox, SandboxLimits
from consumers.webhook_sender import WebhookSender
from consumers.webhooks import WebhookWorker
from store.api_keys import KeyCache
from store.port import Store

log = structlog.get_logger("consumer")


class ConsumerService:
    def __init__(self, store: Store, broker: Broker, config: ConsumerConfig) -> None:
        self._broker = broker
        self._config = config
        # Models run in engine processes; decoding overlaps them on threads here.
        self.engines = Engines(
            max_run_s=config.max_run_s,
            load_timeout_s=config.sandbox_timeout_s,
            processes=config.engine_process_count,
            threads=config.engine_threads,
        )
        self._decode_executor = ThreadPoolExecutor(
            max_workers=config.decode_threads, thread_name_prefix="decode"
        )
        self._fetcher = ImageFetcher(
            OutboundPolicy(config.outbound_allow),
            timeout_s=config.fetch_timeout_s,
            max_bytes=config.fetch_max_bytes,
        )
        models = ModelCache(
            store, config.cache_dir, capacity_bytes=config.model_cache_mb * 2**20, on_drop=self.engines.drop
        )
        self._results = ResultWriter(store, broker)
        self.inference = InferenceWorker(
            store,
            models,
            self._fetcher,
            self._results,
            config=config,
            decode_executor=self._decode_executor,
            engines=self.engines,
        )
        self._sender = WebhookSender(
            OutboundPolicy(config.outbound_allow), timeout_s=config.webhook_timeout_s
        )
        self._webhooks = WebhookWorker(store, broker, self._sender, config=config)
        sandbox = Sandbox(
            SandboxLimits(memory_mb=config.sandbox_memory_mb, timeout_s=config.sandbox_timeout_s)
        )
        self._deployment = DeploymentWorker(
            store,
            models,
            self.engines,
            self._results,
            sandbox=sandbox,
            lease=timedelta(seconds=config.deployment_lease_s),
        )
        self._producer = ProducerWorker(store, broker, KeyCache())
        self._batch = BatchWorker(store, broker, self._results)
        self.maintenance = Maintenance(
            store,
            broker,
            results=self._results,
            retention=config.retention,
            interval_s=config.maintenance_interval_s,
        )
        self._subscriptions: list[Subscription] = []
        self._loops: list[asyncio.Task[None]] = []
        self._in_flight: set[asyncio.Task[None]] = set()

    def _dispatch(self, handle: Callable[[Delivery], Coroutine[Any, Any, None]]) -> Handler:
        """Broker callbacks return at once; the work runs as its own task so deliveries can batch."""

        async def on_delivery(delivery: Delivery) -> None:
            task = asyncio.create_task(handle(delivery))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

        return on_delivery

    async def start(self) -> None:
        self._loops = [
            # In the background: the first engine of a process waits for the fork server's TensorFlow import
            # (seconds), and the first batch waits for the engine anyway.
            asyncio.create_task(self.engines.start()),
            asyncio.create_task(self.inference.batcher.run()),
            asyncio.create_task(self._results.batcher.run()),
            asyncio.create_task(self.maintenance.run()),
        ]
        self._subscriptions = [
            await self._broker.consume(
                INFERENCE.name, self._dispatch(self.inference.handle), prefetch=self._config.prefetch
            ),
            # Batch jobs' sources, same handler: a few model batches of them per engine process at a time, so
            # an interactive job waits for at most that many runs (broker.topology.INFERENCE_BATCH).
            await self._broker.consume(
                INFERENCE_BATCH.name,
                self._dispatch(self.inference.handle),
                prefetch=self._config.max_batch_size
                * self._config.batch_prefetch_batches
                * self.engines.processes,
            ),
            await self._broker.consume(DEPLOYMENT.name, self._dispatch(self._deployment.handle), prefetch=1),
            await self._broker.consume(
                WEBHOOKS.name, self._dispatch(self._webhooks.handle), prefetch=self._config.webhook_prefetch
            ),
            # A request only records a task and queues a job; prefetch bounds how many do so at once.
            await self._broker.consume(
                REQUESTS.name, self._dispatch(self._producer.handle), prefetch=self._config.prefetch
            ),
            # One chunk at a time: a chunk publishes CHUNK_SIZE jobs, reading one image at a time.
            await self._broker.consume(BATCH.name, self._dispatch(self._batch.handle), prefetch=1),
        ]
        log.info(
            "consumer_started",
            prefetch=self._config.prefetch,
            max_batch_size=self._config.max_batch_size,
            engine_processes=self.engines.processes,
        )

    async def stop(self, *, grace_s: float = 30.0) -> None:
        """Stop taking jobs, let in-flight ones finish (or go back to the queue), then release everything."""
        for subscription in self._subscriptions:
            await subscription.stop_receiving()
        if self._in_flight:
            _, pending = await asyncio.wait(set(self._in_flight), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for subscription in self._subscriptions:
            await subscription.cancel()  # whatever did not finish in time goes back to the queue
        for loop_task in self._loops:
            loop_task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self._fetcher.close()
        await self._sender.close()
        self._decode_executor.shutdown(wait=False, cancel_futures=True)
        await self.engines.stop()
        log.info("consumer_stopped")
