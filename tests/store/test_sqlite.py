"""The contract on SQLite, plus what only a shared file can show: several processes on one database."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import store.sqlite
from schemas.documents import AttemptResult, WebhookAttemptDoc
from schemas.webhooks import WebhookEvent
from store.id_blocks import IdBlocks
from store.port import TASKS, WEBHOOK_ATTEMPTS, StoreUnavailable
from store.sqlite import SqliteStore
from tests.store.contract import ALICE, StoreContract, task


class TestSqliteContract(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SqliteStore]:
        opened = await SqliteStore.open(tmp_path / "percept.sqlite3", tmp_path / "files")
        yield opened
        await opened.close()


async def test_two_stores_on_one_file_share_documents_and_counters(tmp_path: Path) -> None:
    first = await SqliteStore.open(tmp_path / "db.sqlite3", tmp_path / "files")
    second = await SqliteStore.open(tmp_path / "db.sqlite3", tmp_path / "files")
    try:
        await first.insert(TASKS, task("1"))
        assert await second.get(TASKS, "1", owners=[ALICE]) == await first.get(TASKS, "1", owners=[ALICE])
        assert await second.finish_tasks([]) == 0
        ids = await asyncio.gather(*(s.next_id("tasks") for _ in range(25) for s in (first, second)))
        assert sorted(map(int, ids)) == list(range(1, 51))
        await second.put_file("networks/1/saved_model.pb", b"model")
        assert await first.get_file("networks/1/saved_model.pb") == b"model"
    finally:
        await first.close()
        await second.close()


def _allocate(path: Path, count: int) -> list[int]:
    async def allocate() -> list[int]:
        opened = await SqliteStore.open(path, path.parent / "files")
        try:
            return [int(await opened.next_id("tasks")) for _ in range(count)]
        finally:
            await opened.close()

    return asyncio.run(allocate())


def test_next_id_is_unique_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    # spawn, not fork: the parent holds event-loop and SQLite threads that a fork would copy half-way.
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        runs = pool.starmap(_allocate, [(path, 30)] * 3)
    assert all(run == sorted(run) for run in runs)
    assert sorted(n for run in runs for n in run) == list(range(1, 91))


def _allocate_in_blocks(path: Path, count: int) -> list[str]:
    async def allocate() -> list[str]:
        opened = await SqliteStore.open(path, path.parent / "files")
        blocks = IdBlocks(opened, "tasks", block=7)
        try:
            ids = [await blocks.next() for _ in range(count)]
            return ids + [await opened.next_id("tasks")] + await blocks.take(9)
        finally:
            await opened.close()

    return asyncio.run(allocate())


def test_id_blocks_are_unique_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        runs = pool.starmap(_allocate_in_blocks, [(path, 30)] * 3)
    ids = [value for run in runs for value in run]
    assert len(ids) == 3 * 40 == len(set(ids))


async def test_two_stores_on_one_file_reserve_apart(tmp_path: Path) -> None:
    first = await SqliteStore.open(tmp_path / "db.sqlite3", tmp_path / "files")
    second = await SqliteStore.open(tmp_path / "db.sqlite3", tmp_path / "files")
    try:
        blocks = [IdBlocks(first, "tasks", block=5), IdBlocks(second, "tasks", block=5)]
        ids = await asyncio.gather(*(each.next() for _ in range(23) for each in blocks))
        assert len(set(ids)) == len(ids)
        # 23 ids a store take five blocks of five: ten blocks in all, 1 to 50, whoever reserved which.
        assert set(map(int, ids)) <= set(range(1, 51))
    finally:
        await first.close()
        await second.close()


async def test_a_database_locked_too_long_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store.sqlite, "BUSY_TIMEOUT_MS", 50)
    opened = await SqliteStore.open(tmp_path / "db.sqlite3", tmp_path / "files")
    holder = sqlite3.connect(tmp_path / "db.sqlite3", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process, mid-transaction
        with pytest.raises(StoreUnavailable):
            await opened.next_id("tasks")
        holder.execute("ROLLBACK")
        assert await opened.next_id("tasks") == "1"
    finally:
        holder.close()
        await opened.close()


async def test_files_are_written_atomically_under_the_files_folder(tmp_path: Path) -> None:
    opened = await SqliteStore.open(tmp_path / "db.sqlite3", tmp_path / "files")
    try:
        await opened.put_file("networks/1/saved_model.pb", b"model")
        stored = sorted(p.relative_to(tmp_path / "files").as_posix() for p in (tmp_path / "files").rglob("*"))
        assert stored == ["networks", "networks/1", "networks/1/saved_model.pb"]  # no temporary file left
        assert await opened.delete_files("networks/") == 1
        assert list((tmp_path / "files").iterdir()) == []  # emptied folders go too
    finally:
        await opened.close()


async def test_non_finite_floats_are_stored_as_json_strings_and_read_back_as_floats(tmp_path: Path) -> None:
    # A bare NaN (json.dumps) is not JSON: SQLite's JSON functions refused the row, and with it every filtered
    # query over the table (and its expiry index refused the insert). null would not read back as a float.
    opened = await SqliteStore.open(tmp_path / "db.sqlite3", tmp_path / "files")
    attempt = WebhookAttemptDoc(
        id="m.1",
        owner=ALICE,
        message_id="m",
        endpoint_id=None,
        task_id="1",
        event=WebhookEvent.TASK_FAILED,
        url="http://example.test/hook",
        attempt=1,
        result=AttemptResult.RETRYING,
        duration_ms=math.nan,
        next_attempt_s=-math.inf,
    )
    try:
        await opened.insert(WEBHOOK_ATTEMPTS, attempt)
        page = await opened.find(WEBHOOK_ATTEMPTS, owners=[ALICE], where={"task_id": "1"})
    finally:
        await opened.close()
    [found] = page.items
    assert math.isnan(found.duration_ms)
    assert found.next_attempt_s == -math.inf
    with sqlite3.connect(tmp_path / "db.sqlite3") as raw:
        [(stored,)] = raw.execute(
            "SELECT json_extract(body, '$.duration_ms') FROM webhook_attempts"
        ).fetchall()
    assert stored == "NaN"
