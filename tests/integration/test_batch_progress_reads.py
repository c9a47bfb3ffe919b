"""Writing outcomes reads batch-job links only for tasks that can be a batch job's sources: a single request's
outcome costs no look (it was a store read on every written batch, and on every interactive result's path)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.memory import MemoryBroker
from consumers.batch_progress import BatchProgress
from schemas.annolab import may_be_source_task, source_task_id
from schemas.documents import TaskOutcome, TaskStatus
from store.factory import open_store
from store.port import BATCH_LINKS, Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store("", tmp_path)
    try:
        yield opened
    finally:
        await opened.close()


async def test_only_outcomes_of_possible_source_tasks_look_for_batch_jobs(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[list[str]] = []
    get_many = store.get_many

    async def recording(collection: Any, ids: Any, **kwargs: Any) -> Any:
        if collection is BATCH_LINKS:
            read.append(list(ids))
        return await get_many(collection, ids, **kwargs)

    monkeypatch.setattr(store, "get_many", recording)
    progress = BatchProgress(store, MemoryBroker())

    def done(task_id: str) -> TaskOutcome:
        return TaskOutcome(task_id=task_id, status=TaskStatus.SUCCESS, data={})

    assert await progress.record([done("17"), done("18")]) == []
    assert read == []
    assert await progress.record([done("19"), done(source_task_id("4", 2))]) == []
    assert read == [["4.2"]]


@given(st.from_regex(r"[0-9]{1,12}", fullmatch=True), st.integers(min_value=0, max_value=10**6))
def test_every_source_task_id_is_recognised_and_no_plain_task_id_is(job_id: str, position: int) -> None:
    assert may_be_source_task(source_task_id(job_id, position))
    assert not may_be_source_task(job_id)
