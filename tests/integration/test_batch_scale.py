"""A batch job large enough to matter, in the embedded stack: bounded work in flight, interactive jobs first.

1,500 tiny sources (the 10,000-source run is bench/batch.py's). What is checked is an order of events, never
a duration: which tasks the consumer finished, in which order (recorded where outcomes are stored), and what
the broker held at each publish.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from broker.topology import INFERENCE, INFERENCE_BATCH
from consumers.config import ConsumerConfig
from gateway.auth import ensure_api_key
from schemas.annolab import CHUNK_SIZE, CHUNKS_AHEAD
from schemas.documents import SourceDoc, TaskOutcome
from schemas.messages import InferenceJob
from store.port import SOURCES, source_file_key
from tests.conftest import API_KEY, Stack
from tests.images import png
from tests.integration.test_recognition_flow import _classifier_version

SOURCES_IN_JOB = 1_500
INTERACTIVE = 3  # requests sent one after the other while the job runs
MAX_BATCH_SIZE = 8  # ConsumerConfig's default, which the stack fixture keeps
ENGINES = ConsumerConfig(cache_dir=Path()).engine_process_count  # the stack fixture's, too
# An interactive job waits for the model runs in progress (one per engine process), and perhaps those that
# started while it was being decoded; sharing the queue, it would wait behind every batch job queued before it
# (50 to 100 here).
OVERTAKEN_AT_MOST = 3 * MAX_BATCH_SIZE * ENGINES
WINDOW = CHUNK_SIZE * CHUNKS_AHEAD


async def _sources(stack: Stack, project_id: str, owner: str, count: int) -> list[int]:
    """Stored directly (the upload route is tested elsewhere): tiny PNGs of two shades."""
    images = [png((250, 250, 250), size=(8, 8)), png((5, 5, 5), size=(8, 8))]
    docs = []
    for index in range(count):
        source_id = await stack.store.next_id("sources")
        key = source_file_key(project_id, source_id)
        await stack.store.put_file(key, images[index % 2])
        doc = SourceDoc(
            id=source_id, owner=owner, project_id=project_id, file_key=key, content_type="image/png"
        )
        docs.append(doc)
    await stack.store.insert_many(SOURCES, docs)
    return [int(doc.id) for doc in docs]


async def test_a_large_job_keeps_its_window_and_lets_interactive_jobs_pass(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    _, version = await _classifier_version(stack, tiny_models)
    owner = await ensure_api_key(stack.store, API_KEY)
    response = await stack.client.post("/v1/projects", json={"name": "Scale"}, headers=stack.headers())
    assert response.status == 201, await response.text()
    project = await response.json()
    source_ids = await _sources(stack, str(project["id"]), owner, SOURCES_IN_JOB)

    job_prefix = str(int(await stack.store.next_id("tasks")) + 1) + "."  # the id the job takes next
    finished: list[str] = []  # every task id in the order its outcome was stored
    batch_done = 0  # sources of the job finished so far
    interactive_published: dict[str, int] = {}  # task id -> batch_done when it was published
    interactive_overtaken: dict[str, int] = {}  # task id -> batch sources finished while it waited
    interactive_seen_at: dict[str, int] = {}  # task id -> batch_done when it finished
    under_way = asyncio.Event()  # a chunk of the job finished: its window is full
    dispatched = 0
    most_in_flight = 0
    deepest_queue = 0

    finish_tasks, publish = stack.store.finish_tasks, stack.broker.publish

    async def recording_finish(outcomes: Sequence[TaskOutcome]) -> int:
        nonlocal batch_done
        moved = await finish_tasks(outcomes)
        ids = [outcome.task_id for outcome in outcomes]
        finished.extend(ids)
        batch_done += sum(task_id.startswith(job_prefix) for task_id in ids)
        if batch_done >= CHUNK_SIZE:
            under_way.set()
        for task_id in ids:
            if task_id in interactive_published:
                interactive_overtaken[task_id] = batch_done - interactive_published[task_id]
                interactive_seen_at[task_id] = batch_done
        return moved

    async def watching_publish(queue: str, body: bytes, **kwargs: Any) -> None:
        nonlocal dispatched, most_in_flight, deepest_queue
        if queue == INFERENCE_BATCH.name:
            dispatched += 1
            most_in_flight = max(most_in_flight, dispatched - batch_done)
            deepest_queue = max(deepest_queue, await stack.broker.queue_depth(queue))
        elif queue == INFERENCE.name:
            interactive_published[InferenceJob.model_validate_json(body).task_id] = batch_done
        await publish(queue, body, **kwargs)

    stack.store.finish_tasks = recording_finish  # type: ignore[method-assign]
    stack.broker.publish = watching_publish  # type: ignore[method-assign]
    try:
        body = {
            "groupName": "g",
            "projectIdentifier": "Scale",
            "modelIdentifier": "brightness",
            "sourceIds": source_ids,
            "outputLayerIdentifier": "Scale",
        }
        response = await stack.client.post("/v1/infer/batch", json=body, headers=stack.headers())
        assert response.status == 200, await response.text()
        job = await response.json()
        assert job["inferenceJobId"] + "." == job_prefix

        await asyncio.wait_for(under_way.wait(), 120)
        white = base64.b64encode(png((255, 255, 255), size=(8, 8))).decode()
        for _ in range(INTERACTIVE):
            response = await stack.client.post(
                f"/v0.7/recognition/versions/{version['id']}/inference",
                json={"inputs": [{"image": {"source": white}}]},
                headers=stack.headers(),
            )
            assert response.status == 200, await response.text()
            task = await stack.wait_task((await response.json())["task_id"])
            assert task["status"] == "success"
        job_task = await stack.wait_task(job["inferenceJobId"])
    finally:
        stack.store.finish_tasks = finish_tasks  # type: ignore[method-assign]
        stack.broker.publish = publish  # type: ignore[method-assign]

    assert job_task["status"] == "success" and job_task["data"]["done"] == SOURCES_IN_JOB
    assert batch_done == dispatched == SOURCES_IN_JOB
    # Bounded work: never more than the window published and unfinished, so never more in the broker.
    assert 0 < most_in_flight <= WINDOW and deepest_queue <= WINDOW
    # Interactive first: each passed the batch job's queued sources, and finished early in the job.
    assert len(interactive_overtaken) == INTERACTIVE, interactive_published
    assert max(interactive_overtaken.values()) <= OVERTAKEN_AT_MOST, interactive_overtaken
    assert max(interactive_seen_at.values()) < SOURCES_IN_JOB // 2, interactive_seen_at
