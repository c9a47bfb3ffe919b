"""A batch chunk's dispatch against a real SQLite store and the in-process broker: each source's job is
published once however the chunk arrives (twice, redelivered, repeated after a store outage)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker.memory import MemoryBroker
from broker.port import Delivery
from broker.topology import INFERENCE_BATCH
from consumers.batch import BatchWorker
from consumers.results import ResultWriter
from schemas.annolab import CHUNK_SIZE, BatchChunk, source_task_id
from schemas.documents import BatchJobDoc, SourceDoc, TaskDoc, TaskKind, TaskOutcome, TaskStatus
from schemas.messages import InferenceJob, ModelRef
from schemas.networks import ImagePreprocessing, InputPreprocessing, Preprocessing
from store.factory import open_store
from store.port import BATCH_JOBS, BATCH_LINKS, SOURCES, TASKS, Batch, Store, StoreUnavailable
from tests.images import png

OWNER = "tenant"
JOB = "900"


@dataclass
class FakeDelivery(Delivery):
    body: bytes
    delivery_count: int = 1
    headers: Mapping[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    fate: str | None = None

    async def ack(self) -> None:
        self.fate = "ack"

    async def reject(self, *, requeue: bool) -> None:
        self.fate = "requeue" if requeue else "reject"

    async def dead_letter(self, reason: str) -> None:
        self.fate = f"dead: {reason}"


@dataclass
class Rig:
    store: Store
    worker: BatchWorker
    published: list[str]  # task ids, in the order their jobs reached INFERENCE_BATCH

    async def deliver(self, chunk: int, *, count: int = 1) -> FakeDelivery:
        message = BatchChunk(job_id=JOB, owner=OWNER, chunk=chunk)
        delivery = FakeDelivery(message.model_dump_json().encode(), delivery_count=count)
        await self.worker.handle(delivery)
        await asyncio.sleep(0)  # the in-process broker hands messages over in tasks
        return delivery


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = await open_store("", tmp_path)
    broker = MemoryBroker()
    await broker.start()
    published: list[str] = []

    async def record(delivery: Delivery) -> None:
        published.append(InferenceJob.model_validate_json(delivery.body).task_id)
        await delivery.ack()

    await broker.consume(INFERENCE_BATCH.name, record, prefetch=1000)
    results = ResultWriter(store, broker)
    writer = asyncio.create_task(results.batcher.run())
    sources = []
    for index in range(CHUNK_SIZE + 3):
        key = f"sources/1/{index}"
        await store.put_file(key, png((index, index, index), size=(4, 4)))
        sources.append(SourceDoc(id=str(index), owner=OWNER, project_id="1", file_key=key))
    await store.insert_many(SOURCES, sources)
    image = ImagePreprocessing(target_size="16x16", resize_type="SQUASH")
    preprocessing = Preprocessing(inputs=[InputPreprocessing(tensor_name="image", image=image)])
    model = ModelRef(network_id="1", network_files=[], preprocessing=preprocessing)
    job = BatchJobDoc(
        id=JOB,
        owner=OWNER,
        project_id="1",
        project_name="p",
        layer_id="1",
        layer_name="l",
        model=model,
        source_ids=[doc.id for doc in sources],
    )
    await store.insert(BATCH_JOBS, job)
    try:
        yield Rig(store, BatchWorker(store, broker, results), published)
    finally:
        writer.cancel()
        await broker.close()
        await store.close()


def _ids(positions: range) -> list[str]:
    return [source_task_id(JOB, position) for position in positions]


async def test_a_chunk_dispatches_each_source_once_with_its_link(rig: Rig) -> None:
    first = await rig.deliver(0)
    again = await rig.deliver(0)  # the same chunk published twice
    last = await rig.deliver(1)  # the short last chunk
    assert first.fate == again.fate == last.fate == "ack"
    assert rig.published == _ids(range(CHUNK_SIZE + 3))
    links = await rig.store.get_many(BATCH_LINKS, rig.published, owners=["batches"])
    assert [link.source_id for link in links] == [str(i) for i in range(CHUNK_SIZE + 3)]


async def test_a_redelivery_publishes_again_what_is_still_pending(rig: Rig) -> None:
    # The crashed delivery claimed the first three sources; one of them has finished since.
    for task_id in _ids(range(3)):
        await rig.store.insert(TASKS, TaskDoc(id=task_id, owner=OWNER, kind=TaskKind.INFERENCE))
    done = source_task_id(JOB, 1)
    await rig.store.finish_tasks([TaskOutcome(task_id=done, status=TaskStatus.SUCCESS, data={})])
    assert (await rig.deliver(0, count=2)).fate == "ack"
    assert rig.published == [t for t in _ids(range(CHUNK_SIZE)) if t != done]
    # A first delivery of a chunk someone else claimed publishes nothing.
    assert (await rig.deliver(0)).fate == "ack"
    assert len(rig.published) == CHUNK_SIZE - 1


async def test_a_dispatch_repeated_after_a_store_outage_loses_no_source(rig: Rig) -> None:
    insert_together = rig.store.insert_together
    failures = 1

    async def failing_once(batches: list[Batch]) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise StoreUnavailable("down for a moment")
        await insert_together(batches)

    rig.store.insert_together = failing_once  # type: ignore[method-assign]
    assert (await rig.deliver(0)).fate == "ack"
    assert failures == 0
    # The repeat found its own first claim and went source by source: every source once.
    assert rig.published == _ids(range(CHUNK_SIZE))
