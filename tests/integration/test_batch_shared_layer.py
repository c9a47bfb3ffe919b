"""Two batch jobs writing one output layer at once, with sources in common, against a real SQLite store.

The outcomes are written in a chosen order through the real result writer, so each interleaving is exact:
both jobs must end with their own counts, and a source's prediction in the layer is the newest job's
(the job created last), whichever of the two finished it last.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.memory import MemoryBroker
from broker.port import Delivery
from broker.topology import INFERENCE_BATCH
from consumers.batch import BatchWorker
from consumers.results import ResultWriter
from schemas.annolab import BatchChunk, source_task_id
from schemas.documents import (
    BatchJobDoc,
    BatchJobStatus,
    SourceDoc,
    TaskDoc,
    TaskKind,
    TaskOutcome,
    TaskStatus,
)
from schemas.messages import ModelRef
from schemas.networks import ImagePreprocessing, InputPreprocessing, Preprocessing
from store.factory import open_store
from store.port import BATCH_JOBS, PREDICTIONS, SOURCES, TASKS, Store
from tests.images import png
from tests.integration.test_batch_dispatch import FakeDelivery

OWNER = "tenant"
LAYER = "7"
OLDER, NEWER = "900", "901"  # job ids come from one increasing counter: 901 was created after 900
SOURCES_OF = {OLDER: ["0", "1", "2", "3", "4"], NEWER: ["2", "3", "4", "5", "6"]}
SHARED = ["2", "3", "4"]


@dataclass
class Rig:
    store: Store
    results: ResultWriter

    async def finish(self, job_id: str, source_id: str, *, ok: bool = True) -> None:
        """The outcome of `source_id`'s task in `job_id`, as the inference consumer writes it."""
        task_id = source_task_id(job_id, SOURCES_OF[job_id].index(source_id))
        outcome = (
            TaskOutcome(task_id=task_id, status=TaskStatus.SUCCESS, data={"job": job_id, "source": source_id})
            if ok
            else TaskOutcome(task_id=task_id, status=TaskStatus.ERROR, error=f"failed in {job_id}")
        )
        await self.results.write(outcome)

    async def job(self, job_id: str) -> BatchJobDoc:
        doc = await self.store.get(BATCH_JOBS, job_id, owners=[OWNER])
        assert doc is not None
        return doc

    async def layer(self) -> dict[str, tuple[str, bool]]:
        """source id -> (job id, ok) of its prediction in the layer."""
        page = await self.store.find(PREDICTIONS, owners=[OWNER], where={"layer_id": LAYER}, limit=100)
        return {doc.source_id: (doc.job_id, doc.ok) for doc in page.items}


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = await open_store("", tmp_path)
    broker = MemoryBroker()
    await broker.start()

    async def swallow(delivery: Delivery) -> None:  # no inference here: the test writes the outcomes
        await delivery.ack()

    await broker.consume(INFERENCE_BATCH.name, swallow, prefetch=1000)
    results = ResultWriter(store, broker)
    writer = asyncio.create_task(results.batcher.run())
    ids = sorted({source for sources in SOURCES_OF.values() for source in sources})
    for source_id in ids:
        await store.put_file(f"sources/1/{source_id}", png((9, 9, 9), size=(4, 4)))
    await store.insert_many(
        SOURCES,
        [SourceDoc(id=i, owner=OWNER, project_id="1", file_key=f"sources/1/{i}") for i in ids],
    )
    image = ImagePreprocessing(target_size="16x16", resize_type="SQUASH")
    preprocessing = Preprocessing(inputs=[InputPreprocessing(tensor_name="image", image=image)])
    model = ModelRef(network_id="1", network_files=[], preprocessing=preprocessing)
    worker = BatchWorker(store, broker, results)
    for job_id, sources in SOURCES_OF.items():
        job = BatchJobDoc(
            id=job_id,
            owner=OWNER,
            project_id="1",
            project_name="p",
            layer_id=LAYER,
            layer_name="Gold Set",
            model=model,
            source_ids=sources,
            next_chunk=1,
        )
        await store.insert_together(
            [(BATCH_JOBS, [job]), (TASKS, [TaskDoc(id=job_id, owner=OWNER, kind=TaskKind.BATCH)])]
        )
        chunk = BatchChunk(job_id=job_id, owner=OWNER, chunk=0)
        delivery = FakeDelivery(chunk.model_dump_json().encode())
        await worker.handle(delivery)
        assert delivery.fate == "ack", delivery.fate
    try:
        yield Rig(store, results)
    finally:
        writer.cancel()
        await broker.close()
        await store.close()


async def test_the_older_job_ends_after_the_newer_took_its_shared_sources(rig: Rig) -> None:
    # The older job's shared sources end first, then the whole newer job, then the older job's own sources:
    # the older job's count must not lose the shared sources whose prediction the newer job replaced.
    for source in SHARED:
        await rig.finish(OLDER, source, ok=source != "3")
    for source in SOURCES_OF[NEWER]:
        await rig.finish(NEWER, source)
    for source in ["0", "1"]:
        await rig.finish(OLDER, source)

    older, newer = await rig.job(OLDER), await rig.job(NEWER)
    assert (older.status, older.done, older.failed) == (BatchJobStatus.FINISHED, 4, 1)
    assert (newer.status, newer.done, newer.failed) == (BatchJobStatus.FINISHED, 5, 0)
    layer = await rig.layer()
    assert layer == {
        "0": (OLDER, True),
        "1": (OLDER, True),
        **{source: (NEWER, True) for source in SHARED},
        "5": (NEWER, True),
        "6": (NEWER, True),
    }
    for job_id in (OLDER, NEWER):  # their own tasks ended too: webhooks and long polls see it
        task = await rig.store.get(TASKS, job_id, owners=[OWNER])
        assert task is not None and task.status is TaskStatus.SUCCESS


async def test_an_older_jobs_late_outcome_keeps_the_newer_prediction(rig: Rig) -> None:
    for source in SOURCES_OF[NEWER]:
        await rig.finish(NEWER, source, ok=source != "4")
    for source in SOURCES_OF[OLDER]:
        await rig.finish(OLDER, source)

    older, newer = await rig.job(OLDER), await rig.job(NEWER)
    assert (older.status, older.done, older.failed) == (BatchJobStatus.FINISHED, 5, 0)
    assert (newer.status, newer.done, newer.failed) == (BatchJobStatus.FINISHED, 4, 1)
    layer = await rig.layer()
    # The newer job's failure on "4" stands: the layer shows what the latest run said about each source.
    assert {source: layer[source] for source in SHARED} == {
        "2": (NEWER, True),
        "3": (NEWER, True),
        "4": (NEWER, False),
    }
    assert layer["0"] == (OLDER, True) and layer["6"] == (NEWER, True)


async def test_the_same_source_of_both_jobs_in_one_write(rig: Rig) -> None:
    # Both outcomes reach the result writer together (one batch): neither job loses the source.
    await asyncio.gather(rig.finish(OLDER, "2"), rig.finish(NEWER, "2"))
    await asyncio.gather(*(rig.finish(OLDER, s) for s in SOURCES_OF[OLDER] if s != "2"))
    await asyncio.gather(*(rig.finish(NEWER, s) for s in SOURCES_OF[NEWER] if s != "2"))

    for job_id in (OLDER, NEWER):
        job = await rig.job(job_id)
        assert (job.status, job.done, job.failed) == (BatchJobStatus.FINISHED, 5, 0)
    assert (await rig.layer())["2"] == (NEWER, True)
