"""The outbox sweeper: jobs recorded but never published are published once their record is stale; records
of tasks that are done, or that were never stored, are dropped; young records are left alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from broker.memory import MemoryBroker
from broker.port import Delivery
from broker.topology import INFERENCE
from consumers.maintenance import Maintenance
from consumers.results import ResultWriter
from schemas.common import utc_now
from schemas.documents import OUTBOX_OWNER, TaskDoc, TaskKind, TaskOutcome, TaskStatus
from store import outbox
from store.factory import open_store
from store.port import OUTBOX, TASKS, FileMissing, Store, outbox_file_key


async def _record(store: Store, unsent: list[outbox.Unsent]) -> None:
    await outbox.store_large_bodies(store, unsent)
    await store.insert_together([(OUTBOX, [item.entry for item in unsent])])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store("", tmp_path)
    yield opened
    await opened.close()


async def _recorded(
    store: Store, task_id: str, body: bytes, *, age_s: float, task: TaskStatus | None
) -> None:
    unsent = outbox.entry_for(
        queue=INFERENCE.name, message_id=task_id, task_id=task_id, task_owner="t1", body=body
    )
    await _record(store, [unsent])
    entry = unsent.entry
    await store.update(
        OUTBOX, entry.id, owner=OUTBOX_OWNER, changes={"date": utc_now() - timedelta(seconds=age_s)}
    )
    if task is not None:
        await store.insert(TASKS, TaskDoc(id=task_id, owner="t1", kind=TaskKind.INFERENCE))
        if task is not TaskStatus.PENDING:
            await store.finish_tasks([TaskOutcome(task_id=task_id, status=task)])


async def test_the_sweeper_publishes_only_what_a_dead_gateway_left_unsent(store: Store) -> None:
    big = b'{"image": "' + b"x" * (outbox.INLINE_BODY_BYTES + 10) + b'"}'
    await _recorded(store, "1", b'{"job": 1}', age_s=120, task=TaskStatus.PENDING)
    await _recorded(store, "2", big, age_s=120, task=TaskStatus.PENDING)
    await _recorded(store, "3", b'{"job": 3}', age_s=120, task=TaskStatus.SUCCESS)
    await _recorded(store, "4", b'{"job": 4}', age_s=120, task=None)  # died before storing the task
    await _recorded(store, "5", b'{"job": 5}', age_s=1, task=TaskStatus.PENDING)  # still being submitted
    assert (await store.get_file(outbox_file_key("2"))) == big

    broker = MemoryBroker()
    await broker.start()
    received: dict[str, bytes] = {}
    done = asyncio.Event()

    async def collect(delivery: Delivery) -> None:
        received[delivery.message_id or ""] = delivery.body
        await delivery.ack()
        if len(received) == 2:
            done.set()

    await broker.consume(INFERENCE.name, collect, prefetch=10)
    maintenance = Maintenance(
        store,
        broker,
        results=ResultWriter(store, broker),
        retention=None,
        interval_s=60,
        outbox_grace=timedelta(seconds=60),
    )
    assert await maintenance.republish_unsent() == 2
    await asyncio.wait_for(done.wait(), timeout=10)
    assert received == {"1": b'{"job": 1}', "2": big}

    left = await store.sweep(OUTBOX, where={})
    assert [entry.id for entry in left] == ["5"]
    with pytest.raises(FileMissing):
        await store.get_file(outbox_file_key("2"))
    assert await maintenance.republish_unsent() == 0
    await broker.close()


async def test_the_cleaner_deletes_confirmed_records_in_one_burst(store: Store) -> None:
    cleaner = outbox.OutboxCleaner(store)
    running = asyncio.create_task(cleaner.run())
    batch = [
        outbox.entry_for(
            queue=INFERENCE.name, message_id=task_id, task_id=task_id, task_owner="t1", body=b"{}"
        )
        for task_id in ("a", "b", "c")
    ]
    await _record(store, batch)
    for unsent in batch:
        cleaner.confirmed(unsent.entry)
    deadline = asyncio.get_running_loop().time() + 10
    while await store.sweep(OUTBOX, where={}):
        assert asyncio.get_running_loop().time() < deadline, "confirmed records were not deleted"
        await asyncio.sleep(0.05)
    running.cancel()


async def test_a_body_over_the_stores_inline_limit_is_a_file_and_is_republished(store: Store) -> None:
    # SQLite keeps bodies of an image's size out of its rows (Store.outbox_inline_bytes), well under the
    # limit every adapter shares.
    assert store.outbox_inline_bytes < outbox.INLINE_BODY_BYTES
    body = b'{"image": "' + b"y" * store.outbox_inline_bytes + b'"}'
    await _recorded(store, "7", body, age_s=120, task=TaskStatus.PENDING)
    [entry] = await store.sweep(OUTBOX, where={})
    assert (entry.body, entry.file_key) == (None, outbox_file_key("7"))
    [unsent] = await outbox.stale(store, older_than=timedelta(seconds=60))
    assert unsent.body == body


async def test_a_pending_task_whose_body_was_lost_ends_in_error(store: Store) -> None:
    body = b"z" * (store.outbox_inline_bytes + 1)
    await _recorded(store, "8", body, age_s=120, task=TaskStatus.PENDING)
    await _recorded(store, "9", b'{"job": 9}', age_s=120, task=TaskStatus.PENDING)
    # Unflushed files may not survive a power cut that the record survives.
    assert await store.delete_files(outbox_file_key("8")) == 1

    unsent = await outbox.stale(store, older_than=timedelta(seconds=60))

    assert [item.entry.id for item in unsent] == ["9"]
    [lost] = await store.get_many(TASKS, ["8"], owners=["t1"])
    assert (lost.status, lost.error) == (TaskStatus.ERROR, outbox.LOST_BODY_ERROR)
    assert [entry.id for entry in await store.sweep(OUTBOX, where={})] == ["9"]


async def test_deleting_a_confirmed_body_keeps_those_whose_ids_extend_its_id(store: Store) -> None:
    body = b"w" * (store.outbox_inline_bytes + 1)
    unsent = [
        outbox.entry_for(queue=INFERENCE.name, message_id=i, task_id=i, task_owner="t1", body=body)
        for i in ("12", "123")
    ]
    await _record(store, unsent)
    await outbox.delete(store, [unsent[0].entry])
    assert await store.get_file(outbox_file_key("123")) == body
    with pytest.raises(FileMissing):
        await store.get_file(outbox_file_key("12"))
