"""A job the broker dead-letters on its own (every delivery ended unsettled, up to the delivery limit) carries
no reason and no consumer ended its task: maintenance ends that task in error, once, and leaves the letter."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from broker.memory import MemoryBroker
from broker.port import BrokerUnavailable, Delivery, SweepHandler
from broker.topology import INFERENCE
from consumers import maintenance as maintenance_module
from consumers.maintenance import BROKER_DEAD_LETTERED, Maintenance
from consumers.results import ResultWriter
from schemas.documents import TaskDoc, TaskKind, TaskStatus
from schemas.messages import InferenceJob, JobImage, ModelRef
from store.factory import open_store
from store.port import TASKS, Store


async def test_maintenance_ends_the_tasks_of_jobs_the_broker_dead_lettered(tmp_path: Path) -> None:
    store = await open_store("", tmp_path)
    broker = MemoryBroker()
    await broker.start()
    results = ResultWriter(store, broker)
    writing = asyncio.create_task(results.batcher.run())
    try:
        await store.insert(TASKS, TaskDoc(id="7", owner="t1", kind=TaskKind.INFERENCE))
        model = ModelRef.model_validate(
            {"network_id": "1", "network_files": [], "preprocessing": _preprocessing()}
        )
        job = InferenceJob(
            task_id="7", owner="t1", model=model, image=JobImage(url="https://example.test/a.png")
        )
        await broker.publish(INFERENCE.name, job.model_dump_json().encode(), message_id="7")

        async def never_settles(delivery: Delivery) -> None:
            await delivery.reject(requeue=True)  # as a consumer that dies with the job in hand

        subscription = await broker.consume(INFERENCE.name, never_settles, prefetch=1)
        deadline = asyncio.get_running_loop().time() + 10
        while not await broker.dead_letters(INFERENCE.name):
            assert asyncio.get_running_loop().time() < deadline, "the broker never dead-lettered the job"
            await asyncio.sleep(0.01)
        await subscription.cancel()
        (letter,) = await broker.dead_letters(INFERENCE.name)
        assert letter.reason is None

        maintenance = Maintenance(store, broker, results=results, retention=None, interval_s=60)
        assert await maintenance.fail_dead_lettered() == 1
        task = await store.get(TASKS, "7", owners=["t1"])
        assert task is not None
        assert (task.status, task.error) == (TaskStatus.ERROR, BROKER_DEAD_LETTERED)
        assert await maintenance.fail_dead_lettered() == 0  # already ended: not written again
        assert len(await broker.dead_letters(INFERENCE.name)) == 1  # kept for inspection
    finally:
        writing.cancel()
        await broker.close()
        await store.close()


def _preprocessing() -> dict[str, object]:
    return {
        "inputs": [
            {
                "tensor_name": "image",
                "image": {
                    "dimension_order": "NHWC",
                    "target_size": "16x16",
                    "resize_type": "SQUASH",
                    "color_channels": "RGB",
                    "pixel_scaling": 1.0,
                    "data_type": "FLOAT32",
                },
            }
        ],
        "batched_output": True,
    }


async def test_each_round_reads_a_bounded_number_of_dead_letters_and_never_one_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance_module, "DEAD_LETTER_SWEEP", 10)
    store = await open_store("", tmp_path)
    reads: list[int] = []
    counted = _CountingReads(store, reads)
    broker = MemoryBroker()
    await broker.start()
    results = ResultWriter(store, broker)
    writing = asyncio.create_task(results.batcher.run())
    try:
        model = ModelRef.model_validate(
            {"network_id": "1", "network_files": [], "preprocessing": _preprocessing()}
        )
        jobs = 25
        for index in range(jobs):
            await store.insert(TASKS, TaskDoc(id=str(index), owner="t1", kind=TaskKind.INFERENCE))
            job = InferenceJob(
                task_id=str(index), owner="t1", model=model, image=JobImage(url="https://example.test/a.png")
            )
            await broker.publish(INFERENCE.name, job.model_dump_json().encode(), message_id=str(index))
        rejected = asyncio.Event()

        async def reject(delivery: Delivery) -> None:
            await delivery.reject(requeue=False)  # dead-lettered without a reason, as at the delivery limit
            if len(await broker.dead_letters(INFERENCE.name)) == jobs:
                rejected.set()

        subscription = await broker.consume(INFERENCE.name, reject, prefetch=jobs)
        await asyncio.wait_for(rejected.wait(), 10)
        await subscription.cancel()

        maintenance = Maintenance(counted, broker, results=results, retention=None, interval_s=60)  # type: ignore[arg-type]
        failed = [await maintenance.fail_dead_lettered() for _ in range(5)]
        assert failed == [10, 10, 5, 0, 0]
        # The store is asked about each letter's task once, however often the letters are looked at.
        assert reads == [10, 10, 5]
        tasks = await store.get_many(TASKS, [str(i) for i in range(jobs)], owners=["t1"])
        assert {(t.status, t.error) for t in tasks} == {(TaskStatus.ERROR, BROKER_DEAD_LETTERED)}
        assert len(await broker.dead_letters(INFERENCE.name)) == jobs  # all kept for inspection
    finally:
        writing.cancel()
        await broker.close()
        await store.close()


class _CountingReads:
    """The store, noting how many task ids each get_many asks for."""

    def __init__(self, store: Store, reads: list[int]) -> None:
        self._store = store
        self._reads = reads

    async def get_many(self, collection: Any, ids: list[str], **options: Any) -> Any:
        self._reads.append(len(ids))
        return await self._store.get_many(collection, ids, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class _DownBroker(MemoryBroker):
    async def sweep_dead_letters(self, queue: str, handle: SweepHandler, *, limit: int) -> int:
        raise BrokerUnavailable("connection lost")


async def test_a_broker_outage_skips_the_sweep_without_ending_maintenance(tmp_path: Path) -> None:
    store = await open_store("", tmp_path)
    broker = _DownBroker()
    await broker.start()
    try:
        results = ResultWriter(store, broker)
        maintenance = Maintenance(store, broker, results=results, retention=None, interval_s=60)
        assert await maintenance.fail_dead_lettered() == 0  # logged; the next round tries again
    finally:
        await broker.close()
        await store.close()
